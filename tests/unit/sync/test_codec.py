"""Wire codec: pinned numbers, round trips, every malformed case, authentication."""

from __future__ import annotations

import struct

import pytest

from pmct.conntrack.keys import IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, make_key
from pmct.errors import MalformedMessage
from pmct.sync import codec
from pmct.sync.codec import (
    HEADER,
    HMAC_LEN,
    Announce,
    BadVersion,
    CtDelete,
    CtRecord,
    ExpDelete,
    ExpRecord,
    Ext,
    HmacUnexpected,
    InitSyncRequest,
    MsgType,
    Nack,
    PacketType,
    Unauthenticated,
    WalkBegin,
    WalkDone,
    decode_body,
    decode_datagram,
    decode_records,
    encode_datagram,
    encode_record,
    inverse_key,
)

A4 = bytes([10, 0, 0, 1])
B4 = bytes([192, 0, 2, 7])
A6 = bytes(range(16))
B6 = bytes(range(16, 32))
KEY = b"k" * 32


def tcp4(**kw: object) -> CtRecord:
    key = make_key(IPPROTO_TCP, A4, B4, 40000, 80)
    base = {
        "proto": 6,
        "key": key,
        "rkey": inverse_key(key),
        "status": 0xE,
        "state": 3,
        "timeout_ms": 432_000_000,
        "tflags0": 0x03,
        "tflags1": 0x0B,
        "scale0": 7,
        "scale1": 14,
    }
    base.update(kw)
    return CtRecord(**base)  # type: ignore[arg-type]


def test_pinned_wire_numbers() -> None:
    # docs/protocol.md §3, §4.1, §4.6: never renumber, never reuse.
    assert codec.PROTOCOL_VERSION == 1
    assert {t.name: t.value for t in PacketType} == {
        "MASTER_ANNOUNCE": 1,
        "SLAVE_INITSYNC": 2,
        "SYNC": 3,
        "NACK": 4,
        "INITSYNC_BEGIN": 5,
        "INITSYNC_DONE": 6,
    }
    assert {t.name: t.value for t in MsgType} == {
        "CT_UPDATE": 1,
        "CT_DELETE": 2,
        "EXP_UPDATE": 3,
        "EXP_DELETE": 4,
    }
    assert {t.name: t.value for t in Ext} == {
        "HELPER": 1,
        "MASTER": 2,
        "HELPER_DATA": 3,
        "UDP_STREAM": 4,
        "SCTP": 5,
        "SEQADJ": 6,  # the first two numbers of the NAT range 6..15
        "EXP_NAT": 7,
    }
    assert (codec.EXT_NAT_FIRST, codec.EXT_NAT_LAST) == (6, 15)
    assert (codec.FLAG_HMAC, codec.FLAG_WALK) == (1, 2)
    assert (codec.RF_V6, codec.RF_RKEY, codec.RF_MARK, codec.RF_WINDOW, codec.RF_EXT) == (
        1,
        2,
        4,
        8,
        16,
    )
    assert HEADER.size == 20 and HMAC_LEN == 32
    assert codec.WINDOW_LEN == 53


def test_header_layout_bytes() -> None:
    d = encode_datagram(3, b"", node=0x0102, epoch=0x03040506, seq=0x0708090A, stamp=0x0B0C0D0E)
    assert d == bytes.fromhex("0103000000140102030405060708090a0b0c0d0e")


def test_ipv4_tcp_record_is_27_bytes() -> None:
    # The bulk case of docs/protocol.md §4.3: the <= 40 bytes/connection target rests on it.
    assert len(codec.encode_ct_update(tcp4())) == 27 == codec.CT_TCP4_LEN


def test_ipv4_tcp_record_bytes() -> None:
    r = tcp4(status=0x010E, state=3, timeout_ms=0x01020304, tflags0=1, tflags1=2)
    raw = codec.encode_ct_update(r)
    assert raw[:4] == bytes([1, 0, 0, 27])
    assert raw[4] == 6 and raw[5:17] == r.key
    assert raw[17:] == bytes([0x01, 0x0E, 3, 1, 2, 3, 4, 1, 2, 7 << 4 | 14])


