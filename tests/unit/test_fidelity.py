"""pmct.fidelity without root: oracle TSV parsing, the cache and seeds, comparison, the report."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pmct import fidelity
from pmct.fidelity import (
    TraceResult,
    compare,
    oracle_tsv,
    packet_summary,
    parse_oracle_tsv,
    render_report,
    timeout_agrees,
    trace_result,
)
from pmct.replay import Row, iter_frames

DATA = Path(__file__).resolve().parents[1] / "data"
FIN = DATA / "traces" / "tcp_fin_orig.pcap"
FIN_TSV = DATA / "oracle" / "tcp_fin_orig.pcap.tsv"


def test_parse_oracle_tsv() -> None:
    run = parse_oracle_tsv(FIN_TSV.read_text())
    assert run.trace == "tcp_fin_orig.pcap"
    assert run.mode.startswith("bridge")
    assert run.kernel
    assert run.frames == 10
    assert sorted(run.rows) == list(range(10))
    assert run.rows[0] == Row(0, "new", "original", "SYN_SENT", "120", "-", "-")
    assert run.rows[9].l4state == "TIME_WAIT"
    assert len(run.ct_lines) == 1 and run.ct_lines[0].startswith("tcp      6 ")
    assert not run.errors


def _row(idx: int, *cols: str) -> Row:
    c = [*cols, "-", "-", "-", "-", "-", "-"]
    return Row(idx, c[0], c[1], c[2], c[3], c[4], "-")


def test_compare_primary_and_secondary_columns() -> None:
    kernel = {
        0: _row(0, "new", "original", "SYN_SENT", "120", "-"),
        1: _row(1, "established", "reply", "SYN_RECV", "60", "SEEN_REPLY"),
        2: _row(2, "invalid"),
        4: _row(4, "new", "original", "-", "30"),
    }
    mine = [
        _row(0, "new", "original", "SYN_SENT", "60", "-"),  # timeout differs only
        _row(1, "established", "reply", "ESTABLISHED", "60", "SEEN_REPLY"),  # l4state differs
        _row(2, "invalid"),
        _row(3, "new", "original", "-", "30"),  # kernel has no row
    ]
    res = compare(kernel, mine, "t")
    assert res.packets == 5
    assert res.agree == 2
    assert [d[0] for d in res.diffs] == [1, 3, 4]
    assert res.diffs[1][1] is None and res.diffs[2][2] is None
    assert res.timeout_agree == 1 and res.status_agree == 2
    assert res.secondary[("timeout", "120", "60")] == 1


def test_timeouts_agree_within_a_second_of_rounding() -> None:
    assert timeout_agrees("120", "120")
    assert timeout_agrees("120", "119") and timeout_agrees("118", "119")
    assert not timeout_agrees("120", "118")
    assert not timeout_agrees("300", "432000")
    assert timeout_agrees("-", "-") and not timeout_agrees("-", "30")


def test_cache_is_keyed_by_content_and_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fidelity, "SEED_ROOT", tmp_path / "seeds")
    seeds = tmp_path / "seeds" / "bridge"
    seeds.mkdir(parents=True)
    cache = tmp_path / "cache"
    shutil.copy(FIN_TSV, seeds / FIN.name)  # wrong name: not a seed
    monkeypatch.setattr(fidelity, "find_kernel_oracle", lambda: None)
    with pytest.raises(RuntimeError, match="oracle not found"):
        oracle_tsv(FIN, "bridge", cache=cache)
    shutil.copy(FIN_TSV, seeds / f"{FIN.name}.tsv")
    got = oracle_tsv(FIN, "bridge", cache=cache)
    assert got.parent == cache and got.read_text() == FIN_TSV.read_text()
    assert "-bridge" in got.name
    (seeds / f"{FIN.name}.tsv").unlink()
    assert oracle_tsv(FIN, "bridge", cache=cache) == got  # served from the cache now
    with pytest.raises(RuntimeError):  # a bridge result is never served for routed
        oracle_tsv(FIN, "routed", cache=cache)


def test_a_seed_for_another_file_of_the_same_name_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fidelity, "SEED_ROOT", tmp_path / "seeds")
    monkeypatch.setattr(fidelity, "find_kernel_oracle", lambda: None)
    (tmp_path / "seeds" / "bridge").mkdir(parents=True)
    text = FIN_TSV.read_text().replace("# frames=10 ", "# frames=11 ")
    (tmp_path / "seeds" / "bridge" / f"{FIN.name}.tsv").write_text(text)
    with pytest.raises(RuntimeError):
        oracle_tsv(FIN, "bridge", cache=tmp_path / "cache")


def test_packet_summary_is_tcpdump_like() -> None:
    frames = list(iter_frames(FIN))
    s = packet_summary(frames[0])
    assert s.startswith("TCP 127.0.0.1.55920 > 127.0.0.1.80 [S] seq=")
    assert packet_summary(frames[0]._replace(data=b"\x00" * 14)) == "no IP datagram"


def test_trace_result_and_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setattr(fidelity, "SEED_ROOT", tmp_path / "seeds")
    (tmp_path / "seeds" / "bridge").mkdir(parents=True)
    shutil.copy(FIN_TSV, tmp_path / "seeds" / "bridge" / f"{FIN.name}.tsv")
    res = trace_result(FIN, "bridge", cache=cache)
    assert res.packets == 10
    assert res.kernel
    fake = TraceResult(
        "fake.pcap",
        packets=2,
        agree=1,
        timeout_agree=1,
        status_agree=1,
        diffs=[(5, _row(5, "new", "original"), _row(5, "invalid"))],
        summaries={5: "UDP a.1 > b.2 len=0"},
    )
    md = render_report([res, fake], mode="bridge", clock="paced", ftp_helper=False)
    assert md.startswith("# Fidelity: pmct against Linux nf_conntrack\n")
    assert "**bridge** mode" in md and "Bridge mode is the reference because" in md
    assert f"| {FIN.name} | 10 |" in md
    assert "| **all** | **12** |" in md
    assert "### fake.pcap (1)" in md
    assert "| 5 | new original - - - | invalid - - - - | UDP a.1 > b.2 len=0 |" in md
