"""pmct against the running kernel: kernel_oracle.py replays small captures through the real
nf_conntrack (bridge mode, root) and pmct must give the same ctstate, dir and l4state per packet.

Unlike tests/unit/test_replay.py (which holds pmct to TSVs recorded once), these run the kernel
now, so they also catch a kernel whose behaviour moved away from the recorded files.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pmct.fidelity import compare, oracle_tsv, parse_oracle_tsv
from pmct.replay import replay_capture

pytestmark = pytest.mark.oracle

DATA = Path(__file__).resolve().parents[1] / "data"
TRACES = DATA / "traces"
GOLDEN = DATA / "oracle"

# Start with the traces the engine already gets right; the lead widens the list.
AGREED = sorted(p.name for p in TRACES.glob("*.pcap"))


@pytest.fixture(scope="module")
def kernel_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Run the real oracle once per trace (empty cache, no seeds: the kernel really runs)."""
    cache = tmp_path_factory.mktemp("oracle")
    return {n: oracle_tsv(TRACES / n, "bridge", cache=cache, seed=False) for n in AGREED}


@pytest.mark.parametrize("name", AGREED)
def test_pmct_agrees_with_the_running_kernel(name: str, kernel_runs: dict[str, Path]) -> None:
    kernel = parse_oracle_tsv(kernel_runs[name].read_text())
    assert not kernel.errors
    assert kernel.mode.startswith("bridge")
    rep = replay_capture(TRACES / name, clock="paced")
    res = compare(kernel.rows, rep.rows, name)
    assert res.diffs == [], f"{len(res.diffs)} packets differ, first: {res.diffs[:3]}"
    assert res.packets == len(kernel.rows) > 0


@pytest.mark.parametrize("name", AGREED)
def test_recorded_golden_files_still_hold(name: str, kernel_runs: dict[str, Path]) -> None:
    """The committed TSVs are what this kernel says today (verdict and entry columns)."""
    now = parse_oracle_tsv(kernel_runs[name].read_text()).rows
    then = parse_oracle_tsv((GOLDEN / f"{name}.tsv").read_text()).rows
    cols = lambda r: (r.ctstate, r.dir, r.l4state, r.status)  # noqa: E731
    assert {i: cols(r) for i, r in now.items()} == {i: cols(r) for i, r in then.items()}
