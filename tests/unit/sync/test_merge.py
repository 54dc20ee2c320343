"""The merge rule (docs/protocol.md §10): state never moves backwards; authoritative apply."""

from __future__ import annotations

import pytest

from pmct.conntrack.constants import TCP_STATE_NAMES, Status, TcpState
from pmct.conntrack.keys import IPPROTO_UDP
from pmct.conntrack.proto.tcp_table import FLAG_INDEX_NAMES, TCP_CONNTRACKS
from pmct.sync.merge import (
    TCP_PROGRESS,
    apply_authoritative,
    apply_delete_authoritative,
    apply_merge,
    remote_is_newer,
    status_rank,
)
from pmct.sync.records import conn_to_record, delete_record, has_window
from pmct.sync.sim import sample_conn
from pmct.sync.table import DictTable

NOW = 50.0
ES, TW, FW, SS, CL = (
    TcpState.ESTABLISHED,
    TcpState.TIME_WAIT,
    TcpState.FIN_WAIT,
    TcpState.SYN_SENT,
    TcpState.CLOSE,
)


def test_progress_rank_follows_the_kernel_table() -> None:
    # Every cell of tcp_conntracks[] that moves an entry to a lower rank is a reopen
    # (TIME_WAIT/CLOSE + SYN -> SYN_SENT), which the kernel turns into delete + create
    # (-NF_REPEAT) or INVALID: a live entry never moves backwards in this order.
    backwards = set()
    for d in (0, 1):
        for idx, row in enumerate(TCP_CONNTRACKS[d]):
            for old, new in enumerate(row):
                if (
                    old < TcpState.MAX
                    and new < TcpState.MAX
                    and TCP_PROGRESS[new] < TCP_PROGRESS[old]
                ):
                    backwards.add(
                        (d, FLAG_INDEX_NAMES[idx], TCP_STATE_NAMES[old], TCP_STATE_NAMES[new])
                    )
    assert backwards == {
        (0, FLAG_INDEX_NAMES[0], "TIME_WAIT", "SYN_SENT"),
        (0, FLAG_INDEX_NAMES[0], "CLOSE", "SYN_SENT"),
        (1, FLAG_INDEX_NAMES[0], "TIME_WAIT", "SYN_SENT"),
    }
    assert sorted(TCP_PROGRESS) == list(range(10))


def test_status_rank() -> None:
    assert status_rank(0) == 0
    assert status_rank(Status.SEEN_REPLY) == 1
    assert status_rank(Status.ASSURED | Status.SEEN_REPLY) == 2


def rec_of(state: int = ES, expires: float = NOW + 100, status: int | None = None, **kw: object):
    c = sample_conn(1, state=state, expires=expires)
    if status is not None:
        c.status = status
    for k, v in kw.items():
        setattr(c, k, v)
    return conn_to_record(c, NOW)


@pytest.mark.parametrize(
    ("remote", "local", "newer"),
    [
        (FW, ES, True),  # the remote saw the FIN
        (ES, FW, False),  # stale: the local side saw the FIN already
        (TW, ES, True),
        (CL, TW, True),
        (ES, SS, True),
        (SS, ES, False),
        (TcpState.SYN_SENT2, SS, True),
        (TcpState.SYN_RECV, TcpState.SYN_SENT2, True),
    ],
)
def test_rank_decides_first(remote: int, local: int, newer: bool) -> None:
    lc = sample_conn(1, state=local, expires=NOW + 1000)
    r = rec_of(remote, expires=NOW + 1)  # deadline would say "older": rank comes first
    assert remote_is_newer(r, NOW + 1, lc) is newer


def test_status_rank_then_deadline_then_tie_keeps_local() -> None:
    lc = sample_conn(1, expires=NOW + 100, status=int(Status.SEEN_REPLY | Status.CONFIRMED))
    assert remote_is_newer(rec_of(expires=NOW + 1), NOW + 1, lc)  # ASSURED outranks
    lc.status |= Status.ASSURED
    assert remote_is_newer(rec_of(), NOW + 100.5, lc)
    assert not remote_is_newer(rec_of(), NOW + 99.5, lc)
    assert not remote_is_newer(rec_of(), NOW + 100, lc)  # tie: local


def test_window_comparison_only_where_both_know_it() -> None:
    lc = sample_conn(1, expires=NOW + 100)
    r = conn_to_record(sample_conn(1, expires=NOW + 1), NOW, window=True)
    w = list(r.window or ())
    w[0] = (lc.tw[0] + 10) & 0xFFFFFFFF  # remote further along in the original direction
    r.window = tuple(w)
    assert remote_is_newer(r, NOW + 1, lc)
    w[3] = (lc.tw[3] - 10) & 0xFFFFFFFF  # ... but behind in the reply direction: local wins
    r.window = tuple(w)
    assert not remote_is_newer(r, NOW + 1000, lc)
    w[5] = 0  # the remote does not know the reply window: only the original one counts
    r.window = tuple(w)
    assert remote_is_newer(r, NOW + 1, lc)
    w[0] = 0x80000000 + lc.tw[0]  # half the sequence space ahead is "behind"
    r.window = tuple(w)
    assert not remote_is_newer(r, NOW + 1, lc)


