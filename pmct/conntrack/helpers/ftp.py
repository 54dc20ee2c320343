"""The FTP helper: read the control channel, expect the data connection
(kernel net/netfilter/nf_conntrack_ftp.c, include/linux/netfilter/nf_conntrack_ftp.h).

What the kernel does, and so what this module does:

- Only packets that carry data on an entry that has seen traffic both ways are read
  ("Until there's been traffic both ways, don't look in packets": ctinfo ESTABLISHED or
  ESTABLISHED_REPLY).
- A packet is parsed only if it *starts right after a newline* of the same direction: the
  helper remembers, per direction, up to two sequence numbers that follow a segment ending in
  ``\\n`` (``seq_aft_nl``, NUM_SEQ_TO_REMEMBER = 2; a newer one replaces the older of the two).
  The first data of each direction (the server's banner, the client's USER) is therefore never
  parsed, and a command split across two segments is not seen in its second half.
- Only the beginning of the packet is matched, case-insensitively, against a per-direction
  pattern table (``search[dir][]``): ``PORT``/``EPRT`` from the client (original direction),
  ``227 ``/``229 `` from the server (reply direction). A packet that looks like the start of
  a command but ends before it is complete (a *partial match*: "PORT 10,0,0" with no ``\\r``,
  or a packet that is only "PO") is DROPPED, so the sender retransmits it, hopefully whole
  ("We don't usually drop packets. After all, this is connection tracking, not packet
  filtering. However, it is necessary for accurate tracking in this case.").
- A match expects a TCP connection from the *other* side's address (any source port) to the
  announcing side's address and the announced port (nf_ct_expect_init() with the tuples of
  ``!dir``). If the announced address differs from the announcing side's own address, nothing
  is expected (module parameter ``loose`` = 0: "DMZ machines opening holes to internal
  networks, or the packet filter itself").
- The expectation policy: at most 1 pending per master (the newest wins), 5 minutes.

Parsing quirks kept on purpose (they decide verdicts): numbers are 32-bit with wraparound,
the port is the low 16 bits of ``p1 << 8 | p2``; PORT/227 on an IPv6 control connection
overwrite only the first four bytes of the address (so they never match); the EPRT address is
parsed with the kernel's own in4_pton()/in6_pton() state machine, transcribed below.

NAT (kernel nf_nat_ftp_hook): when ``FtpHelper.nat_hook`` is set (pmct/nat/ftp.py
``enable_ftp_nat()``) and the entry is NATed (SRC_NAT or DST_NAT), a match is handed to the hook
with its type and the offset and length of the address text, exactly where the kernel calls
nf_nat_ftp(); the hook registers the (possibly re-ported) expectation itself. None (the default)
leaves this helper as it was.

Per-connection data (kernel struct nf_ct_ftp_master) lives in ``conn.extra["ftp"]`` as an
``FtpInfo``. An entry that has the FTP helper but no FtpInfo was injected from the peer
(ct_sync carries the helper's name, not its data): it gets SEQ_PICKUP in both directions, as
the kernel's nf_ct_ftp_from_nlattr() does for entries created through ctnetlink, so "the first
FTP command after the failover" is parsed wherever it starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from pmct.conntrack.constants import Status
from pmct.conntrack.expect import expect_init
from pmct.conntrack.helpers.base import ESTABLISHED, ExpectPolicy, Helper
from pmct.conntrack.keys import IPPROTO_TCP
from pmct.serial import MASK32, after, before

if TYPE_CHECKING:
    from collections.abc import Callable

    from pmct.conntrack.conn import Conn
    from pmct.conntrack.expect import Expectation, ExpectTable

    # kernel nf_nat_ftp_hook: (conn, dir, ftptype, datagram, payload start, payload end,
    # matchoff, matchlen, seq, expectation, expectations, now) -> drop reason or None
    NatFtpHook = Callable[
        [Conn, int, int, bytes, int, int, int, int, int, Expectation, ExpectTable, float],
        str | None,
    ]

__all__ = [
    "EXTRA_KEY",
    "FTP_POLICY",
    "FtpHelper",
    "FtpInfo",
    "find_pattern",
    "in4_pton",
    "in6_pton",
]

EXTRA_KEY: Final = "ftp"
NUM_SEQ_TO_REMEMBER: Final = 2
FTP_PORT: Final = 21
FTP_POLICY: Final = ExpectPolicy(max_expected=1, timeout=5 * 60.0)  # ftp_exp_policy

_NL: Final = 0x0A
_CR: Final = 0x0D
_NAT_MASK: Final = int(Status.SRC_NAT | Status.DST_NAT)

# kernel enum nf_ct_ftp_type (what nf_nat_ftp formats)
FTP_PORT_CMD: Final = 0  # NF_CT_FTP_PORT
FTP_PASV: Final = 1  # NF_CT_FTP_PASV (227)
FTP_EPRT: Final = 2  # NF_CT_FTP_EPRT
FTP_EPSV: Final = 3  # NF_CT_FTP_EPSV (229)


class FtpInfo:
    """kernel struct nf_ct_ftp_master: per direction, the sequence numbers just after a newline
    (at most two) and the SEQ_PICKUP flag."""

    __slots__ = ("pickup", "seqs")

    def __init__(self, pickup: bool = False) -> None:
        self.seqs: tuple[list[int], list[int]] = ([], [])
        self.pickup = [pickup, pickup]

    def __repr__(self) -> str:
        return f"FtpInfo(seqs={self.seqs}, pickup={self.pickup})"


@dataclass(slots=True)
class _Cmd:
    """kernel struct nf_conntrack_man: what a command announces (address, port); plus the
    kernel's matchoff / matchlen (where the numbers are in the payload, for NAT)."""

    l3: int
    addr: bytearray
    port: int = 0
    off: int = 0
    length: int = 0


