"""Real captures through the wire layer, frame by frame, against the kernel oracle's rows.

For every frame: ``ip_from_frame`` finds a datagram exactly when the oracle has a row; the
datagram ``parse_ip`` drops is one the kernel dropped before conntrack (``dropped``); a fragment
the Defragmenter holds is a ``frag`` row and the fragment that completes a datagram is the one
the oracle notes ``reassembled``. Nothing may raise.

Oracle TSVs come from tests/data/oracle/ (committed, always run) and, when present, from
$PMCT_ORACLE_TSV_DIR or /tmp/oracle/{bridge,routed}/ (every public trace; made by the
kernel_oracle.py runs of the project). Captures come from tests/data/traces/ and
$PMCT_TRACES or ../shared/traces/.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pmct.replay import iter_frames
from pmct.wire import parse_ip
from pmct.wire.defrag import Defragmenter
from pmct.wire.ipv6 import router_drop
from pmct.wire.link import ip_from_frame, repair_captured

REPO = Path(__file__).resolve().parents[3]
TRACE_DIRS = [
    REPO / "tests" / "data" / "traces",
    Path(os.environ.get("PMCT_TRACES") or REPO.parent / "shared" / "traces"),
]


def _tsv_dirs() -> list[tuple[str, Path]]:
    dirs = [("bridge", REPO / "tests" / "data" / "oracle")]
    extra = os.environ.get("PMCT_ORACLE_TSV_DIR")
    if extra:
        dirs.append(("bridge", Path(extra)))
    dirs += [(m, Path("/tmp/oracle") / m) for m in ("bridge", "routed")]
    return dirs


def _cases() -> list[tuple[str, Path, Path]]:
    cases: dict[tuple[str, str], tuple[str, Path, Path]] = {}
    for mode, d in _tsv_dirs():
        if not d.is_dir():
            continue
        for tsv in sorted(d.glob("*.tsv")):
            name = tsv.name[: -len(".tsv")]
            trace = next((t / name for t in TRACE_DIRS if (t / name).is_file()), None)
            if trace is not None and (mode, name) not in cases:
                cases[(mode, name)] = (mode, trace, tsv)
    return list(cases.values())


CASES = _cases()


def _rows(tsv: Path) -> dict[int, tuple[str, str]]:
    rows = {}
    for line in tsv.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        cells = line.split("\t")
        rows[int(cells[0])] = (cells[1], cells[8])
    return rows


def test_committed_oracle_data_is_found() -> None:
    assert sum(1 for mode, _, tsv in CASES if "tests/data/oracle" in str(tsv)) >= 5


@pytest.mark.parametrize(
    ("mode", "trace", "tsv"), CASES, ids=[f"{m}-{t.name}" for m, t, _ in CASES]
)
def test_trace_frames_match_oracle_rows(mode: str, trace: Path, tsv: Path) -> None:
    rows = _rows(tsv)
    defrag = Defragmenter()
    wrong: list[str] = []
    frames = 0
    for frame in iter_frames(trace):
        frames += 1
        row = rows.get(frame.idx)
        ip = ip_from_frame(frame.data, frame.linktype)
        if ip is None or row is None:
            if (ip is None) != (row is None):
                wrong.append(f"{frame.idx}: datagram={ip is not None} row={row}")
            continue
        state, note = row
        pkt = parse_ip(repair_captured(ip))
        drop = pkt.drop or (router_drop(pkt) if mode == "routed" else None)
        if (drop is not None) != (state == "dropped"):
            wrong.append(f"{frame.idx}: drop={drop} oracle={row}")
            continue
        if drop is not None:
            continue
        if pkt.frag is None:
            if state == "frag":
                wrong.append(f"{frame.idx}: not a fragment, oracle={row}")
            continue
        whole = defrag.push(pkt, frame.ts)
        if whole is None:
            if state != "frag":
                wrong.append(f"{frame.idx}: held, oracle={row}")
            continue
        if state == "frag" or "reassembled" not in note:
            wrong.append(f"{frame.idx}: reassembled, oracle={row}")
        again = parse_ip(whole)
        if again.drop is not None or again.frag is not None:
            wrong.append(f"{frame.idx}: reassembled datagram unusable: {again}")
    assert frames > max(rows, default=-1)
    assert wrong == []
