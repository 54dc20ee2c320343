"""The FTP helper (pmct/conntrack/helpers/ftp.py) against the kernel's nf_conntrack_ftp.c.

Three layers:
1. The parser alone: PORT / EPRT / 227 / 229 variants, partial matches, garbage, the kernel's
   in6_pton() transcription against the C library's inet_pton.
2. Scenarios through the engine: ``build_cases()`` writes FTP control sessions, each followed
   by the data connection the helper should or should not have expected. The same packets are
   the committed capture tests/data/traces/ftp/ftp_helper_cases.pcap, which the real kernel
   was run on (tests/data/oracle/ftp/, provenance in tests/data/README.md): a test checks that
   the capture still is what ``build_cases()`` makes, and another that pmct's rows equal the
   kernel's on it, so every expectation written here is also Linux's.
3. The public FTP traces against the kernel's recorded --ftp-helper answers.

Regenerate the capture with ``PYTHONPATH=tests python tests/unit/conntrack/test_helper_ftp.py
tests/data/traces/ftp/ftp_helper_cases.pcap``.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dpkt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pktbuild import ACK, PSH, SYN, tcp4, tcp6

from pmct.conntrack.conn import Conn
from pmct.conntrack.constants import CtState, Status
from pmct.conntrack.core import Engine, EventType
from pmct.conntrack.expect import EXP_NEW, ExpectTable
from pmct.conntrack.helpers.base import ESTABLISHED, NEW
from pmct.conntrack.helpers.ftp import (
    EXTRA_KEY,
    FTP,
    SEARCH,
    FtpHelper,
    FtpInfo,
    _Cmd,
    find_pattern,
    ftp_info,
    in6_pton,
)
from pmct.conntrack.keys import make_key
from pmct.fidelity import compare, parse_oracle_tsv
from pmct.replay import (
    format_conntrack_line,
    format_expect_line,
    iter_frames,
    replay_capture,
)
from pmct.sync.codec import ExpRecord, PacketType, decode_body, encode_exp_update
from pmct.sync.protocol import Role, SyncConfig, SyncProtocol
from pmct.sync.records import conn_to_record, exp_delete_record, exp_to_record, new_conn
from pmct.sync.sim import SimNet
from pmct.sync.table import EngineTable
from pmct.wire import parse_ip

DATA = Path(__file__).resolve().parents[2] / "data"
CASES_PCAP = DATA / "traces" / "ftp" / "ftp_helper_cases.pcap"
GOLDEN = DATA / "oracle" / "ftp"

C4, S4, X4 = "192.0.2.1", "198.51.100.2", "203.0.113.9"
C6, S6 = "2001:db8::1", "2001:db8:1::2"

REL, NEW_ST, EST, INV = CtState.RELATED, CtState.NEW, CtState.ESTABLISHED, CtState.INVALID


# ---------------------------------------------------------------------------------- scenarios


@dataclass
class Case:
    name: str
    data_syns: dict[int, str] = field(default_factory=dict)  # packet index -> related / new
    dropped: list[int] = field(default_factory=list)  # control packets the helper drops


class _Ctl:
    """One FTP control connection: handshake, then data both ways with matching seq/ack."""

    def __init__(self, out: list[bytes], cport: int, *, v6: bool = False) -> None:
        self.out = out
        self.v6 = v6
        self.c, self.s = (C6, S6) if v6 else (C4, S4)
        self.cport = cport
        self.cseq = (cport * 100_003) & 0xFFFFFFFF
        self.sseq = 7_000_000 + cport
        self._seg(True, SYN, b"")
        self.cseq += 1
        self._seg(False, SYN | ACK, b"")
        self.sseq += 1
        self._seg(True, ACK, b"")

    def _pkt(self, client: bool, flags: int, seq: int, ack: int, payload: bytes) -> bytes:
        build = tcp6 if self.v6 else tcp4
        if client:
            return build(self.cport, 21, flags, seq, ack, src=self.c, dst=self.s, payload=payload)
        return build(21, self.cport, flags, seq, ack, src=self.s, dst=self.c, payload=payload)

    def _seg(self, client: bool, flags: int, payload: bytes) -> int:
        seq, ack = (self.cseq, self.sseq) if client else (self.sseq, self.cseq)
        self.out.append(self._pkt(client, flags, seq, ack if flags & ACK else 0, payload))
        return len(self.out) - 1

    def client(self, payload: bytes) -> int:
        i = self._seg(True, ACK | PSH, payload)
        self.cseq += len(payload)
        self._seg(False, ACK, b"")
        return i

    def server(self, payload: bytes) -> int:
        i = self._seg(False, ACK | PSH, payload)
        self.sseq += len(payload)
        self._seg(True, ACK, b"")
        return i

    def client_at(self, seq: int, payload: bytes) -> int:
        """A client segment at ``seq`` (a retransmission, possibly of other bytes)."""
        self.out.append(self._pkt(True, ACK | PSH, seq, self.sseq, payload))
        self.cseq = max(self.cseq, seq + len(payload))
        return len(self.out) - 1

    def server_at(self, seq: int, payload: bytes) -> int:
        self.out.append(self._pkt(False, ACK | PSH, seq, self.cseq, payload))
        self.sseq = max(self.sseq, seq + len(payload))
        return len(self.out) - 1

    def login(self) -> None:
        """Banner and USER: the first data of each direction, which is never parsed."""
        self.server(b"220 pmct test server\r\n")
        self.client(b"USER anonymous\r\n")
        self.server(b"331 password please\r\n")

    def data(self, active: bool, port: int) -> int:
        """SYN and SYN/ACK of a data connection (active mode: from the server's port 20)."""
        build = tcp6 if self.v6 else tcp4
        if active:
            src, sport, dst, dport = self.s, 20, self.c, port
        else:
            src, sport, dst, dport = self.c, self.cport + 1000, self.s, port
        self.out.append(build(sport, dport, SYN, 1, 0, src=src, dst=dst))
        self.out.append(build(dport, sport, SYN | ACK, 5000, 2, src=dst, dst=src))
        return len(self.out) - 2


def _hp(addr: str, port: int) -> bytes:
    """``a,b,c,d,p1,p2`` of PORT and 227."""
    return (addr.replace(".", ",") + f",{port >> 8},{port & 0xFF}").encode()


def build_cases() -> tuple[list[bytes], list[Case]]:
    """The capture's IP datagrams and the cases, whose indexes point into it."""
    out: list[bytes] = []
    cases: list[Case] = []

    def case(name: str) -> Case:
        cases.append(Case(name))
        return cases[-1]

    # --- active mode: PORT and EPRT from the client ----------------------------------------
    c = case("PORT")
    ctl = _Ctl(out, 40001)
    ctl.login()
    ctl.client(b"PORT " + _hp(C4, 50001) + b"\r\n")
    c.data_syns[ctl.data(True, 50001)] = "related"

    c = case("port in lower case")
    ctl = _Ctl(out, 40002)
    ctl.login()
    ctl.client(b"port " + _hp(C4, 50002) + b"\r\n")
    c.data_syns[ctl.data(True, 50002)] = "related"

    c = case("EPRT IPv4")
    ctl = _Ctl(out, 40003)
    ctl.login()
    ctl.client(b"EPRT |1|" + C4.encode() + b"|50003|\r\n")
    c.data_syns[ctl.data(True, 50003)] = "related"

    c = case("PORT naming a third address: nothing expected (loose=0)")
    ctl = _Ctl(out, 40004)
    ctl.login()
    ctl.client(b"PORT " + _hp(X4, 50004) + b"\r\n")
    c.data_syns[ctl.data(True, 50004)] = "new"

    c = case("PORT as the client's first data: never parsed")
    ctl = _Ctl(out, 40005)
    ctl.server(b"220 hi\r\n")
    ctl.client(b"PORT " + _hp(C4, 50005) + b"\r\n")
    c.data_syns[ctl.data(True, 50005)] = "new"

    c = case("PORT as the second line of a segment: only the first line is read")
    ctl = _Ctl(out, 40006)
    ctl.login()
    ctl.client(b"NOOP\r\nPORT " + _hp(C4, 50006) + b"\r\n")
    c.data_syns[ctl.data(True, 50006)] = "new"

    c = case("PORT split in two segments, then retransmitted whole")
    ctl = _Ctl(out, 40007)
    ctl.login()
    line = b"PORT " + _hp(C4, 50007) + b"\r\n"
    start = ctl.cseq
    c.dropped.append(ctl.client_at(start, line[:12]))  # partial match: dropped
    ctl.client_at(start, line)  # the retransmission starts after a newline: parsed
    ctl.server(b"200 ok\r\n")
    c.data_syns[ctl.data(True, 50007)] = "related"

    c = case("PORT split in two segments, not retransmitted: its rest is not at a line start")
    ctl = _Ctl(out, 40008)
    ctl.login()
    line = b"PORT " + _hp(C4, 50008) + b"\r\n"
    c.dropped.append(ctl.client(line[:14]))
    ctl.client(line[14:])
    c.data_syns[ctl.data(True, 50008)] = "new"

    c = case("a segment without newline: the next is not read, the one after is")
    ctl = _Ctl(out, 40009)
    ctl.login()
    ctl.client(b"NOOP")
    ctl.client(b"\r\n")
    ctl.client(b"PORT " + _hp(C4, 50009) + b"\r\n")
    c.data_syns[ctl.data(True, 50009)] = "related"

    c = case("garbage after the command word: dropped as partial matches")
    ctl = _Ctl(out, 40010)
    ctl.login()
    start = ctl.cseq
    for junk in (
        b"PORT abc\r\n",
        b"PORT 1,2,3,4,5,6,7\r\n",  # one number too many
        b"P",  # the start of PORT
        b"EPRT |3|x|1|\r\n",  # no such protocol number
        b"EPRT 1|1|1.2.3.4|5|\r\n",  # a digit as delimiter
        b"PORT 192,0,2,1,0,80",  # no \r before the data ends
    ):
        c.dropped.append(ctl.client_at(start, junk))
    ctl.client_at(start, b"PORT " + _hp(C4, 50010) + b"\r\n")
    c.data_syns[ctl.data(True, 50010)] = "related"

    c = case("two PORTs: max_expected 1, the older expectation is evicted")
    ctl = _Ctl(out, 40011)
    ctl.login()
    ctl.client(b"PORT " + _hp(C4, 50011) + b"\r\n")
    ctl.server(b"200 ok\r\n")
    ctl.client(b"PORT " + _hp(C4, 50012) + b"\r\n")
    c.data_syns[ctl.data(True, 50011)] = "new"
    c.data_syns[ctl.data(True, 50012)] = "related"

    c = case("two control connections announce the same port: the second PORT is dropped")
    first = _Ctl(out, 40013)
    first.login()
    second = _Ctl(out, 40014)
    second.login()
    first.client(b"PORT " + _hp(C4, 50014) + b"\r\n")
    c.dropped.append(second.client(b"PORT " + _hp(C4, 50014) + b"\r\n"))  # clash: EBUSY
    c.data_syns[first.data(True, 50014)] = "related"

    c = case("numbers are ORed into place: 513 as the last address byte sets the one before")
    ctl = _Ctl(out, 40012)
    ctl.login()
    ctl.client(b"PORT 192,0,0,513,195,93\r\n")  # (0 << 8) | 513 = 0x201: 192.0.2.1, port 50013
    c.data_syns[ctl.data(True, 50013)] = "related"

    # --- passive mode: 227 and 229 from the server -----------------------------------------
    c = case("227 with parentheses")
    ctl = _Ctl(out, 40021)
    ctl.login()
    ctl.client(b"PASV\r\n")
    ctl.server(b"227 Entering Passive Mode (" + _hp(S4, 50021) + b").\r\n")
    c.data_syns[ctl.data(False, 50021)] = "related"

    c = case("227 without parentheses (RFC 1123 4.1.2.6)")
    ctl = _Ctl(out, 40022)
    ctl.login()
    ctl.client(b"PASV\r\n")
    ctl.server(b"227 =" + _hp(S4, 50022) + b"\r\n")
    c.data_syns[ctl.data(False, 50022)] = "related"

    c = case("229 EPSV")
    ctl = _Ctl(out, 40023)
    ctl.login()
    ctl.client(b"EPSV\r\n")
    ctl.server(b"229 Entering Extended Passive Mode (|||50023|)\r\n")
    c.data_syns[ctl.data(False, 50023)] = "related"

    c = case("229 with another delimiter")
    ctl = _Ctl(out, 40024)
    ctl.login()
    ctl.client(b"EPSV\r\n")
    ctl.server(b"229 ok (!!!50024!)\r\n")
    c.data_syns[ctl.data(False, 50024)] = "related"

    c = case("227 naming another server: nothing expected")
    ctl = _Ctl(out, 40025)
    ctl.login()
    ctl.client(b"PASV\r\n")
    ctl.server(b"227 Entering Passive Mode (" + _hp(X4, 50025) + b")\r\n")
    c.data_syns[ctl.data(False, 50025)] = "new"

    c = case("227 without numbers, a lone 2, 229 with port 0: dropped as partial matches")
    ctl = _Ctl(out, 40026)
    ctl.login()
    ctl.client(b"PASV\r\n")
    start = ctl.sseq
    for junk in (b"227 no numbers here\r\n", b"2", b"229 (|||0|)\r\n"):
        c.dropped.append(ctl.server_at(start, junk))

    c = case("PORT left pending: listed by conntrack -L expect")
    ctl = _Ctl(out, 40027)
    ctl.login()
    ctl.client(b"PORT " + _hp(C4, 50027) + b"\r\n")

    # --- IPv6 ------------------------------------------------------------------------------
    c = case("EPRT IPv6")
    ctl = _Ctl(out, 40031, v6=True)
    ctl.login()
    ctl.client(b"EPRT |2|" + C6.encode() + b"|50031|\r\n")
    c.data_syns[ctl.data(True, 50031)] = "related"

    c = case("EPRT IPv6 written out in upper case, and with a dotted tail")
    ctl = _Ctl(out, 40032, v6=True)
    ctl.login()
    ctl.client(b"EPRT |2|2001:DB8:0:0:0:0:0:1|50032|\r\n")
    c.data_syns[ctl.data(True, 50032)] = "related"
    ctl.server(b"200 ok\r\n")
    ctl.client(b"eprt !2!2001:db8::0.0.0.1!50033!\r\n")
    c.data_syns[ctl.data(True, 50033)] = "related"

    c = case("EPSV IPv6")
    ctl = _Ctl(out, 40033, v6=True)
    ctl.login()
    ctl.client(b"EPSV\r\n")
    ctl.server(b"229 Entering Extended Passive Mode (|||50034|)\r\n")
    c.data_syns[ctl.data(False, 50034)] = "related"

    c = case("PORT on IPv6 writes only the first 4 address bytes")
    ctl = _Ctl(out, 40034, v6=True)
    ctl.login()
    ctl.client(b"PORT 10,0,0,1,195,118\r\n")  # 10.0.0.1 + the rest of 2001:db8::1
    c.data_syns[ctl.data(True, 50038)] = "new"
    ctl.server(b"200 ok\r\n")
    ctl.client(b"PORT 32,1,13,184,195,117\r\n")  # 0x20010db8: the client's own address
    c.data_syns[ctl.data(True, 50037)] = "related"

    c = case("EPRT |1| on IPv6: dropped as a partial match")
    ctl = _Ctl(out, 40035, v6=True)
    ctl.login()
    c.dropped.append(ctl.client(b"EPRT |1|" + C4.encode() + b"|50035|\r\n"))

    c = case("EPRT IPv6 left pending: listed by conntrack -L expect")
    ctl = _Ctl(out, 40036, v6=True)
    ctl.login()
    ctl.client(b"EPRT |2|" + C6.encode() + b"|50036|\r\n")

    return out, cases


def write_pcap(path: Path) -> None:
    """The cases as a raw-IP pcap (LINKTYPE_RAW), 1 ms apart."""
    packets, _ = build_cases()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        w = dpkt.pcap.Writer(f, linktype=101)
        for i, data in enumerate(packets):
            w.writepkt(data, ts=1_700_000_000 + i / 1000)


def _run(packets: list[bytes], **kw: object) -> tuple[Engine, list[tuple[int, int, Conn | None]]]:
    eng = Engine(ftp_helper=True, **kw)  # type: ignore[arg-type]
    return eng, [eng.process_ip(p, i * 0.001) for i, p in enumerate(packets)]


# ---------------------------------------------------------------------------------- parser


def _match(d: int, line: bytes, l3: int = 4, own: bytes = b"\xc0\x00\x02\x01"):  # type: ignore[no-untyped-def]
    """(found, address, port) of ``line`` against the direction's pattern table."""
    cmd = _Cmd(l3, bytearray(own))
    found = 0
    for row in SEARCH[d]:
        found = find_pattern(line, row, cmd)
        if found:
            break
    return found, bytes(cmd.addr), cmd.port


@pytest.mark.parametrize(
    ("d", "line", "found", "addr", "port"),
    [
        (0, b"PORT 192,0,2,1,195,80\r\n", 1, C4, 50000),
        (0, b"port 10,1,2,3,0,21\r\n", 1, "10.1.2.3", 21),
        (0, b"PORT    192,0,2,1,195,80\r\n", -1, C4, 0),  # only one space is skipped
        (0, b"EPRT |1|192.0.2.1|6275|\r\n", 1, C4, 6275),
        (0, b"EpRt #1#10.0.0.1#21#\r\n", 1, "10.0.0.1", 21),
        (0, b"PORT 192,0,2,1,195,80", -1, C4, 0),  # no \r: more may come
        (0, b"PORT 192,0,2,1,195,80\n", -1, C4, 0),  # \n is not the terminator
        (0, b"PORT", -1, C4, 0),
        (0, b"POR", -1, C4, 0),
        (0, b"EP", -1, C4, 0),
        (0, b"PASS secret\r\n", 0, C4, 0),
        (0, b"RETR file\r\n", 0, C4, 0),
        (0, b"EPRT |1|192.0.2.1|0|\r\n", -1, C4, 0),  # port 0 is refused
        (0, b"EPRT |1|192.0.2|80|\r\n", -1, C4, 0),
        (0, b"PORT 1,2,3,4,256,1\r\n", 1, "1.2.3.4", 1),  # (256 << 8 | 1) & 0xffff
        (1, b"227 Entering Passive Mode (198,51,100,2,19,137).\r\n", 1, S4, 5001),
        (1, b"227 198,51,100,2,19,137\r\n", 1, S4, 5001),
        (1, b"227 Entering Passive Mode\r\n", -1, C4, 0),
        (1, b"229 Entering Extended Passive Mode (|||6446|)\r\n", 1, C4, 6446),
        (1, b"229 Entering Extended Passive Mode |||6446|\r\n", -1, C4, 0),  # no "("
        (1, b"229 (||6446|)\r\n", -1, C4, 0),
        (1, b"226 Transfer complete\r\n", 0, C4, 0),
        (1, b"22", -1, C4, 0),
        (1, b"227-multi line\r\n", 0, C4, 0),
    ],
)
def test_pattern_table(d: int, line: bytes, found: int, addr: str, port: int) -> None:
    got_found, got_addr, got_port = _match(d, line)
    assert got_found == found
    if found == 1:
        assert got_addr == socket.inet_aton(addr)
        assert got_port == port


def test_eprt_ipv6_and_protocol_number_must_fit_the_connection() -> None:
    own6 = socket.inet_pton(socket.AF_INET6, C6)
    found, addr, port = _match(0, b"EPRT |2|2001:db8::7|50000|\r\n", 6, own6)
    assert (found, addr, port) == (1, socket.inet_pton(socket.AF_INET6, "2001:db8::7"), 50000)
    assert _match(0, b"EPRT |1|192.0.2.1|50000|\r\n", 6, own6)[0] == -1
    assert _match(0, b"EPRT |2|2001:db8::7|50000|\r\n", 4)[0] == -1


def test_port_on_ipv6_overwrites_four_bytes() -> None:
    own6 = socket.inet_pton(socket.AF_INET6, C6)
    found, addr, port = _match(0, b"PORT 10,0,0,1,0,80\r\n", 6, own6)
    assert found == 1 and port == 80
    assert addr == bytes([10, 0, 0, 1]) + own6[4:]


@pytest.mark.parametrize(
    "text",
    [
        "::",
        "::1",
        "1::",
        "2001:db8::1",
        "2001:DB8:0:0:0:0:0:1",
        "fe80::1:2:3:4:5",
        "1:2:3:4:5:6:7:8",
        "::ffff:192.0.2.1",
        "1:2:3:4:5:6:1.2.3.4",
        "2001:db8::0.0.0.1",
        "0:0:0:0:0:0:0:0",
    ],
)
def test_in6_pton_reads_what_inet_pton_reads(text: str) -> None:
    data = b"|2|" + text.encode() + b"|"
    end, addr = in6_pton(data, 3, len(data) - 3, ord("|"))
    assert addr == socket.inet_pton(socket.AF_INET6, text)
    assert end == len(data) - 1  # the delimiter


@pytest.mark.parametrize(
    "text",
    [
        "",
        ":",
        ":::",
        "1:::2",
        "12345::",
        "1:2:3:4:5:6:7:8:9",
        "1::2::3",
        "g::1",
        "1.2.3.4",
        "::1.2.3",
        "::1.2.3.256",
        "::01.2.3.4.5",
    ],
)
def test_in6_pton_refuses_what_the_kernel_refuses(text: str) -> None:
    data = text.encode() + b"|"
    assert in6_pton(data, 0, len(data), ord("|"))[1] is None


@given(st.ip_addresses(v=6))
def test_in6_pton_on_any_compressed_address(ip: object) -> None:
    text = str(ip)
    if "." in text:  # the kernel accepts a dotted tail only as the last 32 bits
        return
    data = text.encode() + b"!"
    assert in6_pton(data, 0, len(data), ord("!"))[1] == socket.inet_pton(socket.AF_INET6, text)


@given(st.binary(max_size=80), st.sampled_from([0, 1]), st.booleans())
def test_garbage_never_raises(blob: bytes, d: int, v6: bool) -> None:
    own = bytes(16) if v6 else bytes(4)
    for prefix in (b"", b"PORT ", b"EPRT ", b"227 ", b"229 (", b"EPRT |2|", b"EPRT |1|"):
        found, _, _ = _match(d, prefix + blob, 6 if v6 else 4, own)
        assert found in (-1, 0, 1)


# ---------------------------------------------------------------------------------- engine


def test_scenarios_through_the_engine() -> None:
    packets, cases = build_cases()
    eng, verdicts = _run(packets)
    for c in cases:
        for i, want in c.data_syns.items():
            st_, d, conn = verdicts[i]
            got = "related" if st_ == REL else "new" if st_ == NEW_ST else str(st_)
            assert got == want, f"{c.name}: data SYN #{i} is {got}, want {want}"
            assert conn is not None and d == 0
            if want == "related":
                assert conn.status & Status.EXPECTED and conn.master is not None
                assert conn.master.helper is FTP and conn.helper is None
                # the SYN/ACK is the first reply: established, and EXPECTED stays
                st2, d2, conn2 = verdicts[i + 1]
                assert (st2, d2, conn2) == (EST, 1, conn)
        for i in c.dropped:
            st_, _, _ = verdicts[i]
            assert st_ == INV, f"{c.name}: #{i} should be dropped"
            assert "partial matching" in (eng.invalid_reasons and " ".join(eng.invalid_reasons))
    # every other control packet is accepted
    marked = {i for c in cases for i in (*c.data_syns, *c.dropped)}
    for i, (st_, _, _) in enumerate(verdicts):
        if i not in marked:
            assert st_ in (NEW_ST, EST), f"packet #{i} is {st_}"


def test_without_the_helper_data_connections_are_new() -> None:
    packets, cases = build_cases()
    eng = Engine()
    verdicts = [eng.process_ip(p, i * 0.001) for i, p in enumerate(packets)]
    for c in cases:
        for i in c.data_syns:
            assert verdicts[i][0] == NEW_ST
        for i in c.dropped:
            assert verdicts[i][0] == EST
    assert len(eng.expect) == 0
    assert not any(c.status & Status.HELPER for c in eng.table)


def test_control_entry_gets_the_helper_and_the_helper_bit() -> None:
    eng = Engine(helpers={"ftp": [2121]})
    _, _, conn = eng.process_ip(tcp4(40000, 2121, SYN, 1), 0.0)
    assert conn is not None and conn.helper is FTP and conn.status & Status.HELPER
    assert isinstance(conn.extra and conn.extra[EXTRA_KEY], FtpInfo)
    _, _, other = eng.process_ip(tcp4(40000, 21, SYN, 1), 0.0)
    assert other is not None and other.helper is None and not other.status & Status.HELPER
    # the reply direction's port does not count: only the first packet's destination
    _, _, rev = eng.process_ip(tcp4(2121, 40001, SYN, 1), 0.0)
    assert rev is not None and rev.helper is None


def test_ftp_helper_flag_is_ftp_on_21() -> None:
    assert Engine(ftp_helper=True).helper_ports == Engine(helpers={"ftp": [21]}).helper_ports


def test_expectation_events_only_for_a_consumer_that_asked() -> None:
    """Engine(events=True) feeds conntrack -E; expectation events would pile up unread there
    (a standby stores the peer's expectations too), so they are recorded only on request."""
    eng = Engine(ftp_helper=True, events=True)
    _pending_port(eng, 41900, 51900)
    assert eng.expect.events is None and eng.expect.drain_events() == []
    eng.expect.events = []
    eng.process_ip(tcp4(20, 51900, SYN, 1, src=S4, dst=C4), 1.0)
    assert [k for k, _ in eng.expect.drain_events()] == [3]  # used up: EXP_DESTROY


def test_unknown_helper_or_bad_port_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="unknown conntrack helper"):
        Engine(helpers={"sip": [5060]})
    with pytest.raises(ValueError, match=r"1\.\.65535"):
        Engine(helpers={"ftp": [0]})
    with pytest.raises(ValueError, match="both"):
        from pmct.conntrack.helpers import HELPERS, Helper, assignments

        class Fake(Helper):
            name = "fake"
            l4proto = 6

        HELPERS["fake"] = Fake()
        try:
            assignments({"ftp": [21], "fake": [21]})
        finally:
            del HELPERS["fake"]


