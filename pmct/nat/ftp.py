"""FTP through NAT: rewrite the address in PORT / EPRT / 227 / 229, make the data connection
follow its master's NAT, keep TCP's sequence numbers straight (kernel net/netfilter/nf_nat_ftp.c,
nf_nat_helper.c: __nf_nat_mangle_tcp_packet(), nf_nat_follow_master(), nf_nat_exp_find_port()).

Why: behind a masquerading pair a LAN client in active mode sends "PORT 10,0,0,2,195,80"; the
server would connect to 10.0.0.2, which it cannot reach. The NAT node must write its public
address there, expect the server's data connection on the public address, and map that
connection back to the client. Passive mode towards a port-forwarded inside server is the mirror
case ("227 ... (10,0,0,5,...)" from the server). The new text usually has another length, so the
TCP stream of that direction is shifted from there on (pmct/nat/seqadj.py).

The split between engine and node (both pure here):

1. In the engine (every node, active or passive, from the same packets): the FTP conntrack
   helper (pmct/conntrack/helpers/ftp.py) finds the command and, when the entry is NATed and
   ``FTP.nat_hook`` is set, calls ``FtpNat.__call__`` instead of registering the expectation
   (kernel: nf_nat_ftp_hook). That call is nf_nat_ftp(): the expectation gets ``expectfn =
   follow_master``, ``saved_port`` and ``dir``; its port is kept or, if another master's
   expectation clashes, moved (nf_nat_exp_find_port()); the replacement text is decided and
   remembered on the entry (``conn.extra["ftp_nat"]``, one pending rewrite per direction); the
   sequence offset is set (nf_ct_seqadj_set()). Both nodes therefore hold the same expectation,
   the same offsets and the same pending text.
2. In the node's NAT step (the active node only): ``ftp_nat_packet(data, ctstate, d, conn)``
   applies the pending rewrite to the very packet it was decided for (same direction, same
   sequence number, same old text; the pending record is consumed) and then shifts seq / ack /
   SACK by the offsets (nf_ct_seq_adjust()), with incremental checksums. Call it on the output
   of ``rewrite.nat_packet()`` (kernel order: NAT manip, helper, seqadj -- the order does not
   change the bytes).
3. When the data connection arrives, the engine finds the expectation and calls
   ``follow_master`` (kernel init_conntrack() -> exp->expectfn): its reply key is set so that
   it is NATed like the master (source: where the master sends to; destination: the master's
   inside address and the port the command originally named); ``Nat.bind`` then only checks
   the key is free (pmct/nat/alloc.py ``_followed``).

The tracker takes the offsets into account (receiver_offset in tcp_in_window(),
pmct/conntrack/proto/tcp.py), so verdicts stay those of the kernel.

Determinism: the kernel picks a replacement port with get_random_u32_below() when the announced
one clashes; pmct uses a keyed hash of the master's key, the port and the attempt number, so
both nodes pick the same port (the key is the ``nat.seed``).

DEVIATION(kernel): the kernel rewrites the packet inside the helper; pmct's engine only
decides, and the rewrite happens in ``ftp_nat_packet()`` on the node. A packet the engine
accepted but the node never rewrites (the passive node) leaves a pending record that the next
rewrite of that direction discards.
pinned by tests/unit/nat/test_nat_ftp.py::test_stale_pending_rewrite_is_not_applied
"""

from __future__ import annotations

import hashlib
import socket
from dataclasses import dataclass
from typing import Final

from pmct.conntrack.conn import Conn
from pmct.conntrack.constants import CtState, Status
from pmct.conntrack.expect import Expectation, ExpectTable, register_expectfn
from pmct.conntrack.helpers.ftp import (
    FTP,
    FTP_EPRT,
    FTP_EPSV,
    FTP_PASV,
    FTP_POLICY,
    FTP_PORT_CMD,
)
from pmct.conntrack.keys import make_key
from pmct.nat.rewrite import _fix16, _locate
from pmct.nat.seqadj import get_seqadj, seq_adjust_tcp, seqadj_set

__all__ = [
    "DROP_MANGLE",
    "DROP_PORTS",
    "EXTRA_KEY",
    "FOLLOW_MASTER",
    "FtpNat",
    "Mangle",
    "disable_ftp_nat",
    "enable_ftp_nat",
    "fmt_cmd",
    "follow_master",
    "ftp_nat_packet",
    "mangle_tcp",
]

