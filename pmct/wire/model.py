"""The parsed view of one IP datagram: the only thing the engine's slow path reads.

A Packet is produced by ``pmct.wire.parse_ip`` and never raises on bad input: problems are
recorded as reason strings so the engine can count them and give a verdict.

- ``drop``: the IP header itself is broken in a way ``ip_rcv()``/``ipv6_rcv()`` would discard
  before conntrack ever runs (bad version, IHL < 5, total length beyond the buffer, ...).
- ``frag``: the datagram is a fragment (IPv4 MF/offset or an IPv6 fragment header); the L4
  fields are not parsed; the engine hands it to the defragmenter.
- ``bad``: the L4 header is missing or truncated (kernel: the per-protocol error() path), the
  engine makes it INVALID with this reason.
"""

from __future__ import annotations

__all__ = ["FragInfo", "Packet"]


class FragInfo:
    """Fragment bookkeeping for the defragmenter (kernel struct ipq / frag_queue key)."""

    __slots__ = ("ident", "offset", "more", "payload_off", "next_header")

    def __init__(
        self, ident: int, offset: int, more: bool, payload_off: int, next_header: int
    ) -> None:
        self.ident = ident  # IPv4 id (16 bit) or IPv6 fragment identification (32 bit)
        self.offset = offset  # byte offset of this fragment's payload in the whole datagram
        self.more = more  # MF flag
        self.payload_off = payload_off  # where this fragment's payload starts in Packet.data
        self.next_header = next_header  # IPv6: next header after the fragment header


class Packet:
    """One IP datagram (after any L2 header), parsed down to the L4 header fields."""

    __slots__ = (
        "l3",  # 4 or 6
        "src",  # bytes (4 or 16)
        "dst",
        "proto",  # L4 protocol number (for IPv6: after the extension headers)
        "data",  # the whole datagram, bytes
        "l4off",  # offset of the L4 header in data
        "l4len",  # bytes of L4 header + payload according to the IP length fields
        "ttl",  # TTL / hop limit
        "sport",  # ports; ICMP: id; GRE: key; 0 if none
        "dport",
        "tcp_seq",
        "tcp_ack",
        "tcp_flags",  # the 8 flag bits (FIN=1 SYN=2 RST=4 PSH=8 ACK=16 URG=32 ECE=64 CWR=128)
        "tcp_win",
        "tcp_doff",  # TCP header length in bytes
        "icmp_type",
        "icmp_code",
        "icmp_id",
        "inner",  # Packet quoted in an ICMP/ICMPv6 error (truncated L4 allowed), else None
        "drop",  # reason the IP layer would discard it, else None
        "frag",  # FragInfo if this is a fragment, else None
        "bad",  # reason the L4 header is unusable, else None
    )

    def __init__(self) -> None:
        self.l3 = 0
        self.src = b""
        self.dst = b""
        self.proto = 0
        self.data = b""
        self.l4off = 0
        self.l4len = 0
        self.ttl = 0
        self.sport = 0
        self.dport = 0
        self.tcp_seq = 0
        self.tcp_ack = 0
        self.tcp_flags = 0
        self.tcp_win = 0
        self.tcp_doff = 0
        self.icmp_type = -1
        self.icmp_code = -1
        self.icmp_id = 0
        self.inner: Packet | None = None
        self.drop: str | None = None
        self.frag: FragInfo | None = None
        self.bad: str | None = None

    @property
    def payload_len(self) -> int:
        """L4 payload bytes (TCP: after the TCP header)."""
        if self.proto == 6:
            return max(0, self.l4len - self.tcp_doff)
        return max(0, self.l4len - 8)

    def __repr__(self) -> str:
        return (
            f"<Packet v{self.l3} proto={self.proto} {self.src.hex()}:{self.sport} -> "
            f"{self.dst.hex()}:{self.dport} len={self.l4len} drop={self.drop} bad={self.bad} "
            f"frag={self.frag is not None}>"
        )