class _CountingFtp(FtpHelper):
    __slots__ = ("calls",)

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def help(self, *args: Any) -> str | None:
        self.calls += 1
        return super().help(*args)


def test_every_control_packet_reaches_the_helper_and_nothing_else_does() -> None:
    """Entries with a helper must not take the IPv4/TCP fast path (it never runs helpers);
    entries without one keep it (``_plain_nohelp``)."""
    packets, _ = build_cases()
    counting = _CountingFtp()
    eng = Engine(ftp_helper=True)
    eng.helper_ports[(6, 21)] = counting
    for i, p in enumerate(packets):
        eng.process_ip(p, i * 0.001)
    control = 0
    for p in packets:
        pkt = parse_ip(p)
        control += 21 in (pkt.sport, pkt.dport)
    assert counting.calls == control
    assert eng._plain is False and eng._plain_nohelp is True
    assert Engine()._plain is True


def test_retransmitted_port_refreshes_its_expectation() -> None:
    eng = Engine(ftp_helper=True)
    out: list[bytes] = []
    ctl = _Ctl(out, 41000)
    ctl.login()
    line = b"PORT " + _hp(C4, 51000) + b"\r\n"
    start = ctl.cseq
    ctl.client_at(start, line)
    for i, p in enumerate(out):
        eng.process_ip(p, float(i))
    [exp] = eng.expectations(100.0)
    first = exp.expires
    eng.process_ip(ctl._pkt(True, ACK | PSH, start, ctl.sseq, line), 200.0)
    [exp2] = eng.expectations(200.0)
    assert exp2 is not exp and exp2.expires == 200.0 + 300 > first


