"""Replay a capture file through the engine: pmct's verdict on every packet, offline.

This is the shell around the pure engine for captures, the same job the kernel oracle
(shared/tools/kernel_oracle.py) does for Linux nf_conntrack, so the two outputs can be diffed
row by row (pmct/fidelity.py does exactly that).

Rules:
1. File I/O lives here only: the engine gets IP datagrams and a clock value, nothing else
   (kernel analogue: the hooks hand nf_conntrack_in() an skb, conntrack never reads a socket).
2. Reading: pcap (micro- or nanosecond, either byte order) and pcapng through dpkt, either of
   them gzipped (detected by magic, not by file name). The capture's link type is honoured:
   pmct.wire.link.ip_from_frame() takes the IP datagram out of each frame, and
   repair_captured() undoes the capture artefacts the oracle's injector also undoes (a frame
   cut by the snap length is zero-filled to its IP length, a TSO length 0 is fixed): the
   packet on the wire was whole, so that is what a firewall would have tracked.
3. Rows use the oracle's column names and values (its README, "Output"): idx counts every frame,
   a frame without an IP datagram gets no row; then ctstate, dir, l4state, timeout, status and
   a note (the INVALID / drop reason). Columns the oracle shows as ``-`` are ``-`` here too:
   dir, l4state, timeout and status of invalid/untracked/frag/dropped packets; the entry
   columns of a packet that deleted its own entry (oracle note ``entry-gone``).
4. ``format_conntrack_line`` prints an entry the way ``conntrack -L`` (conntrack-tools, through
   libnetfilter_conntrack's default snprintf) does, so a final table can be compared with the
   oracle's ``# ct:`` lines.

The clock: ``capture`` feeds each packet's capture timestamp (what a firewall on that wire
would have seen); ``paced`` feeds the first timestamp plus idx / PACED_RATE, the pace of the
oracle's as-fast-as-possible replay, in which no timeout ever fires (see docs/fidelity.md).
"""

from __future__ import annotations

import gzip
import socket
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final, NamedTuple

import dpkt

from pmct.conntrack.conn import Conn
from pmct.conntrack.constants import CTSTATE_NAMES, DIR_NAMES, TCP_STATE_NAMES, CtState, Status
from pmct.conntrack.core import Engine
from pmct.conntrack.expect import Expectation
from pmct.conntrack.keys import (
    IPPROTO_DCCP,
    IPPROTO_GRE,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPPROTO_UDPLITE,
    Tuple,
)
from pmct.conntrack.proto.sctp import SCTP_STATE_NAMES
from pmct.conntrack.settings import Settings
from pmct.wire.link import ip_from_frame, repair_captured

__all__ = [
    "CLOCKS",
    "COLUMNS",
    "PACED_RATE",
    "CaptureError",
    "Frame",
    "Replay",
    "Row",
    "format_conntrack_line",
    "format_expect_line",
    "format_table",
    "format_tsv",
    "iter_frames",
    "open_capture",
    "replay_capture",
    "replay_frames",
    "seconds_left",
    "status_text",
]

COLUMNS: Final = ("idx", "ctstate", "dir", "l4state", "timeout", "status", "note")
CLOCKS: Final = ("capture", "paced")
# The oracle's measured pace (its README: 7,000-10,000 IP packets/s with entry reads).
PACED_RATE: Final = 10_000.0

_GZIP_MAGIC: Final = b"\x1f\x8b"
_PCAPNG_MAGIC: Final = b"\x0a\x0d\x0d\x0a"

_NO_ENTRY: Final = frozenset(
    {
        int(CtState.INVALID),
        int(CtState.UNTRACKED),
        int(CtState.HELD),
        int(CtState.DROPPED),
    }
)
_DYING: Final = int(Status.DYING)
_SEEN_REPLY: Final = int(Status.SEEN_REPLY)
_ASSURED: Final = int(Status.ASSURED)
_OFFLOAD: Final = int(Status.OFFLOAD)
# (bit, name) in bit order, CONFIRMED left out: every entry the engine returns is confirmed,
# and the oracle leaves it out for the same reason.
_STATUS_BITS: Final = tuple(
    (int(s), str(s.name)) for s in Status if s is not Status.CONFIRMED and s.name is not None
)

