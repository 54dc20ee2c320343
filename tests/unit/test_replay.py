"""pmct.replay: capture reading, verdict rows against the kernel's (golden TSVs), conntrack -L.

The golden files in tests/data/oracle/ are kernel_oracle.py output (bridge mode) for the captures
in tests/data/traces/; tests/data/README.md says how they were made.
"""

from __future__ import annotations

import gzip
import re
import socket
from pathlib import Path

import dpkt
import pytest
from typer.testing import CliRunner

from pmct.cli import app
from pmct.conntrack.conn import Conn
from pmct.conntrack.constants import CtState, Status, TcpState
from pmct.conntrack.keys import make_key
from pmct.fidelity import parse_oracle_tsv
from pmct.replay import (
    COLUMNS,
    CaptureError,
    Frame,
    format_conntrack_line,
    iter_frames,
    replay_capture,
    replay_frames,
    seconds_left,
    status_text,
    verdict_row,
)

DATA = Path(__file__).resolve().parents[1] / "data"
TRACES = DATA / "traces"
GOLDEN = DATA / "oracle"
FIN = TRACES / "tcp_fin_orig.pcap"

# Traces whose every row pmct reproduces on ctstate, dir and l4state (bridge mode). The lead
# widens this list as the engine grows; tests/oracle/ runs the real kernel on the same files.
GOLDEN_TRACES = sorted(p.name for p in TRACES.glob("*.pcap"))


def _golden(name: str) -> dict[int, tuple[str, ...]]:
    run = parse_oracle_tsv((GOLDEN / f"{name}.tsv").read_text())
    return {i: (r.ctstate, r.dir, r.l4state, r.timeout, r.status) for i, r in run.rows.items()}


# ---------------------------------------------------------------------------------- reading


def _frames(path: Path) -> list[tuple[int, int, bytes]]:
    return [(f.idx, f.linktype, f.data) for f in iter_frames(path)]


def test_pcap_has_every_frame_in_order() -> None:
    frames = list(iter_frames(FIN))
    assert [f.idx for f in frames] == list(range(10))
    assert {f.linktype for f in frames} == {1}
    raw = list(dpkt.pcap.Reader(open(FIN, "rb")))  # noqa: SIM115
    assert [f.data for f in frames] == [buf for _, buf in raw]
    assert [f.ts for f in frames] == [float(ts) for ts, _ in raw]


def test_gzip_is_detected_by_magic_not_name(tmp_path: Path) -> None:
    gz = tmp_path / "trace.bin"
    gz.write_bytes(gzip.compress(FIN.read_bytes()))
    assert _frames(gz) == _frames(FIN)


def test_pcapng_and_nanosecond_pcap_read_the_same(tmp_path: Path) -> None:
    frames = list(iter_frames(FIN))
    ng = tmp_path / "t.pcapng"
    with open(ng, "wb") as f:
        w = dpkt.pcapng.Writer(f, linktype=1)
        for fr in frames:
            w.writepkt(fr.data, ts=fr.ts)
    nano = tmp_path / "t_ns.pcap.gz"
    with gzip.open(nano, "wb") as f:
        w2 = dpkt.pcap.Writer(f, linktype=1, nano=True)
        for fr in frames:
            w2.writepkt(fr.data, ts=fr.ts)
    for other in (ng, nano):
        got = list(iter_frames(other))
        assert [(f.idx, f.linktype, f.data) for f in got] == _frames(FIN)
        assert all(abs(a.ts - b.ts) < 1e-5 for a, b in zip(got, frames, strict=True))


def test_a_capture_cut_off_mid_record_ends_cleanly(tmp_path: Path) -> None:
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(FIN.read_bytes()[:6000])
    gz = tmp_path / "cut.pcap.gz"
    gz.write_bytes(gzip.compress(FIN.read_bytes())[:-40])
    full = _frames(FIN)
    for short in (_frames(cut), _frames(gz)):
        # whole records as they were; the cut one (if dpkt returns it) is a prefix
        n = len(short)
        assert 0 < n <= len(full)
        assert short[:-1] == full[: n - 1]
        idx, lt, data = short[-1]
        assert (idx, lt) == full[n - 1][:2] and full[n - 1][2].startswith(data)