def _pending_port(eng: Engine, cport: int, port: int) -> tuple[_Ctl, Conn]:
    """A control connection that announced ``port`` at time 0; returns it and its entry."""
    out: list[bytes] = []
    ctl = _Ctl(out, cport)
    ctl.login()
    ctl.client(b"PORT " + _hp(C4, port) + b"\r\n")
    conn = None
    for p in out:
        _, _, conn = eng.process_ip(p, 0.0)
    assert conn is not None and conn.helper is FTP and len(eng.expect.of_master(conn)) == 1
    return ctl, conn


def test_expectation_dies_with_the_control_connection() -> None:
    eng = Engine(ftp_helper=True)
    _, master = _pending_port(eng, 41001, 51001)
    eng.table.delete(master, "killed")  # any delete: RST kill, early drop, ctnetlink, sync
    assert len(eng.expect) == 0
    st_, _, _ = eng.process_ip(tcp4(20, 51001, SYN, 1, src=S4, dst=C4), 1.0)
    assert st_ == NEW_ST


def test_expectation_of_an_expired_control_connection_is_not_used() -> None:
    eng = Engine(ftp_helper=True)
    ctl, master = _pending_port(eng, 41002, 51002)
    # a RST puts the control entry in CLOSE: 10 s left
    eng.process_ip(ctl._pkt(True, 0x04 | ACK, ctl.cseq, ctl.sseq, b""), 1.0)
    assert master.expires == 11.0 and len(eng.expectations(10.9)) == 1
    assert eng.expectations(11.0) == []
    st_, _, _ = eng.process_ip(tcp4(20, 51002, SYN, 1, src=S4, dst=C4), 11.0)
    assert st_ == NEW_ST and len(eng.expect) == 0


