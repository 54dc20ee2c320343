from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from pmct.cli import app

TINY = """
[study]
name = "tiny"
strategies = ["none", "concurrent", "replicate"]
[traffic.generate]
flows = 30
duration = 4.0
[faults]
miss_rate = [0.0, 0.05]
failover_at = [2.0, 3.5]
"""


def test_study_command(tmp_path: Path) -> None:
    f = tmp_path / "tiny.toml"
    f.write_text(TINY)
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["study", str(f), "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "# Study: tiny" in r.output and "| replicate |" in r.output
    assert (out / "results.csv").is_file() and (out / "summary.md").is_file()


def test_study_command_errors(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["study", str(tmp_path / "missing.toml")])
    assert r.exit_code == 2 and "cannot read" in r.output
    f = tmp_path / "bad.toml"
    f.write_text("[faults]\nmiss_rate = [2]\n")
    r = CliRunner().invoke(app, ["study", str(f)])
    assert r.exit_code == 2 and "faults.miss_rate: 2 is out of range" in r.output
