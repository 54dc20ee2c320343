from __future__ import annotations

import copy
import csv
import importlib.util
import io
from pathlib import Path

import pytest

from pmct.errors import ConfigError
from pmct.study.report import COLUMNS, plots, rows, summary_markdown, write_all
from pmct.study.runner import Progress, StudyResult, run_study, scenarios
from pmct.study.spec import StudySpec, parse_study
from pmct.study.strategies import Scenario
from pmct.study.traffic import Traffic

from .conftest import SMALL


@pytest.fixture(scope="module")
def study(small_spec: StudySpec, small_traffic: Traffic) -> StudyResult:
    return run_study(small_spec, progress=False, clock=None, traffic=small_traffic)


def test_sweep_runs_each_canonical_scenario_once(study: StudyResult) -> None:
    # 4 strategies x 2 restarts x 2 q x 2 models x 2 p requested ...
    assert len(study.requested) == 64 == len(scenarios(study.spec))
    # ... none: 1; concurrent: (p=0, 0.05 random, 0.05 bursty) x 2 restarts = 6;
    # concurrent+resync: 3 x 2 q x 2 restarts = 12; replicate: 2 q x 2 restarts = 4
    assert len(study.runs) == 23
    assert (
        study.result(Scenario("replicate", 0.05, "bursty", 0.1))
        is study.runs[Scenario("replicate", 0.0, "random", 0.1)]
    )


def test_rows_and_csv(study: StudyResult, tmp_path: Path) -> None:
    table = rows(study)
    assert len(table) == 64 * 2  # two failover points each
    assert all(tuple(r) == COLUMNS for r in table)
    _paths, why = write_all(study, tmp_path, command="pmct study x.toml")
    with open(tmp_path / "results.csv") as f:
        back = list(csv.DictReader(f))
    assert len(back) == len(table) and back[0]["strategy"] == "none"
    none = [r for r in back if r["strategy"] == "none"]
    assert {r["agreement"] for r in none} == {"0.0"}
    assert all(r["cpu_master_us_per_pkt"] == "0.0" for r in back)  # no clock in the test
    with open(tmp_path / "recovery.csv") as f:
        rec = list(csv.DictReader(f))
    assert rec and {r["strategy"] for r in rec} == {"concurrent", "concurrent+resync", "replicate"}
    md = (tmp_path / "summary.md").read_text()
    assert "pmct study x.toml" in md and md == summary_markdown(study, command="pmct study x.toml")
    assert (why is None) == (importlib.util.find_spec("matplotlib") is not None)


def test_summary_tables(study: StudyResult) -> None:
    md = summary_markdown(study)
    assert "## Failover (no restart)" in md and "## Standby restart" in md
    assert "| none | — | — | 0.0 % | 0.0 % (0/" in md
    assert "| replicate | — | 0 % | 100.0 % | 100.0 % (" in md
    # one line per canonical scenario without a restart (none, 3 concurrent, 6 resync, 2 rep)
    failover = md.split("## Standby restart")[0]
    rows_and_header = sum(line.startswith("| ") for line in failover.splitlines())
    assert rows_and_header == 1 + 12


def test_plots(study: StudyResult, tmp_path: Path) -> None:
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib is not installed (optional extra pmct[study])")
    written = plots(study, tmp_path)
    assert [p.name for p in written] == [
        "survival_vs_miss.png", "agreement_vs_miss.png", "sync_cost.png", "recovery.png",
    ]  # fmt: skip
    for p in written:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_times_outside_the_traffic(small_traffic: Traffic) -> None:
    data = copy.deepcopy(SMALL)
    data["faults"]["failover_at"] = [1.0, 500.0]
    with pytest.raises(ConfigError, match="failover_at: 500 s is outside"):
        run_study(parse_study(data), progress=False, traffic=small_traffic)


def test_progress_bar_lines() -> None:
    out = io.StringIO()
    bar = Progress(2, out)
    bar.step("a")
    bar.step("b")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[" + "#" * 15 + "." * 15 + "] 1/2") and lines[0].endswith("a")
    assert lines[1].startswith("[" + "#" * 30 + "] 2/2")