def test_expectation_times_out_after_five_minutes() -> None:
    for wait, want in ((299.0, REL), (300.0, NEW_ST)):
        eng = Engine(ftp_helper=True)
        out: list[bytes] = []
        ctl = _Ctl(out, 41002)
        ctl.login()
        ctl.client(b"PORT " + _hp(C4, 51002) + b"\r\n")
        for p in out:
            eng.process_ip(p, 0.0)
        # keep the control connection alive meanwhile (ESTABLISHED lives 5 days anyway)
        st_, _, _ = eng.process_ip(tcp4(20, 51002, SYN, 1, src=S4, dst=C4), wait)
        assert st_ == want


def test_related_data_connection_is_not_a_fast_path_special_case() -> None:
    """After the first reply the data connection is ordinary ESTABLISHED traffic."""
    eng = Engine(ftp_helper=True)
    out: list[bytes] = []
    ctl = _Ctl(out, 41003)
    ctl.login()
    ctl.client(b"PORT " + _hp(C4, 51003) + b"\r\n")
    for p in out:
        eng.process_ip(p, 0.0)
    a = tcp4(20, 51003, SYN, 100, src=S4, dst=C4)
    b = tcp4(51003, 20, SYN | ACK, 900, 101, src=C4, dst=S4)
    c = tcp4(20, 51003, ACK, 101, 901, src=S4, dst=C4)
    assert [eng.process_ip(p, 1.0)[:2] for p in (a, b, c)] == [(REL, 0), (EST, 1), (EST, 0)]
    [data] = [x for x in eng.table if x.status & Status.EXPECTED]
    assert data.state == 3 and not data.status & Status.HELPER


