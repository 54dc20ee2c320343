"""The fidelity target, run for real: pmct agrees with the running kernel on >= 99.9 % of the
packets of every public trace in shared/traces/, and of traffic generated right now between
namespaces by today's Linux stacks (scripts/gen_traffic.py).

The kernel oracle runs on each capture (bridge mode, no cache, no seeds), so a kernel whose
behaviour changed, or an engine change that breaks a rare case, fails here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pmct.fidelity import compare, default_traces, oracle_tsv, parse_oracle_tsv
from pmct.replay import replay_capture

pytestmark = [pytest.mark.oracle, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
TARGET = 0.999


def _agreement(traces: list[Path], cache: Path) -> tuple[int, int, list[str]]:
    total = agree = 0
    worst: list[str] = []
    for trace in traces:
        kernel = parse_oracle_tsv(oracle_tsv(trace, "bridge", cache=cache, seed=False).read_text())
        assert not kernel.errors, f"{trace.name}: oracle errors {kernel.errors}"
        res = compare(kernel.rows, replay_capture(trace, clock="paced").rows, trace.name)
        total += res.packets
        agree += res.agree
        if res.agree != res.packets:
            worst.append(f"{trace.name}: {res.agree}/{res.packets} first diff {res.diffs[0]}")
    return agree, total, worst


def test_every_shared_trace(tmp_path: Path) -> None:
    traces = default_traces()
    assert len(traces) >= 40, "shared/traces/ not found beside the repository"
    agree, total, worst = _agreement(traces, tmp_path)
    assert total > 100_000
    assert agree / total >= TARGET, worst


@pytest.mark.netns
def test_generated_namespace_traffic(tmp_path: Path) -> None:
    pcap = tmp_path / "lab.pcap"
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_traffic.py"), str(pcap)],
        check=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    agree, total, worst = _agreement([pcap], tmp_path / "cache")
    assert total > 1000, "the generator produced too little traffic to judge"
    assert agree / total >= TARGET, worst
