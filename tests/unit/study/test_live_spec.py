"""The live level's pure parts: the [live] section, canonical scenarios, table parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from pmct.errors import ConfigError
from pmct.study.live import (
    LiveScenario,
    agreement,
    live_scenarios,
    parse_conntrack_lines,
)
from pmct.study.live_spec import LiveSpec
from pmct.study.spec import load_study, parse_study

REPO = Path(__file__).resolve().parents[3]


def live(**over: object) -> dict[str, object]:
    d: dict[str, object] = {
        "study": {"level": "live", "strategies": ["none", "concurrent", "kernel+conntrackd"]},
        "faults": {"failover_at": [10.0]},
    }
    for k, v in over.items():
        sec, key = k.split("__")
        d.setdefault(sec, {})[key] = v  # type: ignore[index]
    return d


def test_level_and_live_section() -> None:
    spec = parse_study(live(live__flows=7))
    assert spec.level == "live" and spec.live == LiveSpec(flows=7)
    sim = parse_study({})
    assert sim.level == "simulation" and sim.live is None


def test_kernel_conntrackd_is_a_live_strategy_only() -> None:
    with pytest.raises(ConfigError, match="kernel\\+conntrackd"):
        parse_study({"study": {"strategies": ["kernel+conntrackd"]}})
    assert parse_study({"study": {"strategies": ["kernel+conntrackd"]}}, level="live").live


@pytest.mark.parametrize(
    ("over", "msg"),
    [
        ({"live__flowz": 1}, "unknown key"),
        ({"live__burst_ms": 0.5}, "burst_ms"),
        ({"faults__sync_loss_model": "bursty"}, 'only "random"'),
        ({"faults__failover_at": [2.0]}, "warm-up"),
        ({"faults__restart_at": [9.5]}, "must be back"),
        ({"live__flows": 0, "live__iperf_mbit": 0.0}, "no TCP session"),
    ],
)
def test_bad_live_studies_are_rejected(over: dict[str, object], msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        parse_study(live(**over))


def test_the_committed_live_study_parses() -> None:
    spec = load_study(REPO / "configs" / "studies" / "live.toml")
    assert spec.level == "live" and "kernel+conntrackd" in spec.strategies
    scs = live_scenarios(spec)
    assert len(scs) == len(set(scs))
    # faults a strategy cannot feel are folded away
    assert all(sc.miss_rate == 0 for sc in scs if sc.strategy in ("replicate", "none"))
    assert [sc for sc in scs if sc.strategy == "none"] == [LiveScenario("none", failover_at=14.0)]


def test_bursty_misses_are_a_live_scenario_dimension() -> None:
    spec = parse_study(
        live(faults__miss_rate=[0.0, 0.05], faults__miss_model=["random", "bursty"],
             live__burst_ms=40.0)
    )  # fmt: skip
    assert spec.live is not None and spec.live.burst_ms == 40.0
    scs = [sc for sc in live_scenarios(spec) if sc.strategy == "concurrent"]
    # p = 0 folds the model away: three scenarios, not four
    assert [(sc.miss_rate, sc.miss_model) for sc in scs] == [
        (0.0, "random"), (0.05, "random"), (0.05, "bursty")
    ]  # fmt: skip
    assert "p=0.05 bursty" in scs[2].label


def test_canonical() -> None:
    sc = LiveScenario("kernel+conntrackd", 0.05, 0.05, 8.0, 16.0)
    assert sc.canonical() == LiveScenario("kernel+conntrackd", 0.0, 0.05, 8.0, 16.0)
    assert LiveScenario("concurrent", 0.01, 0.05).canonical().sync_loss == 0.0


KERNEL = """\
tcp      6 431999 ESTABLISHED src=198.18.1.2 dst=198.18.2.2 sport=40000 dport=8080 \
src=198.18.2.2 dst=198.18.1.2 sport=8080 dport=40000 [ASSURED] mark=0 use=1
tcp      6 118 TIME_WAIT src=198.18.1.2 dst=198.18.2.2 sport=40001 dport=8080 \
src=198.18.2.2 dst=198.18.1.2 sport=8080 dport=40001 [ASSURED] mark=0 use=1
icmp     1 29 src=198.18.1.2 dst=198.18.2.2 type=8 code=0 id=7 src=198.18.2.2 \
dst=198.18.1.2 type=0 code=0 id=7 mark=0 use=1
udp      17 29 src=198.19.0.1 dst=198.19.0.2 sport=3781 dport=3781 [UNREPLIED] \
src=198.19.0.2 dst=198.19.0.1 sport=3781 dport=3781 mark=0 use=1
"""
# conntrackd -e prints no timeout and adds the age
CACHE = """\
tcp      6 ESTABLISHED src=198.18.1.2 dst=198.18.2.2 sport=40000 dport=8080 \
src=198.18.2.2 dst=198.18.1.2 sport=8080 dport=40000 [ASSURED] mark=0 [active since 5s]
tcp      6 SYN_SENT src=198.18.1.2 dst=198.18.2.2 sport=40001 dport=8080 [UNREPLIED] \
src=198.18.2.2 dst=198.18.1.2 sport=8080 dport=40001 mark=0 [active since 5s]
"""


def test_conntrack_lines_and_agreement() -> None:
    m = parse_conntrack_lines(KERNEL)
    assert len(m) == 3  # the sync link's own entry is not traffic
    key = ("tcp", "src=198.18.1.2", "dst=198.18.2.2", "sport=40000", "dport=8080")
    assert m[key] == ("ESTABLISHED", True, True)
    s = parse_conntrack_lines(CACHE)
    assert s[key] == m[key]
    assert s[("tcp", "src=198.18.1.2", "dst=198.18.2.2", "sport=40001", "dport=8080")] == (
        "SYN_SENT",
        False,
        False,
    )
    assert agreement(m, s) == (3, 2, 1)


def test_pooled_runs_and_the_report(tmp_path: Path) -> None:
    from pmct.study.live import LiveResult, LiveStudy, pooled
    from pmct.study.live_report import write_live

    spec = parse_study(live(faults__restart_at=["never", 5.0]))
    a = LiveScenario("concurrent", failover_at=10.0)
    b = LiveScenario("kernel+conntrackd", restart_at=5.0, failover_at=10.0)

    def run(sc: LiveScenario, survived: int, rec: float | None) -> LiveResult:
        r = LiveResult(sc, master_entries=10, held=10, agreeing=9, sessions=5, survived=survived)
        r.seconds, r.data_packets, r.sync_bytes, r.outage_s = 2.0, 1000, 400, 0.5
        if sc.restart_at is not None:
            r.restart_before, r.recover_s = 1.0, rec
            r.recovered = int(rec is not None)
            r.recovery = [(0.0, 0.0), (1.0, 1.0)]
        return r

    runs = {a: [run(a, 5, None), run(a, 3, None)], b: [run(b, 5, 1.5), run(b, 4, None)]}
    p = pooled(runs[b])
    assert (p.sessions, p.survived, p.master_entries, p.agreeing) == (10, 9, 20, 18)
    assert p.recover_s is None and p.recovered == 1 and p.runs == 2
    study = LiveStudy(spec, [a, b], {sc: pooled(rs) for sc, rs in runs.items()}, 1.0, "", runs)
    paths, why = write_live(study, tmp_path, command="pmct study x.toml")
    text = (tmp_path / "summary.md").read_text()
    assert "| concurrent | 0 % | — | — | 90.0 % (18/20) | 80.0 % (8/10) |" in text
    assert "in 1 of 2 runs only" in text
    assert len((tmp_path / "results.csv").read_text().splitlines()) == 1 + 4  # a row per run
    if why is None:  # matplotlib present (scripts/install.sh --test installs it)
        # no sync_cost.png: the only scenario without a restart has no sync
        assert {"survival_agreement.png", "recovery.png"} <= {x.name for x in paths}