def test_mark_is_inherited_from_the_master() -> None:
    eng = Engine(ftp_helper=True)
    out: list[bytes] = []
    ctl = _Ctl(out, 41004)
    ctl.login()
    ctl.client(b"PORT " + _hp(C4, 51004) + b"\r\n")
    master = None
    for p in out:
        _, _, master = eng.process_ip(p, 0.0)
    assert master is not None
    master.mark = 0x42
    _, _, data = eng.process_ip(tcp4(20, 51004, SYN, 1, src=S4, dst=C4), 1.0)
    assert data is not None and data.mark == 0x42 and data.master is master


# ---------------------------------------------------------------------------------- pickup


def _helper_direct(info_present: bool) -> tuple[Conn, ExpectTable]:
    key = make_key(6, socket.inet_aton(C4), socket.inet_aton(S4), 40000, 21)
    rkey = make_key(6, socket.inet_aton(S4), socket.inet_aton(C4), 21, 40000)
    conn = Conn(1, key, rkey, 4, 6)
    conn.status = int(Status.CONFIRMED | Status.SEEN_REPLY | Status.HELPER)
    conn.helper = FTP
    if info_present:
        FTP.attach(conn)
    return conn, ExpectTable()


def _say(conn: Conn, exp: ExpectTable, seq: int, line: bytes) -> str | None:
    data = b"\0" * 40 + line
    return FTP.help(conn, 0, ESTABLISHED, data, 40, len(data), seq, exp, 0.0)


