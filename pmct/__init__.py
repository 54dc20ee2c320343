"""pmct: a Python conntrack engine and ct_sync state replication for HA firewall pairs.

The package is layered: ``wire`` (packet parsing) < ``conntrack`` (the engine) < ``sync``
(ct_sync protocol) < ``node`` (I/O shells) < ``cli``. Cores never do I/O or read a clock.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
