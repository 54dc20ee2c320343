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

import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Any, Final

from pmct.conntrack.constants import CtState
from pmct.conntrack.core import Engine

__all__ = [
    "ACCEPT",
    "DROP",
    "Datapath",
    "DrainStats",
    "Nat",
    "NfqCallback",
    "Oif",
    "RingReader",
    "Verdict",
    "drain_netlink",
    "verdict_message",
]

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
        return self.handle_at(data, indev, mark, self.clock())

    def handle_at(
        self, data: bytes, indev: int, mark: int, now: float
    ) -> tuple[int, int, bytes | None]:
        """``handle`` with the clock read by the caller (once per burst: the kernel's
        conntrack clock is jiffies, 1-4 ms, coarser than a burst)."""
        self.packets += 1
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
        now = dp.now  # the clock as handle() read it (one read per packet)
        if now >= dp.next_service:
            self.service(now)


# ---------------------------------------------------------------------------- netlink backend
#
# The drain loop of nfqueue.NetlinkQueue, here so that it is compiled with the rest of the packet
# path. Message layout (nfnetlink_queue.c nfqnl_build_packet_message()): nlmsghdr (16 bytes,
# host order), nfgenmsg (4), then attributes {u16 len, u16 type (host order), value
# (big-endian numbers)} aligned to 4: NFQA_PACKET_HDR {be32 id, be16 hw_protocol, u8 hook},
# NFQA_MARK, NFQA_IFINDEX_INDEV, NFQA_PAYLOAD (the IP datagram), and others we skip.

NFQNL_MSG_PACKET_TYPE: Final = (3 << 8) | 0  # NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_PACKET
NFQNL_MSG_VERDICT_TYPE: Final = (3 << 8) | 1
NFQNL_MSG_VERDICT_BATCH_TYPE: Final = (3 << 8) | 3
NFQA_PACKET_HDR: Final = 1
NFQA_VERDICT_HDR: Final = 2
NFQA_MARK: Final = 3
NFQA_IFINDEX_INDEV: Final = 5
NFQA_PAYLOAD: Final = 10
_LITTLE: Final = sys.byteorder == "little"
_ENOBUFS: Final = 105
_MSG_DONTWAIT: Final = socket.MSG_DONTWAIT  # a C static when compiled, not a getattr per recv

_H16: Final = struct.Struct("=H")
_H32: Final = struct.Struct("=I")
_VERDICT: Final = struct.Struct("=IHHIIBBHHHII")
_VERDICT_MARK: Final = struct.Struct("=IHHIIBBHHHIIHHI")
_ATTR: Final = struct.Struct("=HH")
_BE32: Final = struct.Struct("!I")


def _u16(buf: bytes, off: int) -> int:
    """A host-order u16 (netlink headers). Indexing bytes is a C primitive in mypyc."""
    if _LITTLE:
        return buf[off] | (buf[off + 1] << 8)
    return int(_H16.unpack_from(buf, off)[0])


def _u32(buf: bytes, off: int) -> int:
    """A host-order u32 (nlmsg_len)."""
    if _LITTLE:
        return buf[off] | (buf[off + 1] << 8) | (buf[off + 2] << 16) | (buf[off + 3] << 24)
    return int(_H32.unpack_from(buf, off)[0])


def _be32(buf: bytes, off: int) -> int:
    return (buf[off] << 24) | (buf[off + 1] << 16) | (buf[off + 2] << 8) | buf[off + 3]


def verdict_message(
    qbe: int, pkt_id: int, verdict: int, mark: int, batch: bool, payload: bytes | None
) -> bytes:
    """NFQNL_MSG_VERDICT(_BATCH) for ``pkt_id``, with NFQA_MARK when ``mark >= 0`` and
    NFQA_PAYLOAD when ``payload`` is given (the kernel then forwards those bytes instead:
    nfnetlink_queue.c nfqnl_recv_verdict() -> nfqnl_mangle()). ``qbe``: the queue number in
    network order (nfgenmsg.res_id)."""
    mtype = NFQNL_MSG_VERDICT_BATCH_TYPE if batch else NFQNL_MSG_VERDICT_TYPE
    tail = b""
    if payload is not None:
        n = 4 + len(payload)
        tail = _ATTR.pack(n, NFQA_PAYLOAD) + payload + b"\0" * (-n % 4)
    if mark < 0:
        head = _VERDICT.pack(
            32 + len(tail), mtype, 1, 0, 0, 0, 0, qbe, 12, NFQA_VERDICT_HDR,
            socket.htonl(verdict), socket.htonl(pkt_id),
        )  # fmt: skip
    else:
        head = _VERDICT_MARK.pack(
            40 + len(tail), mtype, 1, 0, 0, 0, 0, qbe, 12, NFQA_VERDICT_HDR,
            socket.htonl(verdict), socket.htonl(pkt_id), 8, NFQA_MARK, socket.htonl(mark),
        )  # fmt: skip
    return head + tail if tail else head


