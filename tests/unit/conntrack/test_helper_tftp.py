"""The TFTP helper (pmct/conntrack/helpers/tftp.py) against the kernel's nf_conntrack_tftp.c.

``build_cases()`` writes TFTP exchanges: a request to port 69, then the server's answer from a
port of its own, which the helper should (or should not) have expected. The capture
tests/data/traces/tftp/tftp_helper_cases.pcap holds the same packets; the real kernel was run
on it with the TFTP helper assigned to UDP port 69 (tests/data/README.md says how), and its
answers are tests/data/oracle/tftp/tftp_helper_cases.pcap.tsv.

Regenerate the capture with ``PYTHONPATH=tests python tests/unit/conntrack/test_helper_tftp.py
tests/data/traces/tftp/tftp_helper_cases.pcap``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import dpkt
from pktbuild import udp4, udp6

from pmct.conntrack.constants import CtState, Status
from pmct.conntrack.core import Engine
from pmct.conntrack.helpers.tftp import TFTP
from pmct.fidelity import compare, parse_oracle_tsv
from pmct.replay import format_expect_line, replay_capture

DATA = Path(__file__).resolve().parents[2] / "data"
CASES_PCAP = DATA / "traces" / "tftp" / "tftp_helper_cases.pcap"
GOLDEN = DATA / "oracle" / "tftp" / "tftp_helper_cases.pcap.tsv"

C4, S4, X4 = "192.0.2.1", "198.51.100.2", "203.0.113.9"
C6, S6 = "2001:db8::1", "2001:db8:1::2"

RRQ = b"\x00\x01file.bin\x00octet\x00"
WRQ = b"\x00\x02upload.bin\x00octet\x00"
DATA1 = b"\x00\x03\x00\x01" + b"x" * 32
ACK1 = b"\x00\x04\x00\x01"
REL, NEW, EST = CtState.RELATED, CtState.NEW, CtState.ESTABLISHED


@dataclass
class Case:
    name: str
    answers: dict[int, str] = field(default_factory=dict)  # the server's first answer


def build_cases() -> tuple[list[bytes], list[Case]]:
    out: list[bytes] = []
    cases: list[Case] = []

    def case(name: str) -> Case:
        cases.append(Case(name))
        return cases[-1]

    def v4(src: str, sport: int, dst: str, dport: int, payload: bytes) -> int:
        out.append(udp4(sport, dport, payload, src=src, dst=dst))
        return len(out) - 1

    def v6(src: str, sport: int, dst: str, dport: int, payload: bytes) -> int:
        out.append(udp6(sport, dport, payload, src=src, dst=dst))
        return len(out) - 1

    c = case("RRQ: the answer from a new server port is related, its ACK established")
    v4(C4, 3001, S4, 69, RRQ)
    c.answers[v4(S4, 4001, C4, 3001, DATA1)] = "related"
    v4(C4, 3001, S4, 4001, ACK1)

    c = case("WRQ")
    v4(C4, 3002, S4, 69, WRQ)
    c.answers[v4(S4, 4002, C4, 3002, ACK1[:2] + b"\x00\x00")] = "related"

    c = case("a DATA packet to port 69 expects nothing")
    v4(C4, 3003, S4, 69, DATA1)
    c.answers[v4(S4, 4003, C4, 3003, ACK1)] = "new"

    c = case("one byte of payload: no opcode, nothing expected")
    v4(C4, 3004, S4, 69, b"\x00")
    c.answers[v4(S4, 4004, C4, 3004, DATA1)] = "new"

    c = case("an answer from another address is not related")
    v4(C4, 3005, S4, 69, RRQ)
    c.answers[v4(X4, 4005, C4, 3005, DATA1)] = "new"
    c.answers[v4(S4, 4006, C4, 3005, DATA1)] = "related"  # the expectation is still there

    c = case("an answer to another client port is not related")
    v4(C4, 3007, S4, 69, RRQ)
    c.answers[v4(S4, 4007, C4, 3008, DATA1)] = "new"

    c = case("the expectation is used once")
    v4(C4, 3009, S4, 69, RRQ)
    c.answers[v4(S4, 4009, C4, 3009, DATA1)] = "related"
    c.answers[v4(S4, 4010, C4, 3009, DATA1)] = "new"

    c = case("a repeated request expects again")
    v4(C4, 3011, S4, 69, RRQ)
    v4(C4, 3011, S4, 69, RRQ)
    c.answers[v4(S4, 4011, C4, 3011, DATA1)] = "related"

    c = case("IPv6 RRQ")
    v6(C6, 3021, S6, 69, RRQ)
    c.answers[v6(S6, 4021, C6, 3021, DATA1)] = "related"

    c = case("RRQ left pending: listed by conntrack -L expect")
    v4(C4, 3031, S4, 69, RRQ)
    return out, cases


def write_pcap(path: Path) -> None:
    packets, _ = build_cases()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        w = dpkt.pcap.Writer(f, linktype=101)
        for i, data in enumerate(packets):
            w.writepkt(data, ts=1_700_000_000 + i / 1000)


def _engine() -> Engine:
    return Engine(helpers={"tftp": [69]})


def test_scenarios_through_the_engine() -> None:
    packets, cases = build_cases()
    eng = _engine()
    verdicts = [eng.process_ip(p, i * 0.001) for i, p in enumerate(packets)]
    for c in cases:
        for i, want in c.answers.items():
            st, d, conn = verdicts[i]
            got = {REL: "related", NEW: "new"}.get(CtState(st), str(st))
            assert got == want, f"{c.name}: #{i} is {got}"
            assert conn is not None and d == 0
            if want == "related":
                assert conn.status & Status.EXPECTED and conn.master is not None
                assert conn.master.helper is TFTP and conn.master.status & Status.HELPER
    # the client's ACK to the new port is the data connection's reply
    assert verdicts[2][:2] == (EST, 1)
    for i, (st, _, _) in enumerate(verdicts):
        assert st in (NEW, EST, REL), i


def test_without_the_helper_answers_are_new() -> None:
    packets, cases = build_cases()
    eng = Engine()
    verdicts = [eng.process_ip(p, i * 0.001) for i, p in enumerate(packets)]
    assert all(verdicts[i][0] == NEW for c in cases for i in c.answers)


def test_the_first_request_expects_at_once() -> None:
    """No "traffic both ways first" rule: the NEW request creates the expectation."""
    eng = _engine()
    st, _, master = eng.process_ip(udp4(3001, 69, RRQ, src=C4, dst=S4), 0.0)
    assert st == NEW and master is not None
    [exp] = eng.expectations(0.0)
    assert exp.master is master and exp.proto == 17 and exp.dport == 3001
    assert (exp.sport, exp.sport_mask) == (0, 0) and exp.src_mask == b"\xff" * 4
    assert exp.expires == 300.0


def test_expectation_times_out_and_dies_with_the_master() -> None:
    eng = _engine()
    _, _, master = eng.process_ip(udp4(3001, 69, RRQ, src=C4, dst=S4), 0.0)
    assert master is not None
    # the master (UDP, unreplied) expires after 30 s and takes the expectation with it
    assert eng.expectations(29.0) and not eng.expectations(30.0)
    st, _, _ = eng.process_ip(udp4(4001, 3001, DATA1, src=S4, dst=C4), 31.0)
    assert st == NEW and len(eng.expect) == 0


def test_tftp_on_another_port() -> None:
    eng = Engine(helpers={"tftp": [6969]})
    eng.process_ip(udp4(3001, 6969, RRQ, src=C4, dst=S4), 0.0)
    assert eng.process_ip(udp4(4001, 3001, DATA1, src=S4, dst=C4), 1.0)[0] == REL
    eng.process_ip(udp4(3002, 69, RRQ, src=C4, dst=S4), 0.0)
    assert eng.process_ip(udp4(4002, 3002, DATA1, src=S4, dst=C4), 1.0)[0] == NEW


# ---------------------------------------------------------------------------------- kernel


def test_committed_capture_is_what_build_cases_makes(tmp_path: Path) -> None:
    fresh = tmp_path / "cases.pcap"
    write_pcap(fresh)
    assert fresh.read_bytes() == CASES_PCAP.read_bytes()


def test_cases_capture_agrees_with_the_kernel() -> None:
    kernel = parse_oracle_tsv(GOLDEN.read_text())
    assert kernel.mode.startswith("bridge") and not kernel.errors
    packets, cases = build_cases()
    eng = _engine()
    from pmct.replay import iter_frames, replay_frames

    rep = replay_frames(eng, iter_frames(CASES_PCAP), "paced")
    res = compare(kernel.rows, rep.rows, CASES_PCAP.name)
    assert res.diffs == [], res.diffs[:3]
    assert res.status_agree == res.agree == res.packets == len(packets)
    for c in cases:
        for i, want in c.answers.items():
            assert kernel.rows[i].ctstate == want, c.name
    # conntrack -L expect: the answer to the wrong port left one pending, the last RRQ another
    want = sorted(line.split(" ", 1)[1] for line in kernel.ct_lines if " proto=" in line[:20])
    got = [format_expect_line(e, rep.now) for e in eng.expectations(rep.now)]
    assert sorted(line.split(" ", 1)[1] for line in got) == want and len(want) == 2
    assert all(line.startswith(("299 ", "300 ")) for line in got)


def test_replay_capture_without_helpers_differs_only_on_answers() -> None:
    """The same capture without the helper: the related answers become new."""
    kernel = parse_oracle_tsv(GOLDEN.read_text())
    rep = replay_capture(CASES_PCAP, clock="paced")
    res = compare(kernel.rows, rep.rows, CASES_PCAP.name)
    _, cases = build_cases()
    related = {i for c in cases for i, w in c.answers.items() if w == "related"}
    assert {i for i, _, _ in res.diffs} == related


def run_kernel_oracle_with_tftp(oracle: Path, argv: list[str]) -> int:
    """kernel_oracle.py has an FTP switch only: use it as a library, with its ruleset function
    wrapped so that ``--ftp-helper`` assigns the kernel's tftp helper to UDP port 69 instead
    (its header line still says "ftp-helper on tcp dport 21"). Needs root."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("kernel_oracle", oracle)
    assert spec is not None and spec.loader is not None
    ko = importlib.util.module_from_spec(spec)
    sys.modules["kernel_oracle"] = ko
    spec.loader.exec_module(ko)
    ftp_ruleset = ko.fw_ruleset

    def tftp_ruleset(helper: bool, group: int) -> str:
        text: str = ftp_ruleset(helper, group)
        if helper:
            text = text.replace(
                'ct helper ftp-21 { type "ftp" protocol tcp; l3proto inet; }',
                'ct helper tftp-69 { type "tftp" protocol udp; l3proto inet; }',
            ).replace('tcp dport 21 ct helper set "ftp-21"', 'udp dport 69 ct helper set "tftp-69"')
            assert "tftp-69" in text and "ftp-21" not in text
        return text

    ko.fw_ruleset = tftp_ruleset
    return int(ko.main([*argv, "--ftp-helper"]))


if __name__ == "__main__":
    # PYTHONPATH=tests python tests/unit/conntrack/test_helper_tftp.py OUT.pcap
    # PYTHONPATH=tests python tests/unit/conntrack/test_helper_tftp.py OUT.pcap --oracle \
    #     ../shared/tools/kernel_oracle.py OUT.tsv         (as root: also run the kernel on it)
    import sys

    write_pcap(Path(sys.argv[1]))
    if len(sys.argv) == 5 and sys.argv[2] == "--oracle":
        args = [sys.argv[1], "--bridge", "--out", sys.argv[4]]
        sys.exit(run_kernel_oracle_with_tftp(Path(sys.argv[3]), args))