@pytest.mark.parametrize(
    "content",
    [b"", b"\xd4\xc3\xb2\xa1\x02", b"not a capture at all, really", b"\x0a\x0d\x0d\x0a\x00"],
)
def test_a_file_that_is_no_capture_is_a_capture_error(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(content)
    with pytest.raises(CaptureError):
        list(iter_frames(bad))
    gz = tmp_path / "bad.pcap.gz"
    gz.write_bytes(gzip.compress(content)[:12])
    with pytest.raises(CaptureError):
        list(iter_frames(gz))


def test_non_ip_frames_count_but_get_no_row(tmp_path: Path) -> None:
    frames = list(iter_frames(FIN))
    arp = dpkt.ethernet.Ethernet(
        dst=b"\xff" * 6, src=b"\x02" * 6, type=dpkt.ethernet.ETH_TYPE_ARP, data=bytes(28)
    )
    mixed = [Frame(0, frames[0].ts, 1, bytes(arp))]
    mixed += [Frame(i + 1, f.ts, 1, f.data) for i, f in enumerate(frames)]
    rep = replay_frames(_engine(), mixed)
    assert rep.frames == 11
    assert [r.idx for r in rep.rows] == list(range(1, 11))
    plain = replay_capture(FIN)
    assert [r.cells()[1:] for r in rep.rows] == [r.cells()[1:] for r in plain.rows]


def test_link_type_is_honoured(tmp_path: Path) -> None:
    """The same datagrams in a raw-IP capture (LINKTYPE_RAW = 101) give the same rows."""
    frames = list(iter_frames(FIN))
    raw = tmp_path / "raw.pcap"
    with open(raw, "wb") as f:
        w = dpkt.pcap.Writer(f, linktype=101)
        for fr in frames:
            w.writepkt(bytes(dpkt.ethernet.Ethernet(fr.data).data), ts=fr.ts)
    assert {fr.linktype for fr in iter_frames(raw)} == {101}
    a, b = replay_capture(FIN), replay_capture(raw)
    assert [r.cells() for r in a.rows] == [r.cells() for r in b.rows]


def _engine():  # type: ignore[no-untyped-def]
    from pmct.conntrack.core import Engine

    return Engine()


# ---------------------------------------------------------------------------------- rows


@pytest.mark.parametrize("name", GOLDEN_TRACES)
def test_rows_match_the_kernel(name: str) -> None:
    """ctstate, dir and l4state of every packet equal the kernel's (paced clock, as the oracle)."""
    kernel = _golden(name)
    rep = replay_capture(TRACES / name, clock="paced")
    mine = {r.idx: (r.ctstate, r.dir, r.l4state) for r in rep.rows}
    assert mine == {i: k[:3] for i, k in kernel.items()}


def test_tcp_lifecycle_rows_exactly() -> None:
    """Full rows, timeout and status included, for the FIN-close trace (oracle columns)."""
    kernel = _golden("tcp_fin_orig.pcap")
    rep = replay_capture(FIN, clock="paced")
    assert {r.idx: (r.ctstate, r.dir, r.l4state, r.timeout, r.status) for r in rep.rows} == kernel


def test_columns_are_the_oracles() -> None:
    assert COLUMNS == ("idx", "ctstate", "dir", "l4state", "timeout", "status", "note")


def _conn(proto: int, src: str, dst: str, sport: int = 0, dport: int = 0, **kw: object) -> Conn:
    fam = socket.AF_INET6 if ":" in src else socket.AF_INET
    s, d = socket.inet_pton(fam, src), socket.inet_pton(fam, dst)
    rsport, rdport = int(kw.pop("rsport", dport)), int(kw.pop("rdport", sport))  # type: ignore[call-overload]
    c = Conn(
        1,
        make_key(proto, s, d, sport, dport),
        make_key(proto, d, s, rsport, rdport),
        6 if fam == socket.AF_INET6 else 4,
        proto,
    )
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def test_invalid_and_untracked_rows_have_no_entry_columns() -> None:
    c = _conn(6, "192.0.2.1", "192.0.2.2", 1, 2, state=3, status=0b1110, expires=100.0)
    for st in (CtState.INVALID, CtState.UNTRACKED, CtState.HELD, CtState.DROPPED):
        r = verdict_row(7, (int(st), -1, None), 0.0, "why")
        assert r.cells()[2:] == ("-", "-", "-", "-", "why")
    r = verdict_row(7, (int(CtState.NEW), 0, c), 40.0, None)
    assert r.cells() == ("7", "new", "original", "ESTABLISHED", "60", "SEEN_REPLY,ASSURED", "-")


def test_a_packet_that_deleted_its_entry_says_entry_gone() -> None:
    c = _conn(6, "192.0.2.1", "192.0.2.2", 1, 2, state=8, status=int(Status.DYING | 8))
    r = verdict_row(3, (int(CtState.ESTABLISHED), 1, c), 0.0, None)
    assert r.cells() == ("3", "established", "reply", "-", "-", "-", "entry-gone")


def test_status_text_leaves_out_confirmed() -> None:
    assert status_text(0) == "-"
    assert status_text(int(Status.CONFIRMED)) == "-"
    assert status_text(int(Status.CONFIRMED | Status.SEEN_REPLY | Status.ASSURED)) == (
        "SEEN_REPLY,ASSURED"
    )
    assert status_text(int(Status.EXPECTED | Status.HELPER)) == "EXPECTED,HELPER"


def test_seconds_left_survives_float_noise() -> None:
    now = 1_600_000_000.123456
    c = _conn(17, "192.0.2.1", "192.0.2.2", 1, 2, expires=now + 120.0)
    assert seconds_left(c, now) == 120
    assert seconds_left(c, now + 0.5) == 119
    assert seconds_left(c, now + 500) == 0


# ---------------------------------------------------------------------------------- conntrack -L

# Lines printed by `conntrack -L` on this kernel (kernel_oracle.py `# ct:` lines, `id=` cut).
KERNEL_LINES = {
    "tcp6": "tcp      6 119 TIME_WAIT src=2001:470:1f0b:16b0:20c:29ff:fe7c:a4cb "
    "dst=2001:470:1f0b:16b0::a26:53 sport=57089 dport=53 src=2001:470:1f0b:16b0::a26:53 "
    "dst=2001:470:1f0b:16b0:20c:29ff:fe7c:a4cb sport=53 dport=57089 [ASSURED] mark=0 use=1",
    "udp": "udp      17 29 src=0.0.0.0 dst=255.255.255.255 sport=68 dport=67 [UNREPLIED] "
    "src=255.255.255.255 dst=0.0.0.0 sport=67 dport=68 mark=0 use=1",
    "icmp": "icmp     1 29 src=172.16.133.2 dst=172.217.11.78 type=8 code=0 id=1226 "
    "src=172.217.11.78 dst=172.16.133.2 type=0 code=0 id=1226 mark=0 use=1",
    "icmpv6": "icmpv6   58 29 src=3ffe:507:0:1:200:86ff:fe05:80da "
    "dst=3ffe:507:0:1:260:97ff:fe07:69ea type=128 code=0 id=31520 "
    "src=3ffe:507:0:1:260:97ff:fe07:69ea dst=3ffe:507:0:1:200:86ff:fe05:80da type=129 code=0 "
    "id=31520 mark=0 use=1",
    "gre": "gre      47 179 src=172.27.1.66 dst=66.59.109.137 srckey=0x0 dstkey=0x0 "
    "src=66.59.109.137 dst=172.27.1.66 srckey=0x0 dstkey=0x0 [ASSURED] mark=0 use=1",
    "unknown": "unknown  2 599 src=10.0.2.7 dst=224.0.0.22 [UNREPLIED] src=224.0.0.22 "
    "dst=10.0.2.7 mark=0 use=1",
    "sctp": "sctp     132 9 CLOSED src=155.230.24.155 dst=222.96.156.151 sport=32838 dport=80 "
    "[UNREPLIED] src=222.96.156.151 dst=155.230.24.155 sport=80 dport=32838 mark=0 use=1",
    "ftp": "tcp      6 431999 ESTABLISHED src=192.168.1.212 dst=90.130.70.73 sport=50694 "
    "dport=21 src=90.130.70.73 dst=192.168.1.212 sport=21 dport=50694 [ASSURED] mark=0 "
    "helper=ftp use=3",
}

_SR, _AS = int(Status.SEEN_REPLY), int(Status.ASSURED)
CONNS: dict[str, tuple[Conn, int, dict[str, int]]] = {
    "tcp6": (
        _conn(
            6,
            "2001:470:1f0b:16b0:20c:29ff:fe7c:a4cb",
            "2001:470:1f0b:16b0::a26:53",
            57089,
            53,
            state=int(TcpState.TIME_WAIT),
            status=_SR | _AS,
        ),
        119,
        {},
    ),
    "udp": (_conn(17, "0.0.0.0", "255.255.255.255", 68, 67), 29, {}),
    "icmp": (
        _conn(1, "172.16.133.2", "172.217.11.78", 1226, 8 << 8, rsport=1226, rdport=0, status=_SR),
        29,
        {},
    ),
    "icmpv6": (
        _conn(
            58,
            "3ffe:507:0:1:200:86ff:fe05:80da",
            "3ffe:507:0:1:260:97ff:fe07:69ea",
            31520,
            128 << 8,
            rsport=31520,
            rdport=129 << 8,
            status=_SR,
        ),
        29,
        {},
    ),
    "gre": (_conn(47, "172.27.1.66", "66.59.109.137", status=_SR | _AS), 179, {}),
    "unknown": (_conn(2, "10.0.2.7", "224.0.0.22"), 599, {}),
    "sctp": (_conn(132, "155.230.24.155", "222.96.156.151", 32838, 80, state=1), 9, {}),
    "ftp": (
        _conn(
            6,
            "192.168.1.212",
            "90.130.70.73",
            50694,
            21,
            state=int(TcpState.ESTABLISHED),
            status=_SR | _AS,
            helper="ftp",
        ),
        431999,
        {"use": 3},
    ),
}


@pytest.mark.parametrize("kind", sorted(KERNEL_LINES))
def test_conntrack_line_matches_the_kernels(kind: str) -> None:
    conn, left, kw = CONNS[kind]
    conn.expires = 1000.0 + left + 0.25
    assert format_conntrack_line(conn, 1000.0, **kw) == KERNEL_LINES[kind]


def test_conntrack_line_shows_id_on_request() -> None:
    conn, _, _ = CONNS["udp"]
    assert format_conntrack_line(conn, 0.0, show_id=True).endswith(f" use=1 id={conn.id}")


def _strip_ct(line: str) -> str:
    line = re.sub(r" id=\d+$", "", line)
    return re.sub(r"^(\S+\s+\d+) \d+ ", r"\1 T ", line)  # timeouts: kernel reads them later


@pytest.mark.parametrize("name", GOLDEN_TRACES)
def test_final_table_matches_the_kernels_dump(name: str) -> None:
    kernel = parse_oracle_tsv((GOLDEN / f"{name}.tsv").read_text()).ct_lines
    rep = replay_capture(TRACES / name, clock="paced")
    mine = [format_conntrack_line(c, rep.now) for c in rep.engine.table]
    assert sorted(map(_strip_ct, mine)) == sorted(map(_strip_ct, kernel))


# ---------------------------------------------------------------------------------- CLI


def test_cli_replay_tsv_and_table() -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["replay", str(FIN), "--dump"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0] == "# columns: " + "\t".join(COLUMNS)
    assert lines[1].split("\t")[:4] == ["0", "new", "original", "SYN_SENT"]
    assert any(line.startswith("# ct: tcp      6 ") for line in lines)
    res = runner.invoke(app, ["replay", str(FIN), "--format", "table"])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[0].split() == list(COLUMNS)
    assert "10 frames, 10 IP packets" in res.output


def test_cli_replay_missing_file_is_a_clean_error(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["replay", str(tmp_path / "nope.pcap")])
    assert res.exit_code == 2
    assert "no such file" in res.output