EXTRA_KEY: Final = "ftp_nat"
MAX_ATTEMPTS: Final = 128  # nf_nat_exp_find_port(): max_attempts
_EBUSY: Final = "expectation clashes with another"  # expect.py's -EBUSY reason
_SEQ_ADJUST: Final = int(Status.SEQ_ADJUST)
_HELPER: Final = int(Status.HELPER)
_SRC_NAT: Final = int(Status.SRC_NAT)
_DST_NAT: Final = int(Status.DST_NAT)
_NAT_DONE: Final = int(Status.SRC_NAT_DONE | Status.DST_NAT_DONE)
_RELATED: Final = int(CtState.RELATED)
_M: Final = 0xFFFF

DROP_PORTS: Final = "nf_ct_ftp: dropping packet: all ports in use"
DROP_MANGLE: Final = "nf_ct_ftp: dropping packet: cannot mangle packet"


@dataclass(frozen=True, slots=True)
class Mangle:
    """A decided rewrite: the segment of sequence number ``seq`` has ``old`` at payload offset
    ``off``, to be replaced by ``new``."""

    seq: int
    off: int
    old: bytes
    new: bytes


def _addrs(key: bytes) -> tuple[bytes, bytes]:
    """(src, dst) of a TCP key (keys.py layout: src, dst, sport, dport)."""
    a = (len(key) - 4) >> 1
    return key[:a], key[a : 2 * a]


def fmt_cmd(l3: int, ftptype: int, addr: bytes, port: int) -> bytes:
    """kernel nf_nat_ftp_fmt_cmd(); b"" for an unknown type. ``%pI6`` prints eight groups of
    four lower-case hex digits, uncompressed."""
    if ftptype in (FTP_PORT_CMD, FTP_PASV):
        a = addr[:4]
        return f"{a[0]},{a[1]},{a[2]},{a[3]},{port >> 8},{port & 0xFF}".encode()
    if ftptype == FTP_EPRT:
        if l3 == 4:
            return f"|1|{socket.inet_ntop(socket.AF_INET, addr[:4])}|{port}|".encode()
        groups = ":".join(addr[i : i + 2].hex() for i in range(0, 16, 2))
        return f"|2|{groups}|{port}|".encode()
    if ftptype == FTP_EPSV:
        return f"|||{port}|".encode()
    return b""


def follow_master(conn: Conn, exp: Expectation) -> None:
    """kernel nf_nat_follow_master(): NAT the new expected entry the way its master is NATed.

    Source: where the master sends to in the expectation's direction (``tuplehash[!exp->dir]
    .dst``); destination: that tuple's source, with the port the command named before NAT
    (``exp->saved_proto``). Sets the reply key and SRC_NAT / DST_NAT where something changed,
    and both *_NAT_DONE bits (nf_nat_setup_info() ran for both manips), which tell ``Nat.bind``
    not to apply the rules again.
    """
    master = exp.master
    t = master.key if exp.dir == 1 else master.rkey
    tsrc, tdst = _addrs(t)
    key = conn.key
    src, dst = _addrs(key)
    a2 = 2 * len(src)
    sport = (key[a2] << 8) | key[a2 + 1]
    dport = (key[a2 + 2] << 8) | key[a2 + 3]
    nsrc, ndst, ndport = tdst, tsrc, exp.saved_port
    if len(nsrc) != len(src):  # cannot happen (the expectation matched this family)
        return
    conn.rkey = make_key(conn.proto, ndst, nsrc, ndport, sport)
    status = conn.status | _NAT_DONE
    if nsrc != src:
        status |= _SRC_NAT
    if ndst != dst or ndport != dport:
        status |= _DST_NAT
    conn.status = status


# kernel nf_nat_helper.c: follow_master_nat = { .name = "nat-follow-master" }, registered so
# that ctnetlink (ct_sync's EXP_NAT) can carry it by name
FOLLOW_MASTER: Final = "nat-follow-master"
register_expectfn(FOLLOW_MASTER, follow_master)


def _pending(conn: Conn) -> list[Mangle | None]:
    extra = conn.extra
    if extra is None:
        pend: list[Mangle | None] = [None, None]
        conn.extra = {EXTRA_KEY: pend}
        return pend
    got: list[Mangle | None] | None = extra.get(EXTRA_KEY)
    if got is None:
        got = extra[EXTRA_KEY] = [None, None]
    return got


