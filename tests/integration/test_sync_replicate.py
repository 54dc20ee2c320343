"""``replicate`` mode: the standby's table comes only from the master's ct_sync stream.

fw-b runs ``mode = "replicate"``: as a passive node it never runs the engine on traffic (its
ctstate counters stay at zero while it drops every queued packet), and everything in its table
is what fw-a streamed: each NEW/UPDATE/DESTROY of fw-a's engine, and the init sync at its start.
Strict ruleset, ``tcp_loose`` off: after fw-a dies and fw-b is promoted, the sessions survive
only because the streamed entries are right. A session closed before the failover shows that
state changes are streamed too (both tables go to TIME_WAIT for it).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from synclab import (
    Sessions,
    fail,
    has_sessions,
    pmct,
    start_fw,
    status,
    sync_status,
    wait_tables_equal,
)

from pmct.lab.scenario import conntrack_entries, wait_for
from pmct.lab.topology import Lab

pytestmark = [pytest.mark.netns, pytest.mark.slow]


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab()
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


@pytest.mark.parametrize("transport", ["unicast", "multicast"])
def test_standby_fed_only_by_sync_survives_a_failover(lab: Lab, transport: str) -> None:
    start_fw(lab, "fw-a", "active", mode="replicate", transport=transport)
    start_fw(lab, "fw-b", "passive", mode="replicate", transport=transport)
    sb = sync_status(lab, "fw-b")
    assert sb["tracks_wire"] is False and sb["mode"] == "replicate"
    sessions = Sessions(lab, 4)
    closing = Sessions(lab, 1, base=6100)
    sessions.wait_more(20)
    closing.wait_more(20)
    wait_for("fw-b to hold every session", lambda: has_sessions(lab, "fw-b", sessions), 30)

    # a state change is streamed: an orderly close puts the entry in TIME_WAIT on both
    closing.assert_intact(closing.stop())

    def closed_on_both() -> bool:
        states = {
            fw: {e["state"] for e in conntrack_entries(lab, fw) if e["orig"][3] == 6100}
            for fw in ("fw-a", "fw-b")
        }
        return states["fw-a"] == states["fw-b"] == {"TIME_WAIT"}

    wait_for("the closed session in TIME_WAIT on both nodes", closed_on_both, 30)
    wait_tables_equal(lab, "fw-a", "fw-b")

    st_b = status(lab, "fw-b")
    assert st_b["packets"]["total"] > 0  # it sees the traffic ...
    assert sum(st_b["ctstates"].values()) == 0  # ... and never tracks it
    assert st_b["verdicts"]["drop"] == st_b["packets"]["total"]
    sb = st_b["sync"]
    assert sb["counters"]["apply_inserted"] >= len(sessions.ports) + 1
    assert sb["counters"]["rx_records"] > sb["counters"]["apply_inserted"]  # updates too
    assert sync_status(lab, "fw-a")["counters"]["tx_records"] > 0

    fail(lab, "fw-a")
    p = pmct("promote", "-s", lab.socket("fw-b"))
    assert (p.returncode, p.stdout.strip()) == (0, "active"), p.stderr
    assert sync_status(lab, "fw-b")["tracks_wire"] is True  # a master tracks the wire
    sessions.wait_more(60)
    st_b = status(lab, "fw-b")
    assert st_b["verdicts"]["accept"] > 0 and st_b["ctstates"]["established"] > 0
    assert st_b["ctstates"]["invalid"] == 0
    sessions.assert_intact(sessions.stop())
