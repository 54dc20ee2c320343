"""Split brain: both nodes active at once, resolved by MASTER_ANNOUNCE (docs/protocol.md §6).

fw-a is active (master), fw-b passive; a TCP session runs through fw-a. The sync link is cut
(everything arriving on sync0 is dropped on both sides) and fw-b is promoted too, as a cluster
manager that lost sight of fw-a would do: for a while both forward (on a hub, every packet
twice; TCP does not mind). When the link comes back, each side hears the other's announce and
the rule decides: the larger claim ``(term, node id)`` stays master, the other demotes itself
(ct_sync role and forwarding both) and follows the winner. fw-b's promotion took a term above
everything it had heard, so fw-b must win. Exactly one node stays active, the session never
breaks, and no table is lost: both still hold every connection, and they hold the same table.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from synclab import (
    NODE_ID,
    Sessions,
    cut_sync,
    has_sessions,
    pmct,
    restore_sync,
    start_fw,
    status,
    sync_status,
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


def roles(lab: Lab) -> tuple[str, str]:
    return status(lab, "fw-a")["role"], status(lab, "fw-b")["role"]


def test_split_brain_leaves_exactly_one_active_node_by_the_announce_rule(lab: Lab) -> None:
    start_fw(lab, "fw-a", "active")
    start_fw(lab, "fw-b", "passive")
    sessions = Sessions(lab, 3)
    sessions.wait_more(20)

    cut_sync(lab)
    wait_for(
        "fw-b to notice the master is silent",
        lambda: not sync_status(lab, "fw-b")["master_alive"],
        30,
    )
    p = pmct("promote", "-s", lab.socket("fw-b"))  # ready: its table was synced before the cut
    assert (p.returncode, p.stdout.strip()) == (0, "active"), p.stderr
    assert roles(lab) == ("active", "active")  # split brain
    sa, sb = sync_status(lab, "fw-a"), sync_status(lab, "fw-b")
    assert sa["role"] == sb["role"] == "master"
    claims = {"fw-a": (sa["term"], NODE_ID["fw-a"]), "fw-b": (sb["term"], NODE_ID["fw-b"])}
    winner = max(claims, key=lambda fw: claims[fw])
    loser = "fw-a" if winner == "fw-b" else "fw-b"
    assert winner == "fw-b"  # promoted later, with a term above everything it had heard
    sessions.wait_more(20)  # both forward meanwhile; the sessions carry on

    restore_sync(lab)
    wait_for("one node to demote itself", lambda: roles(lab).count("active") == 1, 30)
    sessions.wait_more(40)  # ... and it stays that way
    assert status(lab, winner)["role"] == "active" and status(lab, loser)["role"] == "passive"
    sw, sl = sync_status(lab, winner), sync_status(lab, loser)
    assert sw["role"] == "master" and sw["term"] == claims[winner][0]
    assert sl["role"] == "slave" and sl["master"] == NODE_ID[winner] and sl["ready"]
    assert sl["counters"]["split_brain_demotions"] == 1
    assert sw["counters"]["split_brain_demotions"] == 0
    assert Path(f"{lab.run_dir}/{loser}/role").read_text() == "passive\n"
    assert status(lab, loser)["role_changes"] == 1
    # no table lost: both still hold every session, and the same table
    assert has_sessions(lab, "fw-a", sessions) and has_sessions(lab, "fw-b", sessions)
    wait_tables_equal(lab, "fw-a", "fw-b")
    sessions.assert_intact(sessions.stop())