class FtpNat:
    """kernel nf_nat_ftp(), as the FTP helper's ``nat_hook``.

    One instance serves every engine in the process (like the kernel's global hook); it only
    acts on entries that are NATed, so engines without NAT are unaffected. ``seed`` keys the
    hash that replaces the kernel's random port choice (use the config's ``nat.seed``: the two
    nodes of a pair must use the same).
    """

    __slots__ = ("_hkey", "stats")

    def __init__(self, seed: bytes = b"") -> None:
        self._hkey = hashlib.blake2s(b"pmct-nat-ftp:" + seed).digest()
        self.stats = {"mangled": 0, "resized": 0, "moved": 0, "no_port": 0, "no_mangle": 0}

    def _hash(self, data: bytes) -> int:
        h = hashlib.blake2s(data, digest_size=8, key=self._hkey)
        return int.from_bytes(h.digest(), "big")

    def find_port(self, exp: Expectation, expect: ExpectTable, now: float) -> int:
        """kernel nf_nat_exp_find_port(): register ``exp`` on its saved port, or on another
        one if that clashes with another master's expectation (-EBUSY); 0 on failure (also
        when the announced port itself is 0, as in the kernel)."""
        port = exp.saved_port
        lo = port
        rng = 0xFFFF - port
        attempts_left = min(rng, MAX_ATTEMPTS)
        n = 0
        while True:
            exp.dport = port
            res = expect.related(exp, FTP_POLICY, now)
            if res is None:
                if port != lo:
                    self.stats["moved"] += 1
                return port
            attempts_left -= 1
            if res != _EBUSY or attempts_left < 0:
                return 0
            n += 1
            # DEVIATION(kernel): get_random_u32_below(range) -> a keyed hash (determinism)
            salt = lo.to_bytes(2, "big") + n.to_bytes(2, "big")
            port = lo + self._hash(exp.master.key + salt) % rng

    def __call__(
        self,
        conn: Conn,
        d: int,
        ftptype: int,
        data: bytes,
        start: int,
        end: int,
        matchoff: int,
        matchlen: int,
        seq: int,
        exp: Expectation,
        expect: ExpectTable,
        now: float,
    ) -> str | None:
        """kernel nf_nat_ftp(): the helper found a command in ``data[start:end]`` (payload)
        at ``matchoff``/``matchlen``; ``exp`` is the expectation it would have registered."""
        # "Connection will come from wherever this packet goes, hence !dir"
        newaddr = _addrs(conn.rkey if d == 0 else conn.key)[1]
        exp.saved_port = exp.dport
        exp.dir = 1 - d
        # "When you see the packet, we need to NAT it the same as the this one."
        exp.expectfn = follow_master
        port = self.find_port(exp, expect, now)
        if port == 0:
            self.stats["no_port"] += 1
            return DROP_PORTS
        text = fmt_cmd(conn.l3, ftptype, newaddr, port)
        p = start + matchoff
        # __nf_nat_mangle_tcp_packet() fails only when the datagram would exceed 64 KiB
        # (enlarge_skb()); the kernel then unexpects and drops
        if not text or p + matchlen > end or end + len(text) - matchlen > 0xFFFF:
            self.stats["no_mangle"] += 1
            expect.remove(exp)
            return DROP_MANGLE
        _pending(conn)[d] = Mangle(seq, matchoff, bytes(data[p : p + matchlen]), text)
        self.stats["mangled"] += 1
        if len(text) != matchlen:
            self.stats["resized"] += 1
            seqadj_set(conn, d, seq, len(text) - matchlen)
        return None


def enable_ftp_nat(seed: bytes = b"") -> FtpNat:
    """Install the FTP NAT hook on the FTP helper (kernel: loading nf_nat_ftp). The node calls
    this when NAT is configured, with the config's ``nat.seed``."""
    hook = FtpNat(seed)
    FTP.nat_hook = hook
    return hook


def disable_ftp_nat() -> None:
    """Remove the hook again (kernel: unloading nf_nat_ftp)."""
    FTP.nat_hook = None


# ------------------------------------------------------------------ the packet (node side)


