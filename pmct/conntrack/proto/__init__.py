"""Per-protocol trackers, one module each (as the kernel's nf_conntrack_proto_*.c)."""

from __future__ import annotations