def test_merge_inserts_when_absent() -> None:
    t = DictTable()
    assert apply_merge(t, rec_of(), NOW, NOW) == "inserted"
    assert t.get(sample_conn(1).key) is not None
    assert t.get(sample_conn(1).rkey) is t.get(sample_conn(1).key)


def test_stale_never_overwrites_newer_local_state() -> None:
    t = DictTable()
    local = t.add(sample_conn(1, state=FW, expires=NOW + 120, status=int(Status.CONFIRMED)))
    before = conn_to_record(local, NOW, window=True)
    r = rec_of(ES, expires=NOW + 400000)
    assert apply_merge(t, r, NOW, NOW) == "stale"
    after = conn_to_record(local, NOW, window=True)
    assert after.status == before.status | (r.status & int(Status.SEEN_REPLY | Status.ASSURED))
    after.status = before.status
    assert after == before  # nothing but the sticky facts changed


def test_newer_remote_keeps_local_window_and_liberal_flag() -> None:
    t = DictTable()
    local = t.add(sample_conn(1, state=ES, expires=NOW + 10, status=int(Status.SEEN_REPLY)))
    local.tflags0 = local.tflags1 = 0x0A  # SACK_PERM | BE_LIBERAL: picked up mid-stream
    local.td_scale0 = local.td_scale1 = 0
    tw = list(local.tw)
    r = rec_of(FW, expires=NOW + 120)
    assert apply_merge(t, r, NOW, NOW) == "replaced"
    assert local.state == FW and local.expires == pytest.approx(NOW + 120)
    assert list(local.tw) == tw and (local.td_scale0, local.td_scale1) == (0, 0)
    assert local.tflags0 == 0x03 | 0x08  # the master's flags plus the local BE_LIBERAL
    assert local.status & Status.ASSURED and local.status & Status.SEEN_REPLY


def test_newer_remote_without_local_window_takes_remote_scales() -> None:
    t = DictTable()
    local = t.add(sample_conn(1, state=SS, expires=NOW + 10))
    for i in range(12):
        local.tw[i] = 0
    local.td_scale0 = 0
    assert apply_merge(t, rec_of(ES), NOW, NOW) == "replaced"
    assert local.td_scale0 == 7 and not has_window(local)


def test_entry_seen_the_other_way_round_is_replaced_by_the_masters_view() -> None:
    t = DictTable()
    c = sample_conn(1, state=SS, expires=NOW + 10)
    c.key, c.rkey = c.rkey, c.key  # this node picked it up from a reply-direction segment
    t.add(c)
    r = rec_of(ES)
    assert apply_merge(t, r, NOW, NOW) == "replaced"
    n = t.get(r.key)
    assert n is not None and n.key == r.key and n is t.get(r.rkey) and n.state == ES
    assert len(t) == 1


def test_merge_is_idempotent() -> None:
    t = DictTable()
    r = rec_of(FW)
    apply_merge(t, r, NOW, NOW)
    snap = conn_to_record(t.get(r.key), NOW, window=True)  # type: ignore[arg-type]
    assert apply_merge(t, r, NOW, NOW) == "stale"
    assert conn_to_record(t.get(r.key), NOW, window=True) == snap  # type: ignore[arg-type]


class FullTable(DictTable):
    def insert(self, conn, now=0.0):  # type: ignore[no-untyped-def]
        return False


def test_full_table_is_an_outcome() -> None:
    assert apply_merge(FullTable(), rec_of(), NOW, NOW) == "table_full"


def test_authoritative_apply_overwrites_even_backwards() -> None:
    # Replicate mode: the master's log in order is the truth (a reopen is DELETE + UPDATE,
    # but an UPDATE alone must be able to move the state "back" too).
    t = DictTable()
    local = t.add(sample_conn(1, state=TW, expires=NOW + 5))
    r = rec_of(SS, expires=NOW + 120, status=0)
    assert apply_authoritative(t, r, NOW, NOW) == "replaced"
    assert conn_to_record(local, NOW) == r and not has_window(local)
    nat = rec_of(ES)
    nat.rkey = sample_conn(2).key
    assert apply_authoritative(t, nat, NOW, NOW) == "inserted"  # new NAT binding: re-indexed
    assert t.get(r.key) is t.get(nat.rkey) and t.get(r.rkey) is None


def test_authoritative_delete() -> None:
    t = DictTable()
    c = t.add(sample_conn(1, proto=IPPROTO_UDP))
    assert apply_delete_authoritative(t, delete_record(c.rkey), NOW) == "delete_absent"
    assert apply_delete_authoritative(t, delete_record(c.key), NOW) == "deleted"
    assert apply_delete_authoritative(t, delete_record(c.key), NOW) == "delete_absent"
    assert len(t) == 0
