"""Hypothesis: ct_sync codec round trips and totality (decoders raise only MalformedMessage)."""

from __future__ import annotations

import contextlib

from hypothesis import example, given
from hypothesis import strategies as st

from pmct.conntrack.keys import PORTED_PROTOS, make_key
from pmct.errors import MalformedMessage
from pmct.sync import codec
from pmct.sync.codec import (
    Announce,
    CtDelete,
    CtRecord,
    ExpDelete,
    ExpRecord,
    InitSyncRequest,
    Nack,
    PacketType,
    WalkBegin,
    WalkDone,
    decode_body,
    decode_datagram,
    decode_records,
    encode_datagram,
    encode_record,
)
from pmct.sync.records import conn_to_record, new_conn, pack_conn

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
PROTOS = st.sampled_from([6, 17, 1, 58, 47, 132, 33, 136, 99, 50])


@st.composite
def keys(draw: st.DrawFn, proto: int | None = None) -> bytes:
    p = draw(PROTOS) if proto is None else proto
    alen = draw(st.sampled_from([4, 16]))
    src, dst = (
        draw(st.binary(min_size=alen, max_size=alen)),
        draw(st.binary(min_size=alen, max_size=alen)),
    )
    if p == 6 or p in PORTED_PROTOS:
        return make_key(p, src, dst, draw(u16), draw(u16))
    return make_key(p, src, dst)


def _proto_of(key: bytes) -> int:
    return 6 if len(key) in (12, 36) else key[0]


helper_names = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=16
)


@st.composite
def ct_records(draw: st.DrawFn) -> CtRecord:
    key = draw(keys())
    proto = _proto_of(key)
    rkey = draw(
        st.one_of(st.just(codec.inverse_key(key)), keys(proto).filter(lambda k: len(k) == len(key)))
    )
    rec = CtRecord(
        proto,
        key,
        rkey,
        draw(u16),
        draw(st.integers(0, 9) if proto == 6 else u8),
        draw(u32),
        draw(u32),
    )
    if proto == 6:
        rec.tflags0, rec.tflags1 = draw(u8), draw(u8)
        rec.scale0, rec.scale1 = draw(st.integers(0, 14)), draw(st.integers(0, 14))
        if draw(st.booleans()):
            rec.window = (
                *draw(st.lists(u32, min_size=12, max_size=12)),
                draw(st.integers(0, 1)),
                draw(st.integers(0, 5)),
                draw(st.integers(0, 14)),
                draw(u8),
                draw(u8),
            )
    rec.helper = draw(st.none() | helper_names)
    rec.master = draw(st.none() | keys())
    rec.helper_data = draw(st.none() | st.binary(max_size=64))
    rec.stream_ms = draw(st.none() | u32)
    if draw(st.booleans()):
        rec.sctp = (
            draw(u32),
            draw(u32),
            draw(st.integers(0, 1)),
            draw(st.integers(0, 1)),
            draw(u8),
            draw(st.integers(0, 1)),
        )
    return rec


@st.composite
def exp_records(draw: st.DrawFn) -> ExpRecord | ExpDelete:
    key = draw(keys())
    mask = draw(st.binary(min_size=len(key), max_size=len(key)))
    master = draw(keys())
    if draw(st.booleans()):
        return ExpDelete(_proto_of(key), key, mask, master)
    return ExpRecord(
        _proto_of(key),
        key,
        mask,
        master,
        draw(u32),
        draw(u16),
        draw(u8),
        draw(st.text(alphabet="abcdefgh-1", max_size=16)),
    )


records = st.one_of(
    ct_records(),
    keys().map(lambda k: CtDelete(_proto_of(k), k)),
    exp_records(),
)


@given(st.lists(records, min_size=1, max_size=8))
def test_records_roundtrip(recs: list[codec.Record]) -> None:
    assert decode_records(b"".join(encode_record(r) for r in recs)) == recs


