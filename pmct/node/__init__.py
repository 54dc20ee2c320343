"""The node: I/O shells around the engine (NFQUEUE, netlink, nftables, control socket).

Each module owns one resource and contains no rule worth testing on its own, except
policy.py and metrics.py, which are pure and unit-tested. Nothing here is imported by the
cores (wire, conntrack, sync).
"""

from __future__ import annotations