# ---------------------------------------------------------------------------------- numbers


def _isdigit(c: int) -> bool:
    return 48 <= c <= 57


def _try_number(data: bytes, start: int, size: int, sep: int, term: int) -> tuple[int, list[int]]:
    """kernel try_number(data + start, dlen - start, ...): ``size`` numbers separated by
    ``sep`` and ended by ``term`` (any non-digit when ``term`` is 0). Returns (length up to
    the terminator, numbers), length 0 on failure, including "ran out of data"."""
    arr = [0] * size
    i = 0
    p = start
    n = len(data)
    while p < n and i < size:
        c = data[p]
        if 48 <= c <= 57:
            arr[i] = (arr[i] * 10 + c - 48) & MASK32
        elif c == sep:
            i += 1
        else:
            if (c == term or not term) and i == size - 1:
                return p - start, arr
            return 0, arr
        p += 1
    return 0, arr


def _try_rfc959(data: bytes, cmd: _Cmd, term: int) -> int:
    """kernel try_rfc959(): "h1,h2,h3,h4,p1,p2" (PORT, and 227 via try_rfc1123)."""
    length, a = _try_number(data, 0, 6, 0x2C, term)
    if not length:
        return 0
    ip = ((a[0] << 24) | (a[1] << 16) | (a[2] << 8) | a[3]) & MASK32
    cmd.addr[0:4] = ip.to_bytes(4, "big")  # u3.ip: the first 4 bytes, even for IPv6
    cmd.port = ((a[4] << 8) | a[5]) & 0xFFFF
    return length


def _try_rfc1123(data: bytes, cmd: _Cmd, term: int) -> int:
    """kernel try_rfc1123(): the 227 reply; scan for the first digit (RFC 1123 4.1.2.6)."""
    for i, c in enumerate(data):
        if _isdigit(c):
            cmd.off += i  # kernel: *offset += i
            return _try_rfc959(data[i:], cmd, 0)
    return 0


def _get_port(data: bytes, start: int, delim: int, cmd: _Cmd) -> int:
    """kernel get_port(): digits up to ``delim``; a 16-bit number that must not be 0."""
    tmp = 0
    for i in range(start, len(data)):
        c = data[i]
        if c == delim:
            if tmp == 0:
                break
            cmd.port = tmp
            return i + 1
        if 48 <= c <= 57:
            tmp = (tmp * 10 + c - 48) & 0xFFFF
        else:
            break
    return 0


def _valid_delim(c: int) -> bool:
    # kernel: isdigit(delim) || delim < 33 || delim > 126 rejects (a signed char above 127
    # is negative, hence "< 33")
    return 33 <= c <= 126 and not _isdigit(c)


