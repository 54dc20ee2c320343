"""The FTP NAT payload rewrite and sequence adjustment against full recomputation.

Random TCP segments (IPv4 with and without IP options, IPv6; TCP options or none; payloads of
any length), a random range of the payload replaced by a random text of another length, then
the sequence adjustment: the lengths and every checksum must equal what dpkt / a full sum
computes for the resulting bytes, whatever the parity of the offsets (an odd shift of the tail
is the case an incremental update gets wrong first).
"""

from __future__ import annotations

import struct

import dpkt
from hypothesis import given
from hypothesis import strategies as st

from pmct.conntrack.conn import Conn
from pmct.nat.ftp import mangle_tcp
from pmct.nat.seqadj import seq_adjust, seqadj_set


def csum(data: bytes) -> int:
    if len(data) & 1:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def tcp_ok(data: bytes) -> bool:
    """Lengths consistent and the TCP (and IPv4 header) checksum verify, in full."""
    if data[0] >> 4 == 4:
        ihl = (data[0] & 15) * 4
        if struct.unpack_from("!H", data, 2)[0] != len(data) or csum(data[:ihl]) != 0:
            return False
        seg = data[ihl:]
        pseudo = data[12:20] + struct.pack("!BBH", 0, 6, len(seg))
    else:
        if struct.unpack_from("!H", data, 4)[0] != len(data) - 40:
            return False
        seg = data[40:]
        pseudo = data[8:40] + struct.pack("!IxxxB", len(seg), 6)
    return csum(pseudo + seg) == 0


def build(v6: bool, ipopts: bool, tcpopts: bytes, payload: bytes, seq: int, ack: int) -> bytes:
    t = dpkt.tcp.TCP(sport=40000, dport=21, flags=0x18, seq=seq, ack=ack, opts=tcpopts)
    t.off = (20 + len(tcpopts)) // 4
    t.data = payload
    if v6:
        ip6 = dpkt.ip6.IP6(src=bytes(range(16)), dst=bytes(range(16, 32)), nxt=6, hlim=64, data=t)
        ip6.plen = len(bytes(t))
        ip6.extension_hdrs = {}
        return bytes(ip6)
    ip = dpkt.ip.IP(src=b"\x0a\0\0\x02", dst=b"\xcb\0\x71\x05", p=6, data=t)
    if ipopts:
        ip.opts = b"\x01\x01\x01\x00"  # NOP NOP NOP EOL: a 24-byte header
        ip.hl = 6
    ip.len = ip.hl * 4 + len(bytes(t))
    return bytes(ip)


SACK2 = b"\x01\x01\x05\x12" + struct.pack("!IIII", 1000, 2000, 3000, 4000)


@given(
    v6=st.booleans(),
    ipopts=st.booleans(),
    tcpopts=st.sampled_from([b"", b"\x01\x01\x08\x0a" + bytes(8), SACK2]),
    payload=st.binary(min_size=1, max_size=300),
    data=st.data(),
    seq=st.integers(0, 0xFFFFFFFF),
    ack=st.integers(0, 0xFFFFFFFF),
    shifts=st.tuples(st.integers(-40, 40), st.integers(-40, 40)),
)
def test_mangle_then_adjust_checksums_are_exact(
    v6: bool,
    ipopts: bool,
    tcpopts: bytes,
    payload: bytes,
    data: st.DataObject,
    seq: int,
    ack: int,
    shifts: tuple[int, int],
) -> None:
    pkt = build(v6, ipopts and not v6, tcpopts, payload, seq, ack)
    assert tcp_ok(pkt)
    off = data.draw(st.integers(0, len(payload)), label="off")
    old_len = data.draw(st.integers(0, len(payload) - off), label="old_len")
    new = data.draw(st.binary(max_size=60), label="new")
    out = mangle_tcp(pkt, off, old_len, new)
    assert out is not None
    assert tcp_ok(out)
    hdr_len = len(pkt) - len(payload)
    assert out[hdr_len:] == payload[:off] + new + payload[off + old_len :]
    # then the sequence adjustment of both fields (and SACK blocks when present)
    conn = Conn(1, b"k" * 12, b"r" * 12, 6 if v6 else 4, 6)
    seqadj_set(conn, 0, (seq - 1) & 0xFFFFFFFF, shifts[0])
    seqadj_set(conn, 1, (ack - 5) & 0xFFFFFFFF, shifts[1])
    adjusted = seq_adjust(out, 0, conn)
    assert adjusted is not None and tcp_ok(adjusted)
    l4 = hdr_len - 20 - len(tcpopts)
    nseq, nack = struct.unpack_from("!II", adjusted, l4 + 4)
    assert nseq == (seq + shifts[0]) & 0xFFFFFFFF
    assert nack == (ack - shifts[1]) & 0xFFFFFFFF
    if tcpopts == SACK2:  # the blocks, by the kernel's rule (before = 0 here)
        pos = (ack - 5) & 0xFFFFFFFF
        want = [
            (v - (shifts[1] if 0 < ((v - pos) & 0xFFFFFFFF) < 0x80000000 else 0)) & 0xFFFFFFFF
            for v in (1000, 2000, 3000, 4000)
        ]
        assert list(struct.unpack_from("!IIII", adjusted, l4 + 24)) == want
