"""The passive node's capture: a TPACKET_V3 receive ring instead of the NFQUEUE round trip.

Why: a passive node only tracks and drops. Through NFQUEUE every packet costs it the whole
round trip (the IP stack up to raw PREROUTING, nfqnl_build_packet_message(), one recv() per
packet, a batch verdict) although the verdict is always DROP. With ``queue.passive_capture =
"ring"`` the passive node instead

* reads the data interfaces' frames from one AF_PACKET TPACKET_V3 ring (af_packet.c
  tpacket_rcv(): the kernel copies each frame into a shared memory block and hands whole
  blocks to user space, one wake-up per block, no system call per packet), and
* drops IPv4/IPv6 at the netdev ingress hook of the data interfaces (netfilter.Silence,
  ``ingress_drop``): taps such as this ring run before that hook in
  __netif_receive_skb_core(), so the frame is copied into the ring first, then dropped
  before the IP stack spends anything on it.

What the ring sees must equal what the NFQUEUE rules would have queued, so a classic BPF
filter (run before the copy) keeps only frames that arrive on a data interface, are not
PACKET_OTHERHOST (ip_rcv() drops those before PREROUTING, so the active node never tracks
them; a multicast cluster MAC arrives as PACKET_MULTICAST and stays) and not outgoing, and
carry IPv4 (and IPv6 when ``queue.ipv6``). Fragments arrive unreassembled; the engine's own
defragmenter (pmct/wire/defrag.py, nf_defrag's rules) reassembles them, as in pcap replay.

A frame the ring cannot hold is dropped by the kernel and counted (PACKET_STATISTICS
tp_drops): ``missed``. This module is I/O only: the block walk is datapath.RingReader
(compiled) and the role switch that opens and closes the ring is the daemon's.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import socket
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from pmct.node.datapath import Datapath, RingReader

__all__ = ["RING_BLOCK_SIZE", "RingCapture", "bpf_filter", "ring_bytes"]

SOL_PACKET: Final = 263
PACKET_RX_RING: Final = 5
PACKET_STATISTICS: Final = 6
PACKET_VERSION: Final = 10
PACKET_IGNORE_OUTGOING: Final = 23
TPACKET_V3: Final = 2
ETH_P_ALL: Final = 0x0003
ETH_P_IP: Final = 0x0800
ETH_P_IPV6: Final = 0x86DD
PACKET_OTHERHOST: Final = 3
PACKET_OUTGOING: Final = 4
SO_ATTACH_FILTER: Final = 26

# Blocks are handed to user space whole, when full or RING_BLOCK_TIMEOUT_MS after their first
# frame. A block must hold the largest frame (a 64 KB GSO/GRO super-packet); small blocks make
# many of them: a sparse stream retires one block per timeout, so the ring bridges a stall of
# the daemon (an expiry pass, a big ct_sync walk) of blocks x timeout at any packet rate:
# 64 MiB = 512 blocks = 2 s, and at 100,000 full-size frames/s about 0.4 s.
RING_BLOCK_SIZE: Final = 128 << 10
RING_BLOCK_TIMEOUT_MS: Final = 4
_FRAME_SIZE: Final = 2048  # only for the kernel's ring arithmetic (V3 frames are variable)

# classic BPF (linux/filter.h, linux/bpf_common.h)
_BPF_LD_W_ABS: Final = 0x00 | 0x00 | 0x20
_BPF_JEQ_K: Final = 0x05 | 0x10 | 0x00
_BPF_RET_K: Final = 0x06 | 0x00
_SKF_AD_OFF: Final = -0x1000
_SKF_AD_PROTOCOL: Final = 0
_SKF_AD_PKTTYPE: Final = 4
_SKF_AD_IFINDEX: Final = 8
_ACCEPT_ALL: Final = 0x40000  # snap length: more than any frame a block holds


def ring_bytes(size: int) -> int:
    """The bytes a ring asked for ``size`` really has: whole blocks, at least two."""
    return max(2, size // RING_BLOCK_SIZE) * RING_BLOCK_SIZE


def _ad(field: int) -> int:
    return (_SKF_AD_OFF + field) & 0xFFFFFFFF


def bpf_filter(ifindexes: Sequence[int], ipv6: bool) -> list[tuple[int, int, int, int]]:
    """The ring's filter as (code, jt, jf, k) instructions.

    Keeps a frame when it arrived on one of ``ifindexes``, its packet type is neither
    PACKET_OTHERHOST nor PACKET_OUTGOING, and its protocol is IPv4 (or IPv6 with ``ipv6``).
    Jump offsets count from the next instruction; the last two instructions are "drop" and
    "accept".
    """
    if not ifindexes:
        raise ValueError("no data interface to capture")
    protos = [ETH_P_IP, *([ETH_P_IPV6] if ipv6 else [])]
    n_if, n_proto = len(ifindexes), len(protos)
    # layout: ld ifindex; n_if x jeq; ret 0 (not ours); ld pkttype; 2 x jeq; ld protocol;
    # n_proto x jeq; drop; accept
    prog: list[tuple[int, int, int, int]] = [(_BPF_LD_W_ABS, 0, 0, _ad(_SKF_AD_IFINDEX))]
    for i, idx in enumerate(ifindexes):
        to_pkttype = n_if - i  # skip the remaining jeqs and the "ret 0"
        prog.append((_BPF_JEQ_K, to_pkttype, 0, idx))
    prog.append((_BPF_RET_K, 0, 0, 0))
    prog.append((_BPF_LD_W_ABS, 0, 0, _ad(_SKF_AD_PKTTYPE)))
    drop_at = 1 + n_if + 1 + 1 + 2 + 1 + n_proto  # index of the "drop" instruction
    for t in (PACKET_OTHERHOST, PACKET_OUTGOING):
        prog.append((_BPF_JEQ_K, drop_at - len(prog) - 1, 0, t))
    prog.append((_BPF_LD_W_ABS, 0, 0, _ad(_SKF_AD_PROTOCOL)))
    for p in protos:
        prog.append((_BPF_JEQ_K, drop_at + 1 - len(prog) - 1, 0, p))
    prog.append((_BPF_RET_K, 0, 0, 0))
    prog.append((_BPF_RET_K, 0, 0, _ACCEPT_ALL))
    assert len(prog) == drop_at + 2
    return prog


def _attach_filter(sock: socket.socket, prog: list[tuple[int, int, int, int]]) -> None:
    code = b"".join(struct.pack("=HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("@HP", len(prog), ctypes.addressof(buf))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def _bind_all(sock: socket.socket) -> None:
    """bind(ETH_P_ALL, ifindex 0): every interface (Python's bind() wants a name)."""
    libc = ctypes.CDLL(None, use_errno=True)
    sll = struct.pack("=HHiHBB8s", socket.AF_PACKET, socket.htons(ETH_P_ALL), 0, 0, 0, 0, b"")
    if libc.bind(sock.fileno(), ctypes.c_char_p(sll), len(sll)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"AF_PACKET bind: {os.strerror(err)}")


class RingCapture:
    """One TPACKET_V3 ring over all data interfaces; ``drain(dp)`` tracks what it holds."""

    def __init__(
        self,
        ifindexes: Sequence[int],
        *,
        ipv6: bool,
        size: int = 64 * RING_BLOCK_SIZE,
        on_error: Callable[[], int] | None = None,
        budget: int = 8,
    ) -> None:
        self.size = ring_bytes(size)
        blocks = self.size // RING_BLOCK_SIZE
        self.blocks = blocks
        self.budget = budget  # blocks per drain: the loop must come back to its other fds
        self.on_error = on_error or (lambda: 0)
        self.drops = 0  # frames the kernel could not put in the ring (tp_drops)
        self.freezes = 0  # times the ring was full (tp_freeze_q_cnt)
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # 0: receives nothing yet
        try:
            _attach_filter(s, bpf_filter(ifindexes, ipv6))
            s.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            with contextlib.suppress(OSError):  # Linux >= 4.20; the filter drops them anyway
                s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            req = struct.pack(
                "=7I",
                RING_BLOCK_SIZE,
                blocks,
                _FRAME_SIZE,
                blocks * (RING_BLOCK_SIZE // _FRAME_SIZE),
                RING_BLOCK_TIMEOUT_MS,
                0,
                0,
            )
            s.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
            self.mm = mmap.mmap(
                s.fileno(), self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
            )
            _bind_all(s)
        except BaseException:
            s.close()
            raise
        self.sock = s
        self.fd = s.fileno()
        self.reader = RingReader(self.mm, RING_BLOCK_SIZE, blocks)

    def drain(self, dp: Datapath) -> int:
        """Track the packets of up to ``budget`` handed-over blocks; the packet count."""
        return self.reader.drain(dp, self.on_error, self.budget)

    def read_stats(self) -> None:
        """Fold the kernel's counters in (reading them resets them: af_packet.c)."""
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)
        _, drops, freezes = struct.unpack("=3I", raw)
        self.drops += drops
        self.freezes += freezes

    def stats(self) -> dict[str, Any]:
        with contextlib.suppress(OSError, ValueError):
            self.read_stats()
        r = self.reader
        return {  # counters only: the daemon adds up those of every ring it opened
            "packets": r.packets,
            "blocks": r.blocks_read,
            "drops": self.drops,
            "freezes": self.freezes,
            "truncated": r.truncated,
            "errors": r.errors,
        }

    def close(self, dp: Datapath | None = None, since: float | None = None) -> None:
        """Track what the ring still holds, then close it.

        ``since``: when the ingress drop went away (a promotion). Packets that arrived before
        that sit in blocks the kernel retires within RING_BLOCK_TIMEOUT_MS, so wait that long
        (twice) and drain once more: they were dropped on the wire, but the engine must see
        them. A packet seen both here and through NFQUEUE after that moment is tracked twice,
        which the trackers take as a retransmission.
        """
        if dp is not None:
            with contextlib.suppress(Exception):
                while self.drain(dp):
                    pass
                if since is not None:
                    wait = since + 2 * RING_BLOCK_TIMEOUT_MS / 1000 - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    while self.drain(dp):
                        pass
        with contextlib.suppress(OSError, ValueError):
            self.read_stats()
        with contextlib.suppress(Exception):
            self.mm.close()
        self.sock.close()