def _try_eprt(data: bytes, cmd: _Cmd, term: int) -> int:
    """kernel try_eprt(): "|1|132.235.1.2|6275|" or "|2|3ffe::1|6275|"."""
    dlen = len(data)
    if dlen <= 3:
        return 0
    delim = data[0]
    if not _valid_delim(delim) or data[2] != delim:
        return 0
    if (cmd.l3 == 4 and data[1] != 0x31) or (cmd.l3 == 6 and data[1] != 0x32):
        return 0
    if data[1] == 0x31:
        length, a = _try_number(data, 3, 4, 0x2E, delim)
        if length:
            ip = ((a[0] << 24) | (a[1] << 16) | (a[2] << 8) | a[3]) & MASK32
            cmd.addr[0:4] = ip.to_bytes(4, "big")
    else:
        end, addr = in6_pton(data, 3, min(dlen - 3, 0xFFFF), delim)
        length = 0
        if addr is not None:
            cmd.addr[0:16] = addr
            length = end - 3
    if not length:
        return 0
    # "Start offset includes initial "|1|", and trailing delimiter"
    return _get_port(data, 3 + length + 1, delim, cmd)


def _try_epsv_response(data: bytes, cmd: _Cmd, term: int) -> int:
    """kernel try_epsv_response(): "|||6446|" (the address is the server's own)."""
    if len(data) <= 3:
        return 0
    delim = data[0]
    if not _valid_delim(delim) or data[1] != delim or data[2] != delim:
        return 0
    return _get_port(data, 3, delim, cmd)


# ---------------------------------------------------------------------------------- in6_pton
# net/core/utils.c, transcribed: xdigit2bin(), in4_pton(), in6_pton(). Offsets replace
# pointers; ``srclen`` runs down exactly as there (past it, a NUL is read, which is a delimiter).

_XDIGIT: Final = 0x00010000
_DIGIT: Final = 0x00020000
_COLON_MASK: Final = 0x00700000
_COLON_1: Final = 0x00100000
_COLON_2: Final = 0x00200000
_COLON_1_2: Final = 0x00400000
_DOT: Final = 0x00800000
_DELIM: Final = 0x10000000
_NULL: Final = 0x20000000
_UNKNOWN: Final = 0x40000000

_HEX: Final = tuple(
    c - 48 if 48 <= c <= 57 else c - 87 if 97 <= c <= 102 else c - 55 if 65 <= c <= 70 else -1
    for c in range(256)
)


def _xdigit2bin(c: int, delim: int) -> int:
    if c == delim or c == 0:
        return _DELIM
    if c == 0x3A:
        return _COLON_MASK
    if c == 0x2E:
        return _DOT
    val = _HEX[c]
    if val >= 0:
        return val | _XDIGIT | (_DIGIT if val < 10 else 0)
    return _UNKNOWN  # delim is never -1 here


def in4_pton(data: bytes, start: int, srclen: int, delim: int) -> tuple[int, bytes | None]:
    """kernel in4_pton(): (end offset, 4 bytes) or (end offset, None)."""
    s = start
    dbuf = bytearray(4)
    d = 0
    i = 0
    w = 0
    seen = False  # the kernel's w also carries the digit flag bits: w != 0 <=> a digit seen
    n = len(data)
    while True:
        c = _xdigit2bin(data[s] if srclen > 0 and s < n else 0, delim)
        if not c & (_DIGIT | _DOT | _DELIM | _COLON_MASK):
            return s, None
        if c & (_DOT | _DELIM | _COLON_MASK):
            if not seen:
                return s, None
            dbuf[d] = w & 0xFF
            d += 1
            w = 0
            seen = False
            i += 1
            if c & (_DELIM | _COLON_MASK):
                if i != 4:
                    return s, None
                break
        else:
            w = (w * 10 + (c & 0xFF)) & 0xFFFF
            seen = True
            if w > 255:
                return s, None
        if i >= 4:
            return s, None
        s += 1
        srclen -= 1
    return s, bytes(dbuf)