def test_fresh_entry_ignores_a_command_at_an_unknown_position() -> None:
    conn, exp = _helper_direct(True)
    assert _say(conn, exp, 5000, b"PORT " + _hp(C4, 50000) + b"\r\n") is None
    assert len(exp) == 0
    assert ftp_info(conn).seqs[0] == [5000 + 23]


def test_injected_entry_picks_up_the_first_command_after_failover() -> None:
    """kernel nf_ct_ftp_from_nlattr(): SEQ_PICKUP in both directions."""
    conn, exp = _helper_direct(False)  # a synced entry: helper name, no private data
    assert _say(conn, exp, 5000, b"PORT " + _hp(C4, 50000) + b"\r\n") is None
    assert len(exp) == 1
    info = ftp_info(conn)
    assert info.pickup == [False, True]  # used up in the original direction only
    # the next command is at a remembered position anyway
    assert _say(conn, exp, 5023, b"PORT " + _hp(C4, 50001) + b"\r\n") is None
    assert [e.dport for e in exp] == [50001]


def test_from_sync_sets_pickup_on_an_entry_with_data() -> None:
    conn, exp = _helper_direct(True)
    FtpHelper().from_sync(conn)
    assert ftp_info(conn).pickup == [True, True]
    assert _say(conn, exp, 777, b"PORT " + _hp(C4, 50002) + b"\r\n") is None
    assert len(exp) == 1


def test_synced_entry_by_name_runs_the_helper_through_the_engine() -> None:
    """ct_sync stores the helper's name; the engine resolves it and picks up."""
    eng = Engine()
    assert eng._plain
    helper = eng.resolve_helper("ftp")
    assert helper is FTP and not eng._plain
    out: list[bytes] = []
    ctl = _Ctl(out, 41005)
    for p in out:  # the handshake, seen before the "failover"
        eng.process_ip(p, 0.0)
    [conn] = list(eng.table)
    conn.helper = "ftp"  # as records.write_conn leaves it without resolve_helper
    conn.status |= Status.HELPER
    eng.process_ip(
        ctl._pkt(True, ACK | PSH, ctl.cseq, ctl.sseq, b"PORT " + _hp(C4, 51005) + b"\r\n"), 1.0
    )
    assert conn.helper is FTP
    st_, _, _ = eng.process_ip(tcp4(20, 51005, SYN, 1, src=S4, dst=C4), 2.0)
    assert st_ == REL


def test_update_nl_seq_keeps_the_newest_two() -> None:
    conn, exp = _helper_direct(True)
    info = ftp_info(conn)
    info.seqs[0][:] = [100, 200]
    info.pickup[0] = False
    _say(conn, exp, 200, b"NOOP\r\n")  # at 200: read, ends in \n -> 206 replaces 100
    assert sorted(info.seqs[0]) == [200, 206]
    _say(conn, exp, 50, b"X\r\n")  # older than both: not remembered
    assert sorted(info.seqs[0]) == [200, 206]
    info.seqs[0][:] = [0xFFFFFFF0, 4]  # wraparound: 0xFFFFFFF0 is the older
    _say(conn, exp, 4, b"NOOP\r\n")
    assert sorted(info.seqs[0]) == [4, 10]


def test_helper_looks_only_at_established_packets() -> None:
    conn, exp = _helper_direct(True)
    data = b"\0" * 40 + b"PORT " + _hp(C4, 50000) + b"\r\n"
    for state in (NEW, CtState.RELATED):
        assert FTP.help(conn, 0, int(state), data, 40, len(data), 0, exp, 0.0) is None
    assert FTP.help(conn, 0, ESTABLISHED, data, 40, 40, 0, exp, 0.0) is None  # no payload
    assert ftp_info(conn).seqs == ([], [])


