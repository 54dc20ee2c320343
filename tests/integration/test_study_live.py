"""A small live study in the namespace lab: real downloads, a real failover, three strategies.

``pmct study`` at the live level (pmct/study/live.py) with a few flows and short times:

* ``none`` is the control: fw-b starts empty at the failover, so under the strict ruleset
  (tcp_loose off) no session open at the failover gets another byte; agreement is 0.
* ``concurrent+resync``: fw-b tracked every packet (p = 0), so it agrees on every entry and
  every session carries on through it.
* ``kernel+conntrackd``: the kernel's conntrack on both, conntrackd FTFW over sync0; fw-b's
  external cache agrees with fw-a's kernel table, the commit at the failover keeps every
  session, and the sync link carried conntrackd's messages.

No short requests here (short_rate = 0): then the table does not change between the two
table reads, so agreement is exact. The report (CSV, markdown, PNGs) is written from the
results. Nothing asserts on time.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from pmct.study.live import LiveScenario, live_scenarios, run_live
from pmct.study.live_report import write_live
from pmct.study.spec import parse_study

pytestmark = [pytest.mark.netns, pytest.mark.slow]

SPEC = {
    "study": {
        "name": "live-test",
        "level": "live",
        "strategies": ["none", "concurrent+resync", "kernel+conntrackd"],
    },
    "live": {
        "flows": 4,
        "flow_rate": 16384,
        "iperf_mbit": 2.0,
        "short_rate": 0.0,
        "ping_interval": 0.1,
        "warmup": 1.0,
        "observe": 4.0,
    },
    "faults": {"failover_at": [4.0]},
}


def test_small_live_study(tmp_path: Path) -> None:
    spec = parse_study(SPEC)
    assert [sc.strategy for sc in live_scenarios(spec)] == list(SPEC["study"]["strategies"])
    study = run_live(spec, progress=False)
    res = {sc.strategy: study.results[sc] for sc in study.scenarios}
    for name, r in res.items():
        # 4 downloads + the iperf3 stream were open at the failover; the master held them
        assert r.sessions == 5, (name, r)
        assert r.master_entries >= 5, (name, r)
        assert r.failed == 0 or name == "none", (name, r)

    cold = res["none"]
    assert (cold.held, cold.agreeing) == (0, 0)
    assert cold.survived == 0  # the control: a cold standby keeps no session

    for name in ("concurrent+resync", "kernel+conntrackd"):
        r = res[name]
        assert r.agreeing == r.master_entries, (name, r)
        assert r.survived == r.sessions, (name, r)
    assert res["kernel+conntrackd"].sync_frames > 0  # conntrackd's FTFW messages on sync0
    assert res["kernel+conntrackd"].outage_s is not None  # ping came back through fw-b

    paths, why = write_live(study, tmp_path, command="pmct study live-test.toml")
    assert why is None, why  # matplotlib is a test extra (scripts/install.sh --test)
    names = {p.name for p in paths}
    assert {"results.csv", "summary.md", "survival_agreement.png", "sync_cost.png"} <= names
    with open(tmp_path / "results.csv") as fh:
        rows = {r["strategy"]: r for r in csv.DictReader(fh)}
    assert rows["none"]["survival"] == "0.0" and rows["kernel+conntrackd"]["survival"] == "1.0"
    assert "| kernel+conntrackd |" in (tmp_path / "summary.md").read_text()
    assert study.scenarios[0] == LiveScenario("none", failover_at=4.0)


def test_bursty_misses_live() -> None:
    """The live bursty miss model: a toggler in fw-b's namespace drops every data packet
    during bursts (an nft set flipped through libnftables). The nft counters see the
    packets dropped, the toggler ran bursts, and the standby, blind during them, still
    holds the master's entries it saw (no assertion on how many: that is the study)."""
    spec = parse_study(
        {
            **SPEC,
            "study": {"name": "live-bursty-test", "level": "live", "seed": 3,
                      "strategies": ["concurrent"]},
            "live": {**SPEC["live"], "burst_ms": 50.0},
            "faults": {"failover_at": [4.0], "miss_rate": [0.2], "miss_model": ["bursty"]},
        }
    )  # fmt: skip
    [sc] = live_scenarios(spec)
    assert (sc.miss_rate, sc.miss_model) == (0.2, "bursty")
    study = run_live(spec, progress=False)
    r = study.results[sc]
    assert r.bursts > 0 and r.burst_s > 0, r  # the toggler ran its schedule
    assert r.miss_seen > 0 and r.miss_dropped > 0, r  # packets were dropped in the bursts
    assert r.miss_measured is not None and 0 < r.miss_measured < 1
    assert r.sessions == 5 and r.master_entries >= 5, r