bodies = st.one_of(
    st.builds(Announce, u32, u32, st.integers(0, 1)).map(
        lambda b: (1, codec.encode_announce(b), b)
    ),
    st.builds(InitSyncRequest, u16, u32).map(lambda b: (2, codec.encode_initsync(b), b)),
    st.builds(
        Nack,
        u16,
        u32,
        u32,
        st.lists(st.tuples(u32, st.integers(0, 2**31 - 1)), min_size=0, max_size=128).map(
            lambda rs: tuple((a, (a + n) & 0xFFFFFFFF) for a, n in rs)
        ),
    ).map(lambda b: (4, codec.encode_nack(b), b)),
    st.builds(WalkBegin, u32, u32).map(lambda b: (5, codec.encode_walk_begin(b), b)),
    st.builds(WalkDone, u32, u32).map(lambda b: (6, codec.encode_walk_done(b), b)),
)


@given(
    bodies, st.integers(1, 0xFFFF), u32, u32, u32, st.none() | st.binary(min_size=16, max_size=64)
)
def test_datagram_roundtrip(
    b: tuple[int, bytes, object], node: int, epoch: int, seq: int, stamp: int, key: bytes | None
) -> None:
    ptype, raw, body = b
    d = encode_datagram(ptype, raw, node=node, epoch=epoch, seq=seq, stamp=stamp, key=key)
    h, got = decode_datagram(d, key)
    assert (h.type, h.node, h.epoch, h.seq, h.stamp) == (ptype, node, epoch, seq, stamp)
    assert decode_body(ptype, got) == body


def _total(data: bytes, key: bytes | None = None) -> None:
    try:
        h, body = decode_datagram(data, key)
        decode_body(h.type, body)
    except MalformedMessage:
        pass


@given(st.binary(max_size=300))
@example(b"\x01\x03\x00\x00\x00\x14\x00\x01" + bytes(12))
def test_decode_datagram_is_total(data: bytes) -> None:
    _total(data)
    _total(data, b"k" * 32)


@given(st.sampled_from(list(PacketType)), st.binary(max_size=400))
def test_decode_body_is_total(ptype: PacketType, body: bytes) -> None:
    with contextlib.suppress(MalformedMessage):
        decode_body(ptype, body)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    recs = draw(st.lists(records, min_size=1, max_size=4))
    data = bytearray(b"".join(encode_record(r) for r in recs))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, len(data) & 0xFF]))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 8))]
        else:
            del data[i:]
    return bytes(data)


@given(mutated())
def test_mutated_sync_bodies_never_raise_anything_else(body: bytes) -> None:
    with contextlib.suppress(MalformedMessage):
        decode_records(body)


@given(ct_records(), st.floats(0, 1e6))
def test_record_to_conn_and_back(rec: CtRecord, now: float) -> None:
    rec.timeout_ms = min(rec.timeout_ms, 10**9)
    rec.stream_ms = None if rec.proto != 17 or not rec.stream_ms else min(rec.stream_ms, 10**9)
    if rec.proto != 6:
        rec.window = None
    if rec.proto != 132:
        rec.sctp = None
    if rec.window is None and rec.proto == 6:
        rec.tflags0 &= ~0x20
        rec.tflags1 &= ~0x20
    rec.master = None  # the local table resolves masters; none here
    conn = new_conn(rec, now)
    back = conn_to_record(conn, now, window=rec.window is not None)
    assert abs(back.timeout_ms - rec.timeout_ms) <= 1
    back.timeout_ms = rec.timeout_ms
    if rec.stream_ms is not None and back.stream_ms is not None:
        assert abs(back.stream_ms - rec.stream_ms) <= 1
        back.stream_ms = rec.stream_ms
    if rec.stream_ms == 0:
        rec.stream_ms = None
    rec.status &= ~0x200  # DYING never travels
    assert back == rec
    assert pack_conn(conn, now, window=rec.window is not None) == codec.encode_ct_update(back)
