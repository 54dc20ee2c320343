"""Conn <-> record mapping: what travels, what comes back, the fast path agrees."""

from __future__ import annotations

import pytest

from pmct.conntrack.conn import TW_FIELDS, Conn
from pmct.conntrack.constants import Status
from pmct.conntrack.keys import IPPROTO_SCTP, IPPROTO_UDP, make_key
from pmct.sync import codec
from pmct.sync.codec import CtRecord, decode_records, encode_ct_update
from pmct.sync.records import (
    MAXACK_SET,
    conn_to_record,
    delete_record,
    has_window,
    new_conn,
    pack_conn,
    write_conn,
)
from pmct.sync.sim import sample_conn

NOW = 100.0


def test_window_layout_is_pinned_to_conn_tw() -> None:
    # The WINDOW section carries Conn.tw word for word (docs/protocol.md §4.3); a change of
    # TW_FIELDS needs a new wire layout.
    assert len(TW_FIELDS) == codec.WINDOW_WORDS == 12
    assert TW_FIELDS[:6] == (
        "td_end0",
        "td_maxend0",
        "td_maxwin0",
        "td_end1",
        "td_maxend1",
        "td_maxwin1",
    )


def _roundtrip(conn: Conn, *, window: bool) -> Conn:
    raw = pack_conn(conn, NOW, window=window)
    (rec,) = decode_records(raw)
    assert isinstance(rec, CtRecord)
    return new_conn(rec, NOW)


def test_tcp_without_window_relearns() -> None:
    c = sample_conn(1, expires=NOW + 12.345)
    c.tflags0 |= MAXACK_SET
    c.mark = 0
    r = _roundtrip(c, window=False)
    assert (r.key, r.rkey, r.l3, r.proto, r.state, r.status) == (
        c.key,
        c.rkey,
        4,
        6,
        c.state,
        c.status,
    )
    assert r.expires == pytest.approx(c.expires, abs=0.001)
    assert (r.td_scale0, r.td_scale1) == (7, 7)
    assert r.tflags0 == c.tflags0 & ~MAXACK_SET  # td_maxack did not travel
    assert list(r.tw) == [0] * 12 and not has_window(r)
    assert r.last_index == 5  # TCP_NONE_SET


def test_tcp_with_window_is_exact() -> None:
    c = sample_conn(2, expires=NOW + 5)
    c.tw[10] = 77
    c.tflags1 |= MAXACK_SET
    c.last_dir, c.last_index, c.last_wscale, c.last_flags, c.retrans = 1, 2, 9, 0x23, 4
    r = _roundtrip(c, window=True)
    assert list(r.tw) == list(c.tw)
    assert (r.last_dir, r.last_index, r.last_wscale, r.last_flags, r.retrans) == (1, 2, 9, 0x23, 4)
    assert (r.tflags0, r.tflags1) == (c.tflags0, c.tflags1)


def test_dying_bit_never_travels() -> None:
    c = sample_conn(3)
    c.status |= Status.DYING
    rec = conn_to_record(c, NOW)
    assert not rec.status & Status.DYING


def test_expired_entry_travels_with_zero_timeout() -> None:
    assert conn_to_record(sample_conn(1, expires=NOW - 5), NOW).timeout_ms == 0


def test_udp_stream_mark_and_mark_and_v6() -> None:
    c = sample_conn(4, proto=IPPROTO_UDP, v6=True, expires=NOW + 120)
    c.stream_ts = NOW + 1.5
    c.mark = 0x1234
    r = _roundtrip(c, window=False)
    assert r.l3 == 6 and r.mark == 0x1234
    assert r.stream_ts == pytest.approx(NOW + 1.5, abs=0.001)
    c.stream_ts = NOW - 1  # already a stream: nothing to carry, receiver gets "in the past"
    r = _roundtrip(c, window=False)
    assert r.stream_ts <= NOW


def test_sctp_vtags_travel() -> None:
    c = sample_conn(5, proto=IPPROTO_SCTP, expires=NOW + 10)
    c.state = 3
    c.extra = {"sctp": [0xAABBCCDD, 0x11223344, 1, 0, 1, 1], "other": object()}
    r = _roundtrip(c, window=False)
    assert r.state == 3
    assert r.extra == {"sctp": [0xAABBCCDD, 0x11223344, 1, 0, 1, 1]}  # other keys stay home


def test_helper_master_and_helper_data() -> None:
    master = sample_conn(6)
    c = sample_conn(7)
    c.extra = {"helper_data": b"\x01\x02\x03"}  # first: helper and master live in extra too
    c.helper = "ftp"
    c.master = master
    (rec,) = decode_records(pack_conn(c, NOW))
    assert isinstance(rec, CtRecord)
    assert rec.helper == "ftp" and rec.master == master.key and rec.helper_data == b"\x01\x02\x03"
    r = new_conn(rec, NOW, resolve_master={master.key: master}.get, resolve_helper=str.upper)
    assert r.master is master and r.helper == "FTP"
    assert r.extra is not None and r.extra["helper_data"] == b"\x01\x02\x03"
    r2 = new_conn(rec, NOW)  # nothing to resolve with: no master
    assert r2.master is None and r2.helper == "ftp"


def test_nat_reply_key_travels() -> None:
    c = sample_conn(8)
    c.rkey = make_key(6, bytes([192, 0, 2, 1]), bytes([198, 51, 100, 9]), 443, 61000)
    assert _roundtrip(c, window=False).rkey == c.rkey


@pytest.mark.parametrize("window", [False, True])
def test_write_conn_overwrites_every_synced_field(window: bool) -> None:
    src = sample_conn(9, expires=NOW + 30)
    src.state = 7
    src.mark = 5
    dst = sample_conn(9, expires=NOW + 1000)
    dst.helper = "x"
    dst.extra = {"helper_data": b"z"}
    rec = conn_to_record(src, NOW, window=window)
    write_conn(dst, rec, NOW)
    assert conn_to_record(dst, NOW, window=window) == rec
    assert dst.helper is None and dst.mark == 5
    assert dst.extra == {"mark": 5}  # the mark lives in extra; the stale helper data is gone
    if not window:
        assert not has_window(dst)  # authoritative apply without window: relearn


def test_write_conn_keep_window_keeps_local_window_and_liberal() -> None:
    local = sample_conn(10)
    local.tflags0 |= 0x08  # BE_LIBERAL: picked up mid-stream
    local.td_scale0 = 0
    tw = list(local.tw)
    rec = conn_to_record(sample_conn(10), NOW)
    rec.state = 4
    write_conn(local, rec, NOW, keep_window=True)
    assert list(local.tw) == tw and local.td_scale0 == 0
    assert local.state == 4 and local.tflags0 & 0x08


@pytest.mark.parametrize(
    "conn",
    [
        sample_conn(1),
        sample_conn(2, v6=True),
        sample_conn(3, proto=IPPROTO_UDP),
        sample_conn(4, state=1, status=0),
    ],
)
@pytest.mark.parametrize("window", [False, True])
def test_fast_path_equals_reference_encoder(conn: Conn, window: bool) -> None:
    assert pack_conn(conn, NOW, window=window) == encode_ct_update(
        conn_to_record(conn, NOW, window=window)
    )


def test_delete_record_protocol_from_key() -> None:
    assert delete_record(sample_conn(1).key).proto == 6
    assert delete_record(sample_conn(1, proto=IPPROTO_UDP, v6=True).key).proto == 17