class DrainStats:
    """What the netlink drain loop counts (shown by ``pmct status``)."""

    def __init__(self) -> None:
        self.drains = 0  # calls of drain_netlink
        self.packets = 0  # packet messages answered
        self.batches = 0  # batch verdict messages sent
        self.singles = 0  # per-packet verdict messages sent
        self.enobufs = 0  # recv failed with ENOBUFS (the kernel could not deliver some)
        self.errors = 0  # handler raised (answered with on_error()'s verdict)

    def as_dict(self) -> dict[str, int]:
        return {
            "drains": self.drains,
            "packets": self.packets,
            "batches": self.batches,
            "singles": self.singles,
            "enobufs": self.enobufs,
            "errors": self.errors,
        }


def drain_netlink(
    sock: Any,
    bufsize: int,
    dp: Datapath | None,
    handler: Callable[[bytes, int, int], tuple[int, int, bytes | None]] | None,
    on_error: Callable[[], int],
    batch_v: int,
    burst: int,
    qbe: int,
    stats: DrainStats,
    flush: int = 1 << 30,
    sender: Any = None,
) -> int:
    """Answer up to ``burst`` waiting packets of a non-blocking NFQUEUE netlink socket.

    Each packet is decided by ``dp.handle`` (or ``handler`` when ``dp`` is None). Packets
    whose verdict is ``batch_v`` with no mark and no new payload are answered together by one
    NFQNL_MSG_VERDICT_BATCH for the highest id at the end (the kernel applies it to every
    queued id <= that id: nfnetlink_queue.c nfqnl_recv_verdict_batch(); ids are handed out in
    order, and every other packet already has its own verdict), the rest one by one at once.
    The batch is also sent whenever ``flush`` packets wait for it, so that the first packets of
    a long burst leave while the rest are being decided (a TCP flow through the node is
    clocked by its ACKs, which cross the same queue). Returns the number of packets answered.

    Each message is read with ``recv()`` into a new bytes object (one allocation, and reading
    bytes is a C primitive here, unlike a bytearray), and the datagram is one slice of it.
    ``bufsize`` must hold the largest message (64 KB payload + metadata): a truncated message
    would never get a verdict.
    """
    recv = sock.recv
    send = sock.send if sender is None else sender
    last = -1
    pending = 0
    count = 0
    stats.drains += 1
    now = dp.clock() if dp is not None else 0.0  # one clock read per burst (~0.2 µs each)
    for _ in range(burst):
        try:
            msg: bytes = recv(bufsize, _MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            break
        except OSError as e:
            if e.errno == _ENOBUFS:  # the kernel could not deliver some packets
                stats.enobufs += 1
                continue
            raise
        n = len(msg)
        if n < 20 or _u16(msg, 4) != NFQNL_MSG_PACKET_TYPE:
            continue  # an ACK or error of a verdict, or something that is not a packet
        end = _u32(msg, 0)  # nlmsg_len
        if end > n:
            end = n
        off = 20
        pkt_id = -1
        indev = 0
        mark = 0
        p0 = 0
        p1 = 0
        while off + 4 <= end:
            alen = _u16(msg, off)
            atype = _u16(msg, off + 2) & 0x3FFF
            if alen < 4 or off + alen > end:
                break
            if atype == NFQA_PACKET_HDR:
                pkt_id = _be32(msg, off + 4)
            elif atype == NFQA_PAYLOAD:
                p0 = off + 4
                p1 = off + alen
            elif atype == NFQA_IFINDEX_INDEV:
                indev = _be32(msg, off + 4)
            elif atype == NFQA_MARK:
                mark = _be32(msg, off + 4)
            off += (alen + 3) & ~3
        if pkt_id < 0:
            continue
        count += 1
        payload = msg[p0:p1]
        try:
            if dp is not None:
                v, m, new = dp.handle_at(payload, indev, mark, now)
            else:
                assert handler is not None
                v, m, new = handler(payload, indev, mark)
        except Exception:
            stats.errors += 1
            v = on_error()
            m = -1
            new = None
        if v == batch_v and m < 0 and new is None:
            last = pkt_id
            pending += 1
            if pending >= flush:
                stats.batches += 1
                send(verdict_message(qbe, last, batch_v, -1, True, None))
                last = -1
                pending = 0
        else:
            stats.singles += 1
            send(verdict_message(qbe, pkt_id, v, m, False, new))
    stats.packets += count
    if last >= 0:
        stats.batches += 1
        send(verdict_message(qbe, last, batch_v, -1, True, None))
    return count


# ------------------------------------------------------------------------------ ring capture
#
# The passive node's TPACKET_V3 ring (capture.py maps it). Layout (linux/if_packet.h): each
# block starts with tpacket_block_desc {u32 version, u32 offset_to_priv, tpacket_hdr_v1 {u32
# block_status, u32 num_pkts, u32 offset_to_first_pkt, u32 blk_len, ...}}; each frame with
# tpacket3_hdr {u32 tp_next_offset, tp_sec, tp_nsec, tp_snaplen, tp_len, tp_status, u16 tp_mac,
# u16 tp_net, ...} (48 bytes) and then struct sockaddr_ll {u16 family, be16 protocol,
# s32 ifindex, ...}. All host order.

TP_STATUS_USER: Final = 1
_RELEASE: Final = b"\x00\x00\x00\x00"  # TP_STATUS_KERNEL: the block goes back to the kernel


class RingReader:
    """Walks the blocks the kernel has handed over, in ring order, and tracks each frame."""

    def __init__(self, mm: Any, block_size: int, blocks: int) -> None:
        self.mm = mm
        self.block_size = block_size
        self.blocks = blocks
        self.block = 0  # the next block to look at
        self.packets = 0
        self.blocks_read = 0
        self.truncated = 0  # frames longer than the ring could hold (not tracked)
        self.errors = 0

    def drain(self, dp: Datapath, on_error: Callable[[], int], budget: int) -> int:
        """Track the frames of up to ``budget`` ready blocks; returns the frame count.

        The verdict is ignored: the ring is a passive node's, and its ingress hook drops the
        frames. A frame is the Ethernet header at tp_mac and the IP datagram at tp_net (with
        any Ethernet padding after it: the engine trims to the total length, as ip_rcv()).
        """
        mm = self.mm
        count = 0
        now = dp.clock()
        for _ in range(budget):
            off = self.block * self.block_size
            head: bytes = mm[off : off + 24]
            status = _u32(head, 8)
            if not status & TP_STATUS_USER:
                break
            n = _u32(head, 12)
            used = _u32(head, 20)  # blk_len: the block header and every frame in it
            if used < 24 or used > self.block_size:
                used = self.block_size
            # One copy of the block's used part, then reads and slices of plain bytes (C
            # indexing when compiled) instead of two slices of the mmap object per frame.
            blk: bytes = mm[off : off + used]
            p = _u32(head, 16)
            for _ in range(n):
                if p + 60 > used:  # a frame header beyond blk_len: not a block we can walk
                    self.errors += 1
                    break
                snap = _u32(blk, p + 12)
                mac = _u16(blk, p + 24)
                if snap < _u32(blk, p + 16):
                    self.truncated += 1
                else:
                    data = blk[p + _u16(blk, p + 26) : p + mac + snap]
                    try:
                        dp.handle_at(data, _u32(blk, p + 52), 0, now)
                    except Exception:
                        self.errors += 1
                        on_error()
                count += 1
                p += _u32(blk, p)
            mm[off + 8 : off + 12] = _RELEASE
            self.block = self.block + 1 if self.block + 1 < self.blocks else 0
            self.blocks_read += 1
        self.packets += count
        return count
