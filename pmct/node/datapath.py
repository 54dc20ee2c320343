"""The node's per-packet path: engine, role, policy, (NAT), verdict — one compiled function.

Why a module of its own: at 100,000 packets/s the whole budget is 10 µs per packet, most of it
the NFQUEUE round trip in the kernel (nfnetlink_queue.c nfqnl_build_packet_message() and, in the
verdict's sendmsg(), nf_reinject() running the rest of the forward path). The Python around the
engine must be minimal, so everything the packet path touches lives here, in a class with
typed attributes that scripts/build_accel.py compiles with mypyc (attribute reads become C
struct loads, the engine call a direct C call). The daemon (daemon.py) owns the state's
meaning and writes it (``active``, ``tracks_wire``, ``sync_due``, ...) through properties; it
never sits between the queue and this code.

The contract, shared by both NFQUEUE backends (nfqueue.py):

    ``Datapath.handle(data, indev, mark) -> (verdict, mark, payload)``

* verdict: 1 accept, 0 drop (NF_ACCEPT / NF_DROP);
* mark: the packet's new mark, or -1 to leave it alone;
* payload: None (forward the packet unchanged) or the rewritten datagram the kernel must
  forward instead (NAT; NFQA_PAYLOAD in the verdict, nfnetlink_queue.c nfqnl_mangle()).
  A packet with a payload always gets its own verdict, never the batch one.

Rules: this module holds no protocol logic (the engine, policy.py and pmct/nat decide) and
does no I/O except through the callables the daemon hands in (the clock, ct_sync's service,
the event fan-out). It may raise only on a bug; the backends turn that into the fail-mode
verdict and count it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

from pmct.conntrack.constants import CtState
from pmct.conntrack.core import Engine

__all__ = ["ACCEPT", "DROP", "Datapath", "Nat", "NfqCallback", "Oif", "Verdict"]

Verdict = tuple[int, int, "bytes | None"]
# nat(data, ctstate, direction, conn) -> rewritten datagram, or None (unchanged)
Nat = Callable[[bytes, int, int, Any], "bytes | None"]
Oif = Callable[[int, int], "str | None"]
Decide = Callable[[int, int, "str | None", bytes, "Oif | None"], int]

_DROPPED: Final = int(CtState.DROPPED)  # the engine could not parse the datagram
DROP: Final[tuple[int, int, bytes | None]] = (0, -1, None)
ACCEPT: Final[tuple[int, int, bytes | None]] = (1, -1, None)


def _noop(now: float) -> None:
    return None


class Datapath:
    """Per-packet decision of one node; the daemon writes the state attributes."""

    def __init__(
        self,
        engine: Engine,
        decide: Decide,
        names: dict[int, str],
        *,
        ctstate_bits: tuple[int, ...],
        mark_on: bool = False,
        mark_mask: int = 0,
        reject_mark: int = 0,
        fail_open: bool = False,
        errors: dict[str, int] | None = None,
        actions: list[int] | None = None,
        sync_service: Callable[[float], None] = _noop,
        fan_out: Callable[[float], None] = _noop,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.decide = decide
        self.names = names  # ifindex -> name, kept current in place by netlink.Links
        self.oif: Oif | None = None  # route lookup, set only when a rule names an oif
        # NAT (issue 8): called for accepted packets on the active node; None = NAT off
        self.nat: Nat | None = None
        self.bits = ctstate_bits
        self.mark_on = mark_on
        self.mark_mask = mark_mask
        self.mark_shift = (mark_mask & -mark_mask).bit_length() - 1 if mark_mask else 0
        self.keep = ~mark_mask & 0xFFFFFFFF
        self.reject_mark = reject_mark
        self.fail_act = 1 if fail_open else 0
        self.errors: dict[str, int] = {} if errors is None else errors
        self.actions: list[int] = [0, 0, 0] if actions is None else actions
        self.sync_service = sync_service
        self.fan_out = fan_out
        self.clock = clock
        # state the daemon writes (daemon.py properties of the same names)
        self.active = False  # forwarding: the policy decides; passive: drop all
        self.tracks_wire = True  # False: replicate standby (the master's stream is the table)
        self.watch_events = False  # someone runs `pmct conntrack -E`
        self.sync_due = float("inf")  # ct_sync is serviced from the packet path from then on
        self.next_service = 0.0  # the netfilterqueue callback runs housekeeping from then on
        self.packets = 0
        self.now = 0.0  # the clock at the last packet

    def handle(self, data: bytes, indev: int, mark: int) -> tuple[int, int, bytes | None]:
        """One queued IP datagram: ``(verdict, mark or -1, payload or None)``."""
        self.packets += 1
        now = self.clock()
        self.now = now
        if not self.tracks_wire:  # replicate standby: the master's stream is the table
            if now >= self.sync_due:
                self.sync_service(now)
            self.actions[0] += 1
            return DROP
        ct, d, conn = self.engine.process_ip(data, now)
        if self.watch_events:  # `conntrack -E` shows the state at the event
            self.fan_out(now)
        if now >= self.sync_due:
            self.sync_service(now)
        if not self.active:
            self.actions[0] += 1
            return DROP
        if ct == _DROPPED:  # the engine could not parse it: the fail mode decides
            self.errors["unparsed"] = self.errors.get("unparsed", 0) + 1
            act = self.fail_act
        else:
            act = self.decide(ct, d, self.names.get(indev), data, self.oif)
        self.actions[act] += 1
        payload: bytes | None = None
        # ---- NAT step (issue 8): only accepted packets of the active node are rewritten.
        nat = self.nat
        if nat is not None and act == 1:
            payload = nat(data, ct, d, conn)
        # ----
        if self.mark_on:
            m = (mark & self.keep) | (self.bits[ct] << self.mark_shift)
            return (1 if act else 0, m | self.reject_mark if act == 2 else m, payload)
        if act == 2:
            return (1, mark | self.reject_mark, payload)
        if payload is not None:
            return (act, -1, payload)
        return ACCEPT if act else DROP


class NfqCallback:
    """netfilterqueue's per-packet callback around ``Datapath.handle``.

    ``on_error()`` counts an internal error and gives the fail-mode verdict; ``service(now)``
    is the daemon's housekeeping (it may raise to leave netfilterqueue's run()).
    """

    def __init__(
        self,
        dp: Datapath,
        on_error: Callable[[], int],
        service: Callable[[float], None],
        need_mark: bool,
    ) -> None:
        self.dp = dp
        self.on_error = on_error
        self.service = service
        self.need_mark = need_mark

    def __call__(self, pkt: Any) -> None:
        dp = self.dp
        try:
            v, m, payload = dp.handle(
                pkt.get_payload(), pkt.indev, pkt.get_mark() if self.need_mark else 0
            )
            if m >= 0:
                pkt.set_mark(m)
            if payload is not None:
                pkt.set_payload(payload)
            if v:
                pkt.accept()
            else:
                pkt.drop()
        except Exception:
            v = self.on_error()
            try:  # the verdict may already be given
                if v:
                    pkt.accept()
                else:
                    pkt.drop()
            except Exception:
                pass
        now = dp.clock()
        if now >= dp.next_service:
            self.service(now)