# libnetfilter_conntrack proto names (src/conntrack/proto.c); others print "unknown".
_PROTO_NAMES: Final = {
    IPPROTO_TCP: "tcp",
    IPPROTO_UDP: "udp",
    IPPROTO_UDPLITE: "udplite",
    IPPROTO_ICMP: "icmp",
    IPPROTO_ICMPV6: "icmpv6",
    IPPROTO_SCTP: "sctp",
    IPPROTO_DCCP: "dccp",
    IPPROTO_GRE: "gre",
}
_PORTED: Final = frozenset({IPPROTO_TCP, IPPROTO_UDP, IPPROTO_UDPLITE, IPPROTO_SCTP})
# kernel NF_CT_EXPECT_PERMANENT / INACTIVE / USERSPACE, in libnetfilter_conntrack's order
_EXPECT_FLAGS: Final = ((1, "PERMANENT"), (2, "INACTIVE"), (4, "USERSPACE"))


# ---------------------------------------------------------------------------------- reading


class CaptureError(Exception):
    """The file is not a capture pmct can read (a local mistake, not bad traffic)."""


class Frame(NamedTuple):
    """One captured frame: position in the file, capture time, link type, bytes."""

    idx: int
    ts: float
    linktype: int
    data: bytes


def open_capture(path: str | Path) -> BinaryIO:
    """Open a capture for reading, transparently un-gzipping it (detected by magic)."""
    f: BinaryIO = open(path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
    if f.read(2) == _GZIP_MAGIC:
        f.close()
        return gzip.open(path, "rb")  # type: ignore[return-value]
    f.seek(0)
    return f


def iter_frames(path: str | Path) -> Iterator[Frame]:
    """Every frame of a pcap or pcapng file (gzipped or not), in file order.

    pcapng: dpkt reads the link type and timestamp resolution of the first interface only;
    a file whose interfaces differ in link type is read as if all were the first. A record cut
    off at the end of the file (a capture that was still being written) ends the iteration.

    Raises:
        CaptureError: the file has no pcap/pcapng header.
    """
    with open_capture(path) as f:
        reader: dpkt.pcapng.Reader | dpkt.pcap.Reader
        try:
            magic = f.read(4)
            f.seek(0)
            reader = dpkt.pcapng.Reader(f) if magic == _PCAPNG_MAGIC else dpkt.pcap.Reader(f)
        except (ValueError, dpkt.UnpackError, EOFError, OSError) as e:
            raise CaptureError(f"{path}: not a pcap or pcapng capture ({e})") from None
        linktype = int(reader.datalink())
        it = enumerate(reader)
        while True:
            try:
                idx, (ts, buf) = next(it)
            except StopIteration:
                return
            except (EOFError, dpkt.NeedData):  # cut off mid-record (or mid-gzip-stream)
                return
            except (OSError, ValueError, dpkt.UnpackError) as e:
                raise CaptureError(f"{path}: unreadable after {idx + 1} frames ({e})") from None
            yield Frame(idx, float(ts), linktype, buf)


# ---------------------------------------------------------------------------------- rows


@dataclass(frozen=True, slots=True)
class Row:
    """One packet's verdict, in the oracle's columns (all text, ``-`` for "none")."""

    idx: int
    ctstate: str
    dir: str
    l4state: str
    timeout: str
    status: str
    note: str

    def cells(self) -> tuple[str, ...]:
        return (
            str(self.idx),
            self.ctstate,
            self.dir,
            self.l4state,
            self.timeout,
            self.status,
            self.note,
        )


def seconds_left(conn: Conn, now: float) -> int:
    """Whole seconds until the entry expires, rounded down like ctnetlink's timeout.

    The 1 µs tolerance absorbs float noise: an entry refreshed at ``now`` with 120 s prints
    120, not 119, whatever the magnitude of the capture timestamps.
    """
    return max(0, int(conn.expires - now + 1e-6))


def status_text(status: int) -> str:
    """Status bit names except CONFIRMED, comma separated, ``-`` if none (oracle format)."""
    names = [name for bit, name in _STATUS_BITS if status & bit]
    return ",".join(names) if names else "-"


def l4state_text(conn: Conn) -> str:
    if conn.proto == IPPROTO_TCP:
        return TCP_STATE_NAMES[conn.state]
    if conn.proto == IPPROTO_SCTP:
        return SCTP_STATE_NAMES[conn.state]
    return "-"


def verdict_row(
    idx: int, verdict: tuple[int, int, Conn | None], now: float, reason: str | None
) -> Row:
    """The row for one packet, given the engine's verdict and ``engine.last_reason``."""
    ctstate, d, conn = verdict
    name = CTSTATE_NAMES[ctstate]
    note = reason or "-"
    if conn is None or ctstate in _NO_ENTRY:
        return Row(idx, name, "-", "-", "-", "-", note)
    dname = DIR_NAMES[d]
    if conn.status & _DYING:
        # The packet deleted its own entry (RST answering a SYN, ...): the oracle cannot read
        # the entry any more and says "entry-gone"; so do we.
        return Row(idx, name, dname, "-", "-", "-", "entry-gone")
    return Row(
        idx,
        name,
        dname,
        l4state_text(conn),
        str(seconds_left(conn, now)),
        status_text(conn.status),
        note,
    )


@dataclass(slots=True)
class Replay:
    """What a replay leaves behind: the rows, the engine (for the final table), the clock."""

    rows: list[Row]
    engine: Engine
    frames: int
    now: float


def replay_frames(engine: Engine, frames: Iterable[Frame], clock: str = "capture") -> Replay:
    """Feed frames to ``engine`` in order; frames without an IP datagram get no row."""
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {CLOCKS}, not {clock!r}")
    paced = clock == "paced"
    rows: list[Row] = []
    process = engine.process_ip
    n = 0
    now = 0.0
    t0: float | None = None
    for idx, ts, linktype, data in frames:
        n += 1
        if t0 is None:
            t0 = ts
        now = t0 + idx / PACED_RATE if paced else ts
        ip = ip_from_frame(data, linktype)
        if ip is None:
            continue
        verdict = process(repair_captured(ip), now)
        rows.append(verdict_row(idx, verdict, now, engine.last_reason))
    return Replay(rows, engine, n, now)


def replay_capture(
    path: str | Path,
    *,
    ftp_helper: bool = False,
    clock: str = "capture",
    settings: Settings | None = None,
) -> Replay:
    """Replay a capture file through a fresh Engine."""
    engine = Engine(settings, ftp_helper=ftp_helper)
    return replay_frames(engine, iter_frames(path), clock)


# ---------------------------------------------------------------------------------- output


def state_counts(rows: Iterable[Row]) -> str:
    """``established=9 new=1``: ctstates by count (the oracle's ``# states:`` line)."""
    counts = Counter(r.ctstate for r in rows)
    return " ".join(f"{k}={v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def format_tsv(rep: Replay, *, dump: bool = False) -> Iterator[str]:
    """Lines of the oracle's TSV shape: a ``# columns:`` line, rows, ``#`` footer lines."""
    yield "# columns: " + "\t".join(COLUMNS)
    for row in rep.rows:
        yield "\t".join(row.cells())
    yield f"# frames={rep.frames} ip={len(rep.rows)} non_ip_skipped={rep.frames - len(rep.rows)}"
    yield f"# states: {state_counts(rep.rows)}"
    if dump:
        conns = list(rep.engine.table)
        yield f"# conntrack -L ({len(conns)} lines)"
        for conn in conns:
            yield "# ct: " + format_conntrack_line(conn, rep.now)


def format_table(rep: Replay, *, dump: bool = False) -> Iterator[str]:
    """Aligned columns for people; the same rows as TSV."""
    cells = [COLUMNS, *(r.cells() for r in rep.rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS) - 1)]
    for c in cells:
        yield "  ".join(c[i].ljust(widths[i]) for i in range(len(widths))) + "  " + c[-1]
    yield ""
    yield (
        f"{rep.frames} frames, {len(rep.rows)} IP packets, "
        f"{rep.frames - len(rep.rows)} without IP: {state_counts(rep.rows) or 'nothing tracked'}"
    )
    if dump:
        conns = list(rep.engine.table)
        yield ""
        yield f"conntrack -L ({len(conns)} entries):"
        for conn in conns:
            yield format_conntrack_line(conn, rep.now)


def _addr(t: Tuple, b: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if t.l3 == 4 else socket.AF_INET6, b)


def _tuple_text(t: Tuple, src: str = "src", dst: str = "dst") -> str:
    """One direction, as libnetfilter_conntrack's __snprintf_address + __snprintf_proto."""
    head = f"{src}={_addr(t, t.src)} {dst}={_addr(t, t.dst)}"
    if t.proto in _PORTED:
        return f"{head} sport={t.sport} dport={t.dport}"
    if t.proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        return f"{head} type={t.dport >> 8} code={t.dport & 0xFF} id={t.sport}"
    if t.proto == IPPROTO_GRE:
        return f"{head} srckey={t.sport:#x} dstkey={t.dport:#x}"
    return head


def _helper_name(helper: object) -> str | None:
    if helper is None:
        return None
    if isinstance(helper, str):
        return helper
    name = getattr(helper, "name", None)
    return str(name) if name else None


def format_conntrack_line(conn: Conn, now: float, *, use: int = 1, show_id: bool = False) -> str:
    """One entry as ``conntrack -L`` prints it, e.g.

    ``tcp      6 431999 ESTABLISHED src=10.0.0.1 dst=10.0.0.2 sport=5000 dport=80
    src=10.0.0.2 dst=10.0.0.1 sport=80 dport=5000 [ASSURED] mark=0 use=1``

    Field order follows libnetfilter_conntrack's __snprintf_conntrack_default(): protocol name
    padded to 8 and number, timeout, protocol state (TCP, SCTP), original tuple, [UNREPLIED]
    when no reply was seen, reply tuple, [ASSURED], [OFFLOAD], mark, helper, use, id.
    ``use`` is the kernel's reference count, which pmct does not keep: the caller may pass it.
    """
    proto = conn.proto
    parts = [f"{_PROTO_NAMES.get(proto, 'unknown'):<8} {proto} {seconds_left(conn, now)}"]
    if proto in (IPPROTO_TCP, IPPROTO_SCTP):
        parts.append(l4state_text(conn))
    status = conn.status
    parts.append(_tuple_text(conn.orig))
    if not status & _SEEN_REPLY:
        parts.append("[UNREPLIED]")
    parts.append(_tuple_text(conn.reply))
    if status & _ASSURED:
        parts.append("[ASSURED]")
    if status & _OFFLOAD:
        parts.append("[OFFLOAD]")
    parts.append(f"mark={conn.mark}")
    helper = _helper_name(conn.helper)
    if helper:
        parts.append(f"helper={helper}")
    parts.append(f"use={use}")
    if show_id:
        parts.append(f"id={conn.id}")
    return " ".join(parts)


def format_expect_line(exp: Expectation, now: float) -> str:
    """One expectation as ``conntrack -L expect`` prints it, e.g.

    ``299 proto=6 src=198.51.100.2 dst=192.0.2.1 sport=0 dport=40001
    mask-src=255.255.255.255 mask-dst=255.255.255.255 sport=0 dport=65535
    master-src=192.0.2.1 master-dst=198.51.100.2 sport=40000 dport=21 class=0 helper=ftp``

    Field order follows libnetfilter_conntrack's __snprintf_expect_default(): timeout (whole
    seconds left, rounded down as ctnetlink_exp_dump_expect() does), protocol, the expected
    tuple, the mask (ctnetlink_exp_dump_mask() sends the destination half as all ones), the
    master's original tuple, flags, class, the master's helper.
    """
    left = max(0, int(exp.expires - now + 1e-6))
    parts = [f"{left} proto={exp.proto}"]
    parts.append(_tuple_text(Tuple(exp.l3, exp.proto, exp.src, exp.dst, exp.sport, exp.dport)))
    ones = b"\xff" * len(exp.dst)
    mask = Tuple(exp.l3, exp.proto, exp.src_mask, ones, exp.sport_mask, 0xFFFF)
    parts.append(_tuple_text(mask, "mask-src", "mask-dst"))
    parts.append(_tuple_text(exp.master.orig, "master-src", "master-dst"))
    flags = [name for bit, name in _EXPECT_FLAGS if exp.flags & bit]
    if flags:
        parts.append(",".join(flags))
    parts.append(f"class={exp.klass}")
    helper = _helper_name(exp.master.helper)
    if helper:
        parts.append(f"helper={helper}")
    return " ".join(parts)