def in6_pton(data: bytes, start: int, srclen: int, delim: int) -> tuple[int, bytes | None]:
    """kernel in6_pton(): (end offset, 16 bytes) or (end offset, None); ``end`` is the offset
    of the delimiter on success (the kernel's ``*end``)."""
    s = start
    tok = -1
    dbuf = bytearray(16)
    d = 0
    dc = -1
    state = _COLON_1_2 | _XDIGIT | _NULL
    w = 0
    n = len(data)
    while True:
        c = _xdigit2bin(data[s] if srclen > 0 and s < n else 0, delim)
        if not c & state:
            return s, None
        if c & (_DELIM | _COLON_MASK):
            # process one 16-bit word
            if not state & _NULL:
                if d + 2 > 16:  # unreachable by the state rules; never index out of range
                    return s, None
                dbuf[d] = (w >> 8) & 0xFF
                dbuf[d + 1] = w & 0xFF
                d += 2
            w = 0
            if c & _DELIM:
                break  # we've processed the last word
            colon = state & _COLON_MASK
            if colon == _COLON_2:
                dc = d
                state = _XDIGIT | _DELIM
                if dc >= 16:
                    state |= _NULL
            elif colon == _COLON_1 | _COLON_1_2:
                state = _XDIGIT | _COLON_2
            elif colon == _COLON_1:
                state = _XDIGIT
            elif colon == _COLON_1_2:
                state = _COLON_2
            else:
                state = 0
            tok = s + 1
        elif c & _DOT:
            t = tok if tok >= 0 else s
            s, four = in4_pton(data, t, srclen + (s - t), delim)
            if four is None or d + 4 > 16:
                return s, None
            dbuf[d : d + 4] = four
            d += 4
            break
        else:
            w = (w << 4) | (c & 0xFF)
            state = _COLON_1 | _DELIM
            if not w & 0xF000:
                state |= _XDIGIT
            if dc < 0 and d + 2 < 16:
                state |= _COLON_1_2
                state &= ~_DELIM
            if d + 2 >= 16:
                state &= ~(_COLON_1 | _COLON_1_2)
        # cont:
        if (dc >= 0 and d + 4 < 16) or d + 4 == 16:
            state |= _DOT
        if d >= 16:
            state &= ~(_XDIGIT | _COLON_MASK)
        s += 1
        srclen -= 1
    if dc < 0:
        return s, bytes(dbuf)
    out = bytearray(16)
    i = 15
    d -= 1
    while d >= dc:
        out[i] = dbuf[d]
        i -= 1
        d -= 1
    while i >= dc:
        out[i] = 0
        i -= 1
    while i >= 0:
        out[i] = dbuf[d]
        i -= 1
        d -= 1
    return s, bytes(out)


# ---------------------------------------------------------------------------------- patterns


@dataclass(frozen=True, slots=True)
class _Search:
    """One row of the kernel's ``search[dir][]`` table."""

    pattern: bytes  # lower case; matched case-insensitively (strncasecmp)
    name: str  # as the kernel logs it
    skip: int  # skip up to and over this character first (0: none)
    term: int  # what must end the numbers (0: anything)
    getnum: Callable[[bytes, _Cmd, int], int]
    ftptype: int  # kernel enum nf_ct_ftp_type


SEARCH: Final = (
    (  # IP_CT_DIR_ORIGINAL: commands from the client
        _Search(b"port", "PORT", 0x20, _CR, _try_rfc959, FTP_PORT_CMD),
        _Search(b"eprt", "EPRT", 0x20, _CR, _try_eprt, FTP_EPRT),
    ),
    (  # IP_CT_DIR_REPLY: replies from the server
        _Search(b"227 ", "227 ", 0, 0, _try_rfc1123, FTP_PASV),
        _Search(b"229 ", "229 ", 0x28, 0x29, _try_epsv_response, FTP_EPSV),
    ),
)


def find_pattern(data: bytes, row: _Search, cmd: _Cmd) -> int:
    """kernel find_pattern(): 1 match (``cmd`` filled, ``cmd.off``/``cmd.length`` the kernel's
    numoff/numlen), 0 no match, -1 partial match."""
    dlen = len(data)
    pattern = row.pattern
    plen = len(pattern)
    if dlen <= plen:
        # "Short packet: try for partial?"
        return -1 if data.lower() == pattern[:dlen] else 0
    if data[:plen].lower() != pattern:
        return 0
    i = plen
    if row.skip:
        j = data.find(row.skip, plen)
        if j < 0:
            return -1
        i = j + 1
    cmd.off = i
    cmd.length = row.getnum(data[i:], cmd, row.term)
    if not cmd.length:
        return -1
    return 1


# ---------------------------------------------------------------------------------- helper


def _update_nl_seq(seqs: list[int], nl_seq: int) -> None:
    """kernel update_nl_seq(): remember a position after a newline, newest two kept."""
    if nl_seq in seqs:
        return
    if len(seqs) < NUM_SEQ_TO_REMEMBER:
        seqs.append(nl_seq)
        return
    oldest = 0 if before(seqs[0], seqs[1]) else 1
    if after(nl_seq, seqs[oldest]):
        seqs[oldest] = nl_seq


def _addrs(key: bytes) -> tuple[bytes, bytes]:
    """(src, dst) of a TCP key (keys.py layout: src, dst, sport, dport)."""
    a = (len(key) - 4) >> 1
    return key[:a], key[a : 2 * a]


