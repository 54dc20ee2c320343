"""Hypothesis: the merge rule never moves a local entry backwards and is idempotent."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pmct.conntrack.constants import Status
from pmct.serial import MASK32
from pmct.sync.merge import TCP_PROGRESS, apply_merge, remote_is_newer, status_rank
from pmct.sync.records import STICKY_STATUS, conn_to_record
from pmct.sync.sim import sample_conn
from pmct.sync.table import DictTable

NOW = 1000.0
statuses = st.sampled_from(
    [0, int(Status.CONFIRMED), int(Status.CONFIRMED | Status.SEEN_REPLY),
     int(Status.CONFIRMED | Status.SEEN_REPLY | Status.ASSURED)]
)  # fmt: skip


@st.composite
def conns(draw: st.DrawFn):  # type: ignore[no-untyped-def]
    c = sample_conn(
        7,
        state=draw(st.integers(0, 9)),
        expires=NOW + draw(st.floats(0, 1e5)),
        status=draw(statuses),
    )
    if draw(st.booleans()):
        for i in range(12):
            c.tw[i] = 0
    else:
        c.tw[0] = draw(st.integers(0, MASK32))
        c.tw[3] = draw(st.integers(0, MASK32))
    return c


def freshness(c) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    return TCP_PROGRESS[c.state], status_rank(c.status)


@given(conns(), conns(), st.booleans())
def test_stale_never_overwrites_newer(local, remote, window: bool) -> None:  # type: ignore[no-untyped-def]
    t = DictTable()
    t.add(local)
    before = conn_to_record(local, NOW, window=True)
    f_before = freshness(local)
    rec = conn_to_record(remote, NOW, window=window)
    newer = remote_is_newer(rec, NOW + rec.timeout_ms / 1000, local)
    outcome = apply_merge(t, rec, NOW, NOW)
    assert outcome == ("replaced" if newer else "stale")
    after = conn_to_record(local, NOW, window=True)
    assert freshness(local) >= f_before  # never backwards
    assert after.status & before.status & STICKY_STATUS == before.status & STICKY_STATUS
    if not newer:
        after.status = before.status
        assert after == before  # nothing but sticky facts changed
    else:
        assert (local.state, local.expires) == (remote.state, NOW + rec.timeout_ms / 1000)
    # idempotent: the same record again changes nothing more
    snap = conn_to_record(local, NOW, window=True)
    apply_merge(t, rec, NOW, NOW)
    assert conn_to_record(local, NOW, window=True) == snap
