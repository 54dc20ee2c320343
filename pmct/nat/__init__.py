"""Stateful NAT (issue 8): rules, deterministic binding allocation, packet rewriting.

The engine records a binding the kernel's way -- the reply key differs from the inverted
original key, plus the SRC_NAT / DST_NAT status bits -- so ct_sync carries it without new
fields; the active node rewrites packets with rewrite.nat_packet(). See docs/nat.md.
"""

from __future__ import annotations