def ftp_info(conn: Conn) -> FtpInfo:
    """The entry's FtpInfo; created with SEQ_PICKUP set when missing (an injected entry)."""
    extra = conn.extra
    info = extra.get(EXTRA_KEY) if extra is not None else None
    if isinstance(info, FtpInfo):
        return info
    info = FtpInfo(pickup=True)
    if extra is None:
        conn.extra = {EXTRA_KEY: info}
    else:
        extra[EXTRA_KEY] = info
    return info


class FtpHelper(Helper):
    """kernel nf_conntrack_ftp: ``help()`` for TCP port 21 (or what is configured)."""

    __slots__ = ("loose", "nat_hook")

    name = "ftp"
    l4proto = IPPROTO_TCP
    default_port = FTP_PORT
    policies = (FTP_POLICY,)

    def __init__(self, *, loose: bool = False) -> None:
        self.loose = loose  # kernel module parameter nf_conntrack_ftp.loose
        # kernel nf_nat_ftp_hook: set by pmct.nat.ftp.enable_ftp_nat(); None = no FTP NAT
        self.nat_hook: NatFtpHook | None = None

    def attach(self, conn: Conn) -> None:
        extra = conn.extra
        if extra is None:
            conn.extra = {EXTRA_KEY: FtpInfo()}
        else:
            extra[EXTRA_KEY] = FtpInfo()

    def from_sync(self, conn: Conn) -> None:
        """kernel nf_ct_ftp_from_nlattr(): "always pick up sequence tracking"."""
        info = ftp_info(conn)
        info.pickup[0] = info.pickup[1] = True

    def help(
        self,
        conn: Conn,
        d: int,
        state: int,
        data: bytes,
        start: int,
        end: int,
        seq: int,
        expect: ExpectTable,
        now: float,
    ) -> str | None:
        """kernel help() in nf_conntrack_ftp.c, step for step."""
        # "Until there's been traffic both ways, don't look in packets."
        if state != ESTABLISHED or start >= end:
            return None
        info = ftp_info(conn)
        payload = data[start:end]
        ends_in_nl = payload[-1] == _NL
        nl_seq = (seq + (end - start)) & MASK32
        seqs = info.seqs[d]
        if seq not in seqs:  # not just after a newline
            if not info.pickup[d]:
                if ends_in_nl:
                    _update_nl_seq(seqs, nl_seq)
                return None
            info.pickup[d] = False  # "We're picking up this, clear flags and let it continue"
        here_src, _ = _addrs(conn.key if d == 0 else conn.rkey)
        cmd = _Cmd(conn.l3, bytearray(here_src))
        found = 0
        row = SEARCH[d][0]
        for row in SEARCH[d]:
            found = find_pattern(payload, row, cmd)
            if found:
                break
        if found < 0:
            # DEVIATION(kernel): the kernel's ct state of this packet was already decided at
            # PREROUTING (established); the helper then drops it at confirmation. pmct has one
            # verdict per packet, so the drop is reported as INVALID with this reason.
            # pinned by tests/unit/conntrack/test_helper_ftp.py::test_partial_command_is_dropped
            return f"nf_ct_ftp: dropping packet: partial matching of `{row.name}'"
        reason = None
        if found:
            there_src, there_dst = _addrs(conn.rkey if d == 0 else conn.key)
            daddr = there_dst
            recorded = True
            if bytes(cmd.addr) != here_src:
                # "it really wants us to connect to a different IP address"; only with the
                # loose parameter is that address expected, else nothing is.
                if self.loose:
                    daddr = bytes(cmd.addr)
                else:
                    recorded = False
            if recorded:
                exp = expect_init(conn, 0, conn.l3, there_src, daddr, IPPROTO_TCP, None, cmd.port)
                # "Now, NAT might want to mangle the packet, and register the (possibly
                # changed) expectation itself."
                nat = self.nat_hook
                if nat is not None and conn.status & _NAT_MASK:
                    reason = nat(
                        conn,
                        d,
                        row.ftptype,
                        data,
                        start,
                        end,
                        cmd.off,
                        cmd.length,
                        seq,
                        exp,
                        expect,
                        now,
                    )
                elif expect.related(exp, FTP_POLICY, now) is not None:
                    # "Can't expect this?  Best to drop packet now."
                    reason = "nf_ct_ftp: dropping packet: cannot add expectation"
        if ends_in_nl:
            _update_nl_seq(seqs, nl_seq)
        return reason


FTP: Final = FtpHelper()