# ---------------------------------------------------------------------------------- ct_sync


def _feed_master(eng: Engine, proto: SyncProtocol, now: float) -> None:
    """What the node's sync shell does for a replicate master: engine events to the core."""
    for etype, conn in eng.drain_events():
        if etype == EventType.DESTROY:
            proto.local_delete(conn, now=now)
        else:
            proto.local_update(conn, now=now)
    for kind, exp in eng.expect.drain_events():
        rec = exp_to_record(exp, now) if kind == EXP_NEW else exp_delete_record(exp)
        proto.local_expect(rec, now=now)


@pytest.mark.parametrize("mode", ["concurrent", "replicate"])
def test_failover_in_the_middle_of_an_ftp_session(mode: str) -> None:
    """Issue 7: after a failover mid-session, a data connection opened after it is RELATED on
    the new master, one already running continues, and the first command after it is read
    (SEQ_PICKUP: the control entry arrives without the helper's private data)."""
    a = Engine(ftp_helper=True, events=True)
    a.expect.events = []  # the sync shell's job: record expectation changes, and drain them
    b = Engine(ftp_helper=True)
    out: list[bytes] = []
    ctl = _Ctl(out, 42000)
    ctl.login()
    ctl.client(b"PORT " + _hp(C4, 52001) + b"\r\n")
    running = [
        tcp4(20, 52001, SYN, 100, src=S4, dst=C4),
        tcp4(52001, 20, SYN | ACK, 900, 101, src=C4, dst=S4),
        tcp4(20, 52001, ACK, 101, 901, src=S4, dst=C4),
    ]
    for pkt in out + running:
        a.process_ip(pkt, 1.0)
    ctl.client(b"PASV\r\n")
    pasv = ctl.server(b"227 Entering Passive Mode (" + _hp(S4, 52002) + b")\r\n")
    for pkt in out[len(out) - 4 : pasv]:  # PASV and its ACK: before the pair starts
        a.process_ip(pkt, 1.0)
    net = SimNet(seed=7, now=1.0)
    cfg = {"mode": mode}
    master = net.add(
        SyncProtocol(
            SyncConfig(1, frozenset({2}), **cfg),  # type: ignore[arg-type]
            EngineTable(a),
            epoch=1,
            now=1.0,
            role=Role.MASTER,
        )
    )
    slave = net.add(
        SyncProtocol(
            SyncConfig(2, frozenset({1}), **cfg),  # type: ignore[arg-type]
            EngineTable(b),
            epoch=2,
            now=1.0,
        )
    )
    a.drain_events()
    a.expect.drain_events()
    net.run(3.0, stop=lambda: slave.ready and net.in_flight == 0)
    assert slave.ready
    # the 227 reply arrives after the walk: streamed live (replicate) or seen by both
    # engines on the wire (concurrent: the standby tracks too, and picks up the reply)
    for pkt in out[pasv:]:
        a.process_ip(pkt, 3.5)
        if mode == "concurrent":
            b.process_ip(pkt, 3.5)
    _feed_master(a, master, 3.5)
    net.run(5.0, stop=lambda: net.in_flight == 0 and not master._pending_exp)
    assert sorted(e.dport for e in b.expectations(5.0)) == [52002]
    [control] = [c for c in b.table if c.status & Status.HELPER]
    assert control.helper is FTP  # resolved from the record's name
    # failover: b sees the traffic now
    data = [
        tcp4(20, 52001, PSH | ACK, 101, 901, src=S4, dst=C4, payload=b"d" * 500),
        tcp4(52001, 20, ACK, 901, 601, src=C4, dst=S4),
    ]
    assert [b.process_ip(p, 6.0)[:2] for p in data] == [(EST, 0), (EST, 1)]
    st_, d, conn = b.process_ip(tcp4(43000, 52002, SYN, 1, src=C4, dst=S4), 6.0)
    assert (st_, d) == (REL, 0) and conn is not None and conn.master is control
    port = b"PORT " + _hp(C4, 52003) + b"\r\n"
    assert b.process_ip(ctl._pkt(True, ACK | PSH, ctl.cseq, ctl.sseq, port), 6.1)[0] == EST
    st_, _, _ = b.process_ip(tcp4(20, 52003, SYN, 1, src=S4, dst=C4), 6.2)
    assert st_ == REL


def test_expectation_records_round_trip_through_the_codec() -> None:
    a = Engine(ftp_helper=True)
    b = Engine(ftp_helper=True)
    _, master = _pending_port(a, 42100, 52100)
    ta, tb = EngineTable(a), EngineTable(b)
    [rec] = ta.expectations(10.0)
    assert rec.helper == "ftp" and rec.master == master.key and rec.timeout_ms == 290_000
    wire = encode_exp_update(rec)
    [back] = decode_body(PacketType.SYNC, wire)  # type: ignore[misc]
    assert back == rec
    assert not tb.apply_expect(back, 10.0, authoritative=True)  # no master there yet
    tb.insert(new_conn(conn_to_record(master, 10.0), 10.0, resolve_helper=tb.resolve_helper), 10.0)
    assert tb.apply_expect(back, 10.0, authoritative=True)
    [exp] = b.expectations(10.0)
    assert exp.expires == pytest.approx(300.0) and exp.master.key == master.key
    assert format_expect_line(exp, 10.0) == format_expect_line(a.expectations(10.0)[0], 10.0)
    # a non-authoritative copy keeps the local one; an authoritative one replaces it
    later = ExpRecord(rec.proto, rec.key, rec.mask, rec.master, 100_000, 0, 0, "ftp")
    assert not tb.apply_expect(later, 20.0, authoritative=False)
    assert tb.apply_expect(later, 20.0, authoritative=True)
    assert [e.expires for e in b.expectations(20.0)] == [120.0]
    assert tb.delete_expect(exp_delete_record(b.expectations(20.0)[0]))
    assert b.expectations(20.0) == [] and not tb.delete_expect(exp_delete_record(exp))


# ---------------------------------------------------------------------------------- kernel