@pytest.mark.parametrize(
    "rec",
    [
        tcp4(),
        tcp4(mark=0xDEADBEEF),
        tcp4(rkey=make_key(IPPROTO_TCP, B4, bytes([198, 51, 100, 1]), 80, 61000)),  # NAT
        tcp4(window=(*range(1, 13), 1, 3, 14, 0x23, 255)),
        tcp4(helper="ftp", helper_data=b"\x01\x02", master=make_key(IPPROTO_TCP, A4, B4, 1, 21)),
        CtRecord(
            6,
            make_key(IPPROTO_TCP, A6, B6, 1, 2),
            make_key(IPPROTO_TCP, B6, A6, 2, 1),
            2,
            1,
            5,
            window=(0,) * 12 + (0, 5, 0, 0, 0),
        ),
        CtRecord(
            IPPROTO_UDP,
            make_key(IPPROTO_UDP, A4, B4, 53, 53),
            make_key(IPPROTO_UDP, B4, A4, 53, 53),
            6,
            0,
            30000,
            stream_ms=1500,
        ),
        CtRecord(
            IPPROTO_ICMP,
            make_key(IPPROTO_ICMP, A4, B4, 77, 8 << 8),
            make_key(IPPROTO_ICMP, B4, A4, 77, 0),
            2,
            0,
            30000,
        ),
        CtRecord(47, make_key(47, A6, B6, 1, 2), make_key(47, B6, A6, 2, 1), 0, 0, 1),
        CtRecord(99, make_key(99, A4, B4), make_key(99, B4, A4), 0, 0, 600000, mark=3),
        CtRecord(
            132,
            make_key(132, A4, B4, 5000, 5001),
            make_key(132, B4, A4, 5001, 5000),
            0xE,
            3,
            1,
            sctp=(0x11223344, 0x55667788, 1, 1, 1, 0),
        ),
        CtDelete(6, make_key(IPPROTO_TCP, A4, B4, 1, 2)),
        CtDelete(17, make_key(IPPROTO_UDP, A6, B6, 1, 2)),
        ExpRecord(6, make_key(6, A4, B4, 0, 2121), b"\xff" * 10 + b"\0\0", tcp4().key, 300000),
        ExpRecord(
            17,
            make_key(17, A6, B6, 0, 69),
            b"\xff" * 37,
            make_key(17, A6, B6, 1, 69),
            5,
            3,
            1,
            "tftp",
        ),
        ExpDelete(6, make_key(6, A4, B4, 0, 2121), b"\xff" * 12, make_key(6, A6, B6, 1, 21)),
    ],
    ids=lambda r: type(r).__name__,
)
def test_record_roundtrip(rec: codec.Record) -> None:
    raw = encode_record(rec)
    assert decode_records(raw) == [rec]
    assert decode_records(raw + raw) == [rec, rec]


def test_reply_key_travels_only_when_not_the_inverse() -> None:
    plain = codec.encode_ct_update(tcp4())
    nat = codec.encode_ct_update(tcp4(rkey=make_key(IPPROTO_TCP, B4, A4, 80, 1)))
    assert plain[1] & codec.RF_RKEY == 0
    assert nat[1] & codec.RF_RKEY and len(nat) == len(plain) + 12


def test_inverse_key_per_layout() -> None:
    assert inverse_key(make_key(6, A4, B4, 1, 2)) == make_key(6, B4, A4, 2, 1)
    assert inverse_key(make_key(17, A6, B6, 1, 2)) == make_key(17, B6, A6, 2, 1)
    assert inverse_key(make_key(99, A4, B4)) == make_key(99, B4, A4)
    with pytest.raises(ValueError):
        inverse_key(b"abc")


@pytest.mark.parametrize(
    "body",
    [
        Announce(7, 0xFFFFFFFF, 1),
        InitSyncRequest(0, 99),
        Nack(1, 5, 77, ((1, 1), (0xFFFFFFFE, 3))),
        WalkBegin(1, 1000000),
        WalkDone(1, 999999),
    ],
    ids=lambda b: type(b).__name__,
)
def test_control_body_roundtrip(body: object) -> None:
    enc = {
        Announce: (codec.encode_announce, PacketType.MASTER_ANNOUNCE),
        InitSyncRequest: (codec.encode_initsync, PacketType.SLAVE_INITSYNC),
        Nack: (codec.encode_nack, PacketType.NACK),
        WalkBegin: (codec.encode_walk_begin, PacketType.INITSYNC_BEGIN),
        WalkDone: (codec.encode_walk_done, PacketType.INITSYNC_DONE),
    }[type(body)]
    raw = enc[0](body)  # type: ignore[operator]
    assert decode_body(enc[1], raw) == body


