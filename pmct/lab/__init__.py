"""The network-namespace lab shared by ``pmct lab``, the integration tests and benchmarks.

topology.py builds client — LAN hub — {fw-a, fw-b} — WAN hub — server; stream.py is the
counter stream used to prove that a TCP connection survives failover; demo.py tells that
story for a newcomer.
"""

from __future__ import annotations