def _golden(name: str):  # type: ignore[no-untyped-def]
    return parse_oracle_tsv((GOLDEN / f"{name}.tsv").read_text())


def test_committed_capture_is_what_build_cases_makes(tmp_path: Path) -> None:
    fresh = tmp_path / "cases.pcap"
    write_pcap(fresh)
    assert fresh.read_bytes() == CASES_PCAP.read_bytes()


def test_cases_capture_agrees_with_the_kernel() -> None:
    """Every row equal, except the packets the helper drops: the kernel logged their ct state
    (established) before its helper dropped them at confirmation; pmct reports the drop as
    INVALID with the kernel's own message (helpers/ftp.py, DEVIATION)."""
    kernel = _golden(CASES_PCAP.name)
    assert kernel.mode.startswith("bridge") and "ftp-helper" in kernel.mode
    packets, cases = build_cases()
    rep = replay_capture(CASES_PCAP, ftp_helper=True, clock="paced")
    res = compare(kernel.rows, rep.rows, CASES_PCAP.name)
    dropped = sorted(i for c in cases for i in c.dropped)
    assert [i for i, _, _ in res.diffs] == dropped
    for _, k, p in res.diffs:
        assert k is not None and p is not None
        assert k.ctstate == "established" and p.ctstate == "invalid"
        assert k.note.startswith(p.note)  # "nf_ct_ftp: dropping packet: partial matching of"
    assert res.status_agree == res.agree == res.packets - len(dropped)
    assert res.packets == len(packets)
    # and what the cases predict for each data connection is what the kernel did
    for c in cases:
        for i, want in c.data_syns.items():
            assert kernel.rows[i].ctstate == want, c.name


# `conntrack -L expect -f ipv6` in the oracle's firewall namespace after the same replay (the
# oracle's own dump lists IPv4 only, conntrack-tools' default family for expectations)
KERNEL_EXPECT_V6 = (
    "proto=6 src=2001:db8:1::2 dst=2001:db8::1 sport=0 dport=50036 "
    "mask-src=ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
    "mask-dst=ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff sport=0 dport=65535 "
    "master-src=2001:db8::1 master-dst=2001:db8:1::2 sport=40036 dport=21 class=0 helper=ftp"
)


def test_pending_expectations_print_like_conntrack_L_expect() -> None:
    kernel = _golden(CASES_PCAP.name)
    want = [line.split(" ", 1)[1] for line in kernel.ct_lines if " proto=" in line[:20]]
    assert len(want) == 1
    want.append(KERNEL_EXPECT_V6)
    rep = replay_capture(CASES_PCAP, ftp_helper=True, clock="paced")
    lines = [format_expect_line(e, rep.now) for e in rep.engine.expectations(rep.now)]
    # everything but the seconds left, which depend on the replay's pace
    assert sorted(line.split(" ", 1)[1] for line in lines) == sorted(want)
    assert all(line.startswith(("299 ", "300 ")) for line in lines)


def test_control_entries_print_helper_ftp_like_conntrack_L() -> None:
    kernel = _golden(CASES_PCAP.name)
    rep = replay_capture(CASES_PCAP, ftp_helper=True, clock="paced")
    ctl = [c for c in rep.engine.table if c.helper is not None]
    assert ctl and all("helper=ftp" in format_conntrack_line(c, rep.now) for c in ctl)
    entries = [line for line in kernel.ct_lines if line.startswith("tcp ")]
    assert sum("helper=ftp" in line for line in entries) == len(ctl)


def _shared_trace(name: str) -> Path | None:
    from pmct.fidelity import default_traces

    return next((t for t in default_traces() if t.name == name), None)


FTP_TRACES = sorted(p.name[: -len(".tsv")] for p in GOLDEN.glob("*.tsv"))
LOCAL = CASES_PCAP.parent


@pytest.mark.parametrize("name", [n for n in FTP_TRACES if n != CASES_PCAP.name])
def test_ftp_traces_agree_with_the_kernel(name: str) -> None:
    """The public FTP captures, and ftp_real_curl.pcap (curl against pyftpdlib in two
    namespaces, recorded by record_ftp_curl.sh): every packet as the kernel said."""
    trace = LOCAL / name if (LOCAL / name).is_file() else _shared_trace(name)
    if trace is None:
        pytest.skip(f"{name} not found in shared/traces (or $PMCT_TRACES)")
    kernel = _golden(name)
    assert "ftp-helper" in kernel.mode and kernel.frames == sum(1 for _ in iter_frames(trace))
    rep = replay_capture(trace, ftp_helper=True, clock="paced")
    res = compare(kernel.rows, rep.rows, name)
    assert res.diffs == [], f"{len(res.diffs)} packets differ, first: {res.diffs[:3]}"
    assert res.status_agree == res.agree
    related = sum(1 for r in kernel.rows.values() if r.ctstate == "related")
    assert related == sum(1 for r in rep.rows if r.ctstate == "related")


def test_real_curl_session_relates_every_data_connection() -> None:
    """EPSV, PASV, EPSV listing, EPRT |1|, PORT, EPSV over IPv6, EPRT |2|, active IPv6
    listing: eight data connections, each RELATED on its first packet."""
    rep = replay_capture(LOCAL / "ftp_real_curl.pcap", ftp_helper=True, clock="paced")
    assert sum(r.ctstate == "related" for r in rep.rows) == 8
    assert sum(r.ctstate == "new" for r in rep.rows) == 8  # the control connections
    assert rep.engine.expectations(rep.now) == []


def test_golden_set_is_complete() -> None:
    assert {
        "ftp_pasv_retr.pcap",
        "ftp_v4_multi.pcap",
        "ftp_v4_port_pasv.pcap",
        "ftp_v6_eprt_epsv.pcap",
        "ftp_v6_multi.pcap",
        "frag_ftp_port.pcap",
        "mix_office.pcap",
        CASES_PCAP.name,
        "ftp_real_curl.pcap",
    } <= set(FTP_TRACES)


if __name__ == "__main__":  # PYTHONPATH=tests python tests/unit/conntrack/test_helper_ftp.py OUT
    import sys

    write_pcap(Path(sys.argv[1]))