@pytest.mark.parametrize("key", [None, KEY])
def test_datagram_roundtrip(key: bytes | None) -> None:
    body = codec.encode_ct_update(tcp4())
    d = encode_datagram(3, body, node=2, epoch=9, seq=0xFFFFFFFF, stamp=5, key=key, flags=2)
    h, b = decode_datagram(d, key)
    assert b == body
    assert (h.type, h.node, h.epoch, h.seq, h.stamp) == (3, 2, 9, 0xFFFFFFFF, 5)
    assert h.flags == (3 if key else 2) and h.length == 20 + len(body)
    assert len(d) == h.length + (HMAC_LEN if key else 0)


def test_authentication_failures() -> None:
    d = encode_datagram(
        1, codec.encode_announce(Announce(1, 0, 0)), node=2, epoch=1, seq=1, stamp=0, key=KEY
    )
    with pytest.raises(Unauthenticated):
        decode_datagram(d, b"x" * 32)  # wrong key
    with pytest.raises(Unauthenticated):
        decode_datagram(d[:-1] + bytes([d[-1] ^ 1]), KEY)  # tampered trailer
    tampered = bytearray(d)
    tampered[12] ^= 0x80  # seq
    with pytest.raises(Unauthenticated):
        decode_datagram(bytes(tampered), KEY)
    with pytest.raises(HmacUnexpected):
        decode_datagram(d, None)
    plain = encode_datagram(
        1, codec.encode_announce(Announce(1, 0, 0)), node=2, epoch=1, seq=1, stamp=0
    )
    with pytest.raises(Unauthenticated):
        decode_datagram(plain, KEY)
    assert Unauthenticated.reason == "unauthenticated"
    assert HmacUnexpected.reason == "hmac_unexpected"


def _hdr(**kw: int) -> bytes:
    f = {"v": 1, "t": 3, "fl": 0, "r": 0, "len": 20, "node": 1, "e": 0, "s": 0, "st": 0}
    f.update(kw)
    return HEADER.pack(*f.values())


