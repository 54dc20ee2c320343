"""The passive node's packet ring: the classic BPF filter and the TPACKET_V3 block walk.

The filter is checked by running it in a small interpreter of the three instructions it uses
(the kernel's own run is in tests/integration/test_capture.py); the block walk runs over a
ring laid out in memory as af_packet.c lays it out.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from pktbuild import udp4

from pmct.node.capture import (
    ETH_P_IP,
    ETH_P_IPV6,
    PACKET_OTHERHOST,
    PACKET_OUTGOING,
    bpf_filter,
)
from pmct.node.datapath import Datapath, RingReader

ETH_P_ARP = 0x0806
PACKET_HOST, PACKET_BROADCAST, PACKET_MULTICAST = 0, 1, 2


def run_bpf(prog: list[tuple[int, int, int, int]], ifindex: int, pkttype: int, proto: int) -> int:
    """The filter's return value for a frame (0: not captured)."""
    ancillary = {0xFFFFF000: proto, 0xFFFFF004: pkttype, 0xFFFFF008: ifindex}
    acc, pc = 0, 0
    for _ in range(len(prog)):
        code, jt, jf, k = prog[pc]
        if code == 0x20:  # ld [k] (ancillary)
            acc = ancillary[k]
            pc += 1
        elif code == 0x15:  # jeq #k
            pc += 1 + (jt if acc == k else jf)
        elif code == 0x06:  # ret #k
            return k
        else:
            raise AssertionError(f"unexpected instruction {code:#x}")
    raise AssertionError("fell off the program")


@pytest.mark.parametrize("ipv6", [True, False])
def test_filter_keeps_ip_on_data_interfaces_that_the_ip_stack_would_take(ipv6: bool) -> None:
    prog = bpf_filter([3, 7], ipv6)
    for ifindex in (1, 3, 5, 7, 8):
        for pkttype in (PACKET_HOST, PACKET_BROADCAST, PACKET_MULTICAST, PACKET_OTHERHOST, 4):
            for proto in (ETH_P_IP, ETH_P_IPV6, ETH_P_ARP):
                kept = run_bpf(prog, ifindex, pkttype, proto) > 0
                want = (
                    ifindex in (3, 7)
                    and pkttype not in (PACKET_OTHERHOST, PACKET_OUTGOING)
                    and (proto == ETH_P_IP or (ipv6 and proto == ETH_P_IPV6))
                )
                assert kept == want, (ifindex, pkttype, proto)
    assert run_bpf(prog, 3, PACKET_HOST, ETH_P_IP) >= 65536 + 64  # whole super-packets


def test_filter_needs_an_interface() -> None:
    with pytest.raises(ValueError):
        bpf_filter([], True)


# ------------------------------------------------------------------------- the block walk

BLOCK = 4096
HDR = 48  # TPACKET_ALIGN(sizeof(struct tpacket3_hdr))


class Ring:
    """A bytearray standing in for the mmap: slices read as bytes, as mmap's do."""

    def __init__(self, blocks: int) -> None:
        self.buf = bytearray(BLOCK * blocks)

    def __getitem__(self, s: slice) -> bytes:
        return bytes(self.buf[s])

    def __setitem__(self, s: slice, v: bytes) -> None:
        self.buf[s] = v

    def fill(self, block: int, frames: list[tuple[bytes, int, int]], status: int = 1) -> None:
        """Write a handed-over block: frames of (ip datagram, ifindex, wire length)."""
        off = block * BLOCK
        p = off + 48  # first frame after the block descriptor
        starts = []
        for data, _, _ in frames:
            frame_len = HDR + 20 + 2 + 14 + len(data)
            frame_len += -frame_len % 16
            starts.append(p)
            p += frame_len
        for i, (data, ifindex, wire) in enumerate(frames):
            f = starts[i]
            nxt = starts[i + 1] - f if i + 1 < len(frames) else 0
            mac, net = HDR + 20 + 2, HDR + 20 + 2 + 14
            snap = 14 + len(data)
            struct.pack_into("=IIIIIIHH", self.buf, f, nxt, 0, 0, snap, 14 + wire, 1, mac, net)
            struct.pack_into("=HHi", self.buf, f + HDR, 17, 0x0008, ifindex)  # sockaddr_ll
            self.buf[f + mac : f + mac + 14] = b"\x02" * 12 + b"\x08\x00"
            self.buf[f + net : f + net + len(data)] = data
        struct.pack_into("=IIIIII", self.buf, off, 3, 0, status, len(frames), 48, p - off)


