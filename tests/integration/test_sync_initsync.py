"""ct_sync in the running node: init sync after a restart, the readiness gate, and sync loss.

Strict ruleset and ``tcp_loose`` off on both firewalls, so a node forwards a TCP session only if
it holds the session's entry; a node that restarted mid-session can only have that entry from
ct_sync (it saw no handshake: tests/integration/test_node_failover.py's control shows such a
node cuts the stream). So these tests measure sync, not mid-stream pickup.

* restart: fw-b (passive) restarts with an empty table while sessions run through fw-a; it asks
  for init sync; afterwards its table equals fw-a's; fw-a dies, fw-b is promoted, and every
  session that was open before the restart carries on with no byte lost.
* the same with 5 % random loss on the sync link (both directions), and more entries.
* the readiness gate: during a (throttled) init sync fw-b is not ready: ``pmct status`` shows
  percent and rate, ``pmct status --ready`` exits 1, the role file says so, ``pmct promote``
  refuses; once synced, all of them say ready.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from synclab import (
    Sessions,
    fail,
    has_sessions,
    loss_dropped,
    pmct,
    start_fw,
    status,
    sync_loss,
    sync_status,
    udp_flows,
    wait_ready,
    wait_tables_equal,
)

from pmct.lab.scenario import wait_for
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


def restart_and_fail_over(lab: Lab, sessions: Sessions, *, udp: int = 0) -> None:
    """Restart fw-b under traffic, check its init sync and table, then fail over to it."""
    sessions.wait_more(20)
    before = sync_status(lab, "fw-a")["counters"]["walks_started"]
    lab.stop("fw-b", signal.SIGTERM)  # its table is gone with the process
    sessions.wait_more(10)  # fw-a alone carries the sessions meanwhile
    if udp:
        udp_flows(lab, udp)  # entries fw-b can only learn from the walk
    start_fw(lab, "fw-b", "passive")  # returns once ready: the init sync is complete
    sb = sync_status(lab, "fw-b")
    assert sb["ready"] and sb["state"] == "SYNCED" and sb["master"] == 1
    assert sb["counters"]["initsync_requests_sent"] >= 1
    assert sb["counters"]["walks_received"] >= 1
    assert sb["counters"]["apply_inserted"] >= len(sessions.ports) + udp
    assert sync_status(lab, "fw-a")["counters"]["walks_started"] > before
    wait_tables_equal(lab, "fw-a", "fw-b")
    assert has_sessions(lab, "fw-b", sessions)

    fail(lab, "fw-a")
    p = pmct("promote", "-s", lab.socket("fw-b"))
    assert (p.returncode, p.stdout.strip()) == (0, "active"), p.stderr
    sessions.wait_more(60)  # 3 s of every session, both ways, through fw-b alone
    assert status(lab, "fw-b")["verdicts"]["accept"] > 0
    sessions.assert_intact(sessions.stop())


def test_restarted_passive_node_resyncs_and_takes_over(lab: Lab) -> None:
    start_fw(lab, "fw-a", "active")
    start_fw(lab, "fw-b", "passive")
    sessions = Sessions(lab, 6)
    restart_and_fail_over(lab, sessions)


def test_resync_and_takeover_with_5_percent_loss_on_the_sync_link(lab: Lab) -> None:
    start_fw(lab, "fw-a", "active")
    start_fw(lab, "fw-b", "passive")
    how = sync_loss(lab, 5)
    sessions = Sessions(lab, 6)
    restart_and_fail_over(lab, sessions, udp=3000)
    sb = sync_status(lab, "fw-b")
    print(
        f"5 % loss via {how}: {loss_dropped(lab) if how == 'nft' else '?'} sync datagrams "
        f"dropped; fw-b sent {sb['counters']['nack_sent']} NACKs, "
        f"{sb['counters']['gap_fallbacks']} fall-backs to init sync"
    )


def test_a_node_in_initial_sync_is_not_ready_and_refuses_promotion(lab: Lab) -> None:
    # ~900 entries at 150 entries/s: a walk of about 6 s, time to look at every signal
    start_fw(lab, "fw-a", "active", strict=False, rate=150)
    sessions = Sessions(lab, 2)
    sessions.wait_more(5)
    udp_flows(lab, 900)
    start_fw(lab, "fw-b", "passive", wait_ready=False, strict=False, rate=150)
    role_file = Path(f"{lab.run_dir}/fw-b/role")

    def syncing() -> dict[str, object] | None:
        st = status(lab, "fw-b")
        init = st["sync"]["initsync"]
        if st["sync"]["state"] == "SYNCING" and init["done"] > 0 and init["rate"] > 0:
            return dict(st)
        return None

    st = wait_for("fw-b to be in the middle of its init sync", syncing, 30, poll=0.02)
    sync = st["sync"]
    assert isinstance(sync, dict)
    assert st["ready"] is False and sync["ready"] is False
    assert 0 < sync["initsync"]["percent"] < 100 and sync["initsync"]["total"] >= 900
    assert pmct("status", "--ready", "-s", lab.socket("fw-b")).returncode == 1
    assert role_file.read_text() == "passive not-ready\n"
    text = pmct("status", "-s", lab.socket("fw-b")).stdout
    assert "NOT READY" in text and "init sync walk" in text and "entries/s" in text
    p = pmct("promote", "-s", lab.socket("fw-b"))
    assert p.returncode == 1 and "not ready" in p.stderr, (p.stdout, p.stderr)
    assert status(lab, "fw-b")["role"] == "passive"
    # the cluster manager's other way in, the role file, is gated too
    role_file.write_text("1\n")
    wait_for("the role file request to be refused", lambda: "not-ready" in role_file.read_text(), 5)
    assert status(lab, "fw-b")["role"] == "passive"

    wait_ready(lab, "fw-b")
    assert pmct("status", "--ready", "-s", lab.socket("fw-b")).returncode == 0
    assert role_file.read_text() == "passive\n"
    sb = sync_status(lab, "fw-b")
    assert sb["state"] == "SYNCED" and sb["counters"]["walks_received"] >= 1
    assert has_sessions(lab, "fw-b", sessions)
    # once ready, a hand-over is allowed: demote fw-a, promote fw-b
    assert pmct("demote", "-s", lab.socket("fw-a")).returncode == 0
    p = pmct("promote", "-s", lab.socket("fw-b"))
    assert (p.returncode, p.stdout.strip()) == (0, "active"), p.stderr
    sessions.wait_more(40)
    sessions.assert_intact(sessions.stop())
