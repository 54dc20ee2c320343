"""The compiled engine (mypyc) and the interpreted sources give the same verdicts.

The test suite runs against whatever is importable: compiled modules when
scripts/build_accel.py built them (CI does), else the sources. This test runs the *sources* in
a subprocess next to the compiled build and compares the two, row by row, on real traces.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pmct.accel import compiled_modules
from pmct.fidelity import default_traces
from pmct.replay import format_tsv, replay_capture

REPO = Path(__file__).resolve().parents[2]
TRACES = (
    "tcp_edge_synth.pcap",
    "mix_small.pcap",
    "sctp.pcap",
    "frag_dns_v4v6.pcap",
    "ipv6_mix.pcap",
    "tcp_simopen_5whs.pcap",
    "icmp_unreach_udp.pcapng",
)

_SCRIPT = """
import sys
from pmct.replay import format_tsv, replay_capture
for path in sys.argv[1:]:
    for line in format_tsv(replay_capture(path, clock="paced")):
        print(line)
"""


def test_interpreted_sources_match_the_compiled_engine(tmp_path: Path) -> None:
    if not compiled_modules():
        pytest.skip("the engine is not compiled here (scripts/build_accel.py not run)")
    src = tmp_path / "src"
    shutil.copytree(REPO / "pmct", src / "pmct", ignore=shutil.ignore_patterns("*.so"))
    paths = [str(p) for p in default_traces() if p.name in TRACES]
    assert len(paths) == len(TRACES)
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, *paths],
        cwd=src,
        env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout.splitlines()
    here = [line for p in paths for line in format_tsv(replay_capture(p, clock="paced"))]
    probe = subprocess.run(
        [sys.executable, "-c", "import pmct.conntrack.core as c; print(c.__file__)"],
        cwd=src,
        env={"PYTHONPATH": str(src)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert probe.strip().endswith("core.py"), "the subprocess did not run the sources"
    assert len(here) > 500
    assert out == here