def _mangle(
    buf: bytearray, l3: int, l4: int, end: int, p: int, old_len: int, new: bytes
) -> bytearray:
    """kernel mangle_contents() + nf_nat_csum_recalc(): replace ``buf[p:p + old_len]`` by
    ``new`` in the TCP segment at ``l4``; the IP length fields and checksums follow.

    The TCP checksum is updated, not recomputed: everything before ``p`` is unchanged, so the
    sum moves by the difference of the two tails, each taken from the same 16-bit boundary at
    or before ``p`` (an odd shift of the tail is then just another byte string), plus the
    length change in the pseudo header."""
    grow = len(new) - old_len
    a = p - ((p - l4) & 1)
    old_tail = bytes(buf[a:end])
    out = buf[:p] + new + buf[p + old_len : end]
    new_tail = out[a:]
    if len(old_tail) & 1:
        old_tail += b"\0"
    if len(new_tail) & 1:
        new_tail += b"\0"
    delta = (int.from_bytes(new_tail, "big") - int.from_bytes(old_tail, "big") + grow) % _M
    if grow:
        if l3 == 4:
            tot = ((out[2] << 8) | out[3]) + grow
            out[2:4] = (tot & 0xFFFF).to_bytes(2, "big")
            _fix16(out, 10, grow % _M)
        else:
            plen = ((out[4] << 8) | out[5]) + grow
            out[4:6] = (plen & 0xFFFF).to_bytes(2, "big")
    if delta:
        _fix16(out, l4 + 16, delta)
    return out


def mangle_tcp(data: bytes, off: int, old_len: int, new: bytes) -> bytes | None:
    """kernel __nf_nat_mangle_tcp_packet() without the seqadj: the datagram with the TCP
    payload bytes ``[off, off + old_len)`` replaced by ``new``. None when it is not a TCP
    datagram holding that range, or when the result would exceed 65535 bytes."""
    buf = bytearray(data)
    l3, proto, l4, end = _locate(buf)
    if l3 == 0 or proto != 6 or l4 < 0 or end - l4 < 20:
        return None
    p = l4 + ((buf[l4 + 12] >> 4) << 2) + off
    if off < 0 or p + old_len > end or end + len(new) - old_len > 0xFFFF:
        return None
    return bytes(_mangle(buf, l3, l4, end, p, old_len, new))


def ftp_nat_packet(data: bytes, ctstate: int, d: int, conn: Conn | None) -> bytes | None:
    """The node's FTP NAT step for one accepted datagram (engine verdict ``ctstate, d, conn``):
    the pending payload rewrite if it was decided for this packet, then the sequence
    adjustment. Returns ``data`` itself when nothing changes, the new datagram, or None when the
    packet must be dropped (kernel nf_confirm(): nf_ct_seq_adjust() failed on malformed TCP
    options). An entry with neither the HELPER nor the SEQ_ADJUST bit costs one test.
    """
    if conn is None or d < 0 or not conn.status & (_SEQ_ADJUST | _HELPER):
        return data
    if ctstate == _RELATED:  # nf_confirm(): helpers and seqadj skip ICMP errors
        return data
    extra = conn.extra
    if extra is None:
        return data
    rec: Mangle | None = None
    pend: list[Mangle | None] | None = extra.get(EXTRA_KEY)
    if pend is not None:
        rec = pend[d]
        pend[d] = None  # decided for one packet: consumed here, or stale from now on
    adj = get_seqadj(conn) if conn.status & _SEQ_ADJUST else None
    if rec is None and adj is None:
        return data
    buf = bytearray(data)
    if buf[0] == 0x45 and buf[9] == 6 and not (buf[6] & 0x3F or buf[7]) and len(buf) >= 40:
        l3, l4, end = 4, 20, min(len(buf), (buf[2] << 8) | buf[3])  # IPv4, no options
    else:
        l3, proto, l4, end = _locate(buf)
        if l3 == 0 or proto != 6 or l4 < 0:
            return data
    if end - l4 < 20:
        return data
    if rec is not None:
        seq = int.from_bytes(buf[l4 + 4 : l4 + 8], "big")
        p = l4 + ((buf[l4 + 12] >> 4) << 2) + rec.off
        n = len(rec.old)
        if seq == rec.seq and buf[p : p + n] == rec.old:
            buf = _mangle(buf, l3, l4, end, p, n, rec.new)
            end += len(rec.new) - n
    if adj is not None and not seq_adjust_tcp(buf, l4, end, d, adj):
        return None
    return bytes(buf)