class Recorder:
    """A real Datapath (it is a compiled class) whose policy records what it is asked.

    The node is set active so that every tracked packet reaches the policy; the verdict is
    ignored by the reader anyway. A payload ``boom`` makes the policy raise (a bug).
    """

    def __init__(self) -> None:
        from pmct.config import parse_config
        from pmct.conntrack.core import Engine
        from pmct.node.policy import CTSTATE_MARK_BITS

        self.seen: list[tuple[bytes, int]] = []
        self.engine = Engine(parse_config("").conntrack)
        self.dp = Datapath(self.engine, self.decide, {}, ctstate_bits=CTSTATE_MARK_BITS)
        self.dp.active = True

    def decide(self, ct: int, d: int, ifname: str | None, data: bytes, oif: Any) -> int:
        if data.endswith(b"boom"):
            raise RuntimeError("bug")
        self.seen.append((data, 3 if ifname == "lan0" else 7))
        return 0


def dgram(n: int, tag: bytes = b"x") -> bytes:
    return udp4(1000 + n, 53, tag)


def test_reader_walks_handed_over_blocks_in_order_and_gives_them_back() -> None:
    a, b, c, d, e = (dgram(i) for i in range(5))
    ring = Ring(3)
    ring.fill(0, [(a, 3, len(a)), (b + b"\0" * 6, 7, len(b) + 6)])  # Ethernet padding
    ring.fill(1, [(c, 3, len(c))])
    ring.fill(2, [(d, 3, len(d))], status=0)  # still the kernel's
    r = RingReader(ring, BLOCK, 3)
    rec = Recorder()
    rec.dp.names.update({3: "lan0", 7: "wan0"})
    assert r.drain(rec.dp, lambda: 0, 8) == 3
    assert rec.seen == [(a, 3), (b + b"\0" * 6, 7), (c, 3)]
    assert len(rec.engine.table) == 3 and rec.dp.packets == 3
    assert struct.unpack_from("=I", ring.buf, 8)[0] == 0  # block 0 back to the kernel
    assert struct.unpack_from("=I", ring.buf, BLOCK + 8)[0] == 0
    assert (r.block, r.packets, r.blocks_read) == (2, 3, 2)
    # the kernel hands over block 2, then block 0 again: the reader wraps around
    ring.fill(2, [(d, 3, len(d))])
    ring.fill(0, [(e, 7, len(e))])
    assert r.drain(rec.dp, lambda: 0, 8) == 2
    assert rec.seen[3:] == [(d, 3), (e, 7)] and r.block == 1


def test_reader_stops_at_its_budget() -> None:
    ring = Ring(4)
    pkts = [dgram(i) for i in range(4)]
    for i, p in enumerate(pkts):
        ring.fill(i, [(p, 3, len(p))])
    r = RingReader(ring, BLOCK, 4)
    rec = Recorder()
    assert r.drain(rec.dp, lambda: 0, 3) == 3
    assert r.drain(rec.dp, lambda: 0, 3) == 1
    assert [p for p, _ in rec.seen] == pkts


def test_reader_counts_truncated_frames_and_survives_a_failing_handler() -> None:
    a, cut, boom, c = dgram(1), dgram(2), dgram(3, b"boom"), dgram(4)
    ring = Ring(1)
    ring.fill(0, [(a, 3, len(a)), (cut, 3, 9000), (boom, 3, len(boom)), (c, 3, len(c))])
    r = RingReader(ring, BLOCK, 1)
    rec = Recorder()
    errors: list[int] = []
    assert r.drain(rec.dp, lambda: errors.append(1) or 0, 8) == 4
    assert [p for p, _ in rec.seen] == [a, c]  # the cut one is not tracked
    assert (r.truncated, r.errors, errors) == (1, 1, [1])


def test_reader_stops_at_a_frame_beyond_the_blocks_length() -> None:
    """The walk copies blk_len bytes of the block; a frame the kernel did not put inside
    them is an error, not a read of whatever lies behind it."""
    a, b = dgram(1), dgram(2)
    ring = Ring(2)
    ring.fill(0, [(a, 3, len(a)), (b, 3, len(b))])
    first_frame_end = 48 + struct.unpack_from("=I", ring.buf, 48)[0]
    struct.pack_into("=I", ring.buf, 20, first_frame_end)  # blk_len covers frame 1 only
    ring.fill(1, [(b, 7, len(b))])
    r = RingReader(ring, BLOCK, 2)
    rec = Recorder()
    assert r.drain(rec.dp, lambda: 0, 8) == 2
    assert [p for p, _ in rec.seen] == [a, b] and r.errors == 1
    assert struct.unpack_from("=I", ring.buf, 8)[0] == 0  # the block still goes back
