"""The contract between the core and the per-protocol trackers.

A tracker is a module with plain functions (no classes on the hot path). The core calls, per
packet, in the kernel's order (nf_conntrack_in -> nf_conntrack_handle_packet):

1. ``error(...)``  -> reason or None: header checks that make the packet INVALID before any
   lookup (kernel: tcp_error(), udp_error(), icmp_error()).
2. lookup by key; if no entry: ``new(...)`` -> reason or None, on a fresh unconfirmed Conn
   (kernel: tcp_new() and the l4 new checks inside *_packet for !nf_ct_is_confirmed()).
3. ``packet(...)`` -> one of the outcomes below; sets ``conn.expires`` itself
   (kernel: nf_ct_refresh_acct()).

Outcomes (kernel return codes, as values instead of signed ints):

- ``None``: accepted; ctstate follows from the status bits and the direction.
- a ``str``: INVALID, the string is the reason (stable, grep-able, counted by the core).
- ``IGNORE``: the kernel's NF_ACCEPT without refreshing the entry for a packet it "ignores"
  (TCP sIG): the packet keeps its ctstate, the entry is untouched apart from last_* notes.
- ``KILL``: accepted, and the entry is deleted right after (kernel nf_ct_kill_acct(), e.g. a
  RST answering a SYN before any reply was seen): the packet keeps its ctstate.
- ``REPEAT``: the kernel's -NF_REPEAT (TCP reopen of a closed/TIME_WAIT connection): the core
  kills the entry and processes the packet again as the first packet of a new connection.
"""

from __future__ import annotations

__all__ = ["IGNORE", "KILL", "REPEAT", "Outcome"]

# Sentinels are strings compared by identity (``is``): cheap on the hot path and printable in
# a debugger. They are never valid INVALID reasons. Deliberately not ``Final``: mypyc inlines
# Final constants as literals of its own, which would break the identity test between compiled
# and interpreted modules (scripts/build_accel.py).
IGNORE = "<ignore>"
KILL = "<kill>"
REPEAT = "<repeat>"

Outcome = str | None