@pytest.mark.parametrize(
    ("data", "exc"),
    [
        (b"", MalformedMessage),
        (b"\x02" + bytes(30), BadVersion),
        (b"\x01" + bytes(10), MalformedMessage),
        (_hdr(t=0), MalformedMessage),
        (_hdr(t=7), MalformedMessage),
        (_hdr(fl=4), MalformedMessage),
        (_hdr(r=1), MalformedMessage),
        (_hdr(len=21), MalformedMessage),
        (_hdr(len=19), MalformedMessage),
        (_hdr(node=0), MalformedMessage),
        (_hdr(t=1, fl=2), MalformedMessage),  # WALK on an announce
        (_hdr() + b"x", MalformedMessage),  # trailing bytes beyond length
    ],
)
def test_malformed_headers(data: bytes, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        decode_datagram(data)


def _ct(flags: int, body: bytes, mtype: int = 1) -> bytes:
    return struct.pack("!BBH", mtype, flags, 4 + len(body)) + body


GOOD = codec.encode_ct_update(tcp4())


@pytest.mark.parametrize(
    "raw",
    [
        b"",  # SYNC without records
        GOOD[:-1],  # truncated
        GOOD + b"\x01",  # trailing garbage after the last record
        bytes([9]) + GOOD[1:],  # unknown message type
        bytes([0]) + GOOD[1:],  # reserved message type
        GOOD[:1] + b"\x80" + GOOD[2:],  # reserved record flag
        GOOD[:2] + b"\x00\x1c" + GOOD[4:],  # length one too long
        GOOD[:2] + b"\x00\x1a" + GOOD[4:],  # length one too short
        GOOD[:2] + b"\x00\x03" + GOOD[4:],  # length shorter than the head
        GOOD[:19] + b"\x0a" + GOOD[20:],  # TCP state 10
        GOOD[:-1] + b"\xf0",  # scale 15
        codec.encode_ct_update(tcp4(mark=1))[:-1],  # truncated mark
        _ct(0, bytes([17]) + make_key(6, A4, B4, 1, 2) + bytes(7)),  # UDP key without proto byte
        _ct(codec.RF_WINDOW, bytes([17]) + make_key(17, A4, B4, 1, 2) + bytes(7 + 53)),
        codec.encode_ct_update(tcp4(window=(0,) * 12 + (2, 0, 0, 0, 0))),  # last_dir 2
        codec.encode_ct_update(tcp4(window=(0,) * 12 + (0, 6, 0, 0, 0))),  # last_index 6
        _ct(codec.RF_EXT, GOOD[4:]),  # EXT flag, empty extension area
        _ct(codec.RF_EXT, GOOD[4:] + b"\x01"),  # truncated TLV head
        _ct(codec.RF_EXT, GOOD[4:] + b"\x01\x05ftp"),  # TLV runs past the record
        _ct(codec.RF_EXT, GOOD[4:] + b"\x01\x00"),  # empty helper name
        _ct(codec.RF_EXT, GOOD[4:] + b"\x01\x03f p"),  # helper name with a space
        _ct(codec.RF_EXT, GOOD[4:] + b"\x01\x03ftp\x01\x03ftp"),  # repeated TLV
        _ct(codec.RF_EXT, GOOD[4:] + b"\x00\x00"),  # TLV type 0
        _ct(codec.RF_EXT, GOOD[4:] + b"\x04\x02\x00\x01"),  # UDP_STREAM wrong length
        _ct(codec.RF_EXT, GOOD[4:] + b"\x02\x05\x06abcd"),  # master key wrong length
        _ct(codec.RF_EXT, GOOD[4:] + b"\x05\x0c" + bytes(8) + b"\x02\x00\x00\x00"),  # SCTP init
        _ct(0, bytes([6]) + make_key(6, A4, B4, 1, 2) + b"!", mtype=2),  # delete: trailing
        _ct(2, bytes([6]) + make_key(6, A4, B4, 1, 2), mtype=2),  # delete: reserved flag
        codec.encode_exp_update(ExpRecord(6, tcp4().key, bytes(12), tcp4().key, 1, helper="ab"))[
            :-1
        ],
        codec.encode_exp_delete(ExpDelete(6, tcp4().key, bytes(12), tcp4().key)) + b"\x00",
    ],
)
def test_malformed_records(raw: bytes) -> None:
    with pytest.raises(MalformedMessage):
        decode_body(PacketType.SYNC, raw)


def test_unknown_extension_is_skipped() -> None:
    rec = tcp4(helper="ftp")
    raw = codec.encode_ct_update(rec)
    raw = _ct(raw[1], raw[4:] + b"\x80\x03xyz")  # experimental TLV appended
    assert decode_records(raw) == [rec]


@pytest.mark.parametrize(
    ("ptype", "raw"),
    [
        (PacketType.MASTER_ANNOUNCE, bytes(11)),
        (PacketType.MASTER_ANNOUNCE, struct.pack("!IIBBH", 1, 1, 2, 0, 0)),  # mode 2
        (PacketType.MASTER_ANNOUNCE, struct.pack("!IIBBH", 1, 1, 0, 1, 0)),  # reserved
        (PacketType.SLAVE_INITSYNC, struct.pack("!HHI", 0, 1, 0)),
        (PacketType.SLAVE_INITSYNC, bytes(9)),
        (PacketType.NACK, bytes(11)),
        (PacketType.NACK, struct.pack("!HHII", 1, 0, 0, 0) + b"x"),  # trailing byte
        (PacketType.NACK, struct.pack("!HHII", 1, 129, 0, 0) + bytes(129 * 8)),
        (PacketType.NACK, struct.pack("!HHIIII", 1, 2, 0, 0, 1, 2)),  # count says 2, has 1
        (PacketType.NACK, struct.pack("!HHIIII", 1, 1, 0, 0, 5, 4)),  # backwards range
        (PacketType.INITSYNC_BEGIN, bytes(7)),
        (PacketType.INITSYNC_DONE, bytes(9)),
    ],
)
def test_malformed_control_bodies(ptype: int, raw: bytes) -> None:
    with pytest.raises(MalformedMessage):
        decode_body(ptype, raw)


def test_encoder_refuses_local_mistakes() -> None:
    with pytest.raises(ValueError):
        codec.encode_nack(Nack(1, 1, 0, ((1, 1),) * 129))
    with pytest.raises(ValueError):
        codec.encode_ct_update(
            CtRecord(
                17,
                make_key(17, A4, B4, 1, 2),
                make_key(17, B4, A4, 2, 1),
                0,
                0,
                0,
                window=(0,) * 17,
            )
        )
    with pytest.raises(ValueError):
        codec.encode_exp_update(ExpRecord(6, tcp4().key, bytes(11), tcp4().key, 0))
    with pytest.raises(ValueError):
        encode_datagram(3, bytes(70000), node=1, epoch=0, seq=0, stamp=0)


def test_timeout_saturates() -> None:
    raw = codec.encode_ct_update(tcp4(timeout_ms=1 << 40))
    rec = decode_records(raw)[0]
    assert isinstance(rec, CtRecord) and rec.timeout_ms == 0xFFFFFFFF
