"""ct_sync wire codec: the packet header, the packet bodies and the record framing.

The layout is specified in docs/protocol.md (version 1); this module is its executable form and
``tests/unit/sync/test_codec.py`` pins every number.

Rules:
1. Encode/decode functions come in pairs, next to each other, around named ``struct.Struct``
   layouts (conntrackd: build.c mirrors parse.c).
2. Decoding never trusts a length field and raises exactly one family: ``MalformedMessage``
   (subclasses carry the counter name in ``reason``: ``bad_version``, ``unauthenticated``,
   ``hmac_unexpected``). Nothing else escapes, whatever the bytes.
3. The version is checked first (conntrackd do_channel_handler_step()), the HMAC before anything
   in the body is looked at.
4. This module knows bytes and records, not connections: which ``Conn`` fields travel is
   records.py's business.

Wire numbers are pinned IntEnums: append only, a retired number stays reserved.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Final

from pmct.conntrack.keys import IPPROTO_TCP, PORTED_PROTOS
from pmct.errors import MalformedMessage

__all__ = [
    "CT_TCP4_LEN",
    "EXT_NAT_FIRST",
    "EXT_NAT_LAST",
    "FLAG_HMAC",
    "FLAG_WALK",
    "HEADER",
    "HMAC_LEN",
    "MAX_NACK_RANGES",
    "PROTOCOL_VERSION",
    "RF_EXT",
    "RF_MARK",
    "RF_MASTER_V6",
    "RF_RKEY",
    "RF_V6",
    "RF_WINDOW",
    "WINDOW_LEN",
    "WINDOW_WORDS",
    "Announce",
    "BadVersion",
    "CtDelete",
    "CtRecord",
    "ExpDelete",
    "ExpRecord",
    "Ext",
    "Header",
    "HmacUnexpected",
    "InitSyncRequest",
    "MsgType",
    "Nack",
    "PacketType",
    "Record",
    "Unauthenticated",
    "WalkBegin",
    "WalkDone",
    "decode_announce",
    "decode_body",
    "decode_datagram",
    "decode_header",
    "decode_initsync",
    "decode_nack",
    "decode_records",
    "decode_walk_begin",
    "decode_walk_done",
    "encode_announce",
    "encode_ct_delete",
    "encode_ct_update",
    "encode_datagram",
    "encode_exp_delete",
    "encode_exp_update",
    "encode_header",
    "encode_initsync",
    "encode_nack",
    "encode_record",
    "encode_walk_begin",
    "encode_walk_done",
    "inverse_key",
    "key_length",
]

PROTOCOL_VERSION: Final = 1


class PacketType(IntEnum):
    """Header ``type`` byte (docs/protocol.md §3). Append only; 0 is reserved."""

    MASTER_ANNOUNCE = 1
    SLAVE_INITSYNC = 2
    SYNC = 3
    NACK = 4
    INITSYNC_BEGIN = 5
    INITSYNC_DONE = 6


class MsgType(IntEnum):
    """Record type byte inside SYNC packets (docs/protocol.md §4.1). Append only; 0 reserved."""

    CT_UPDATE = 1
    CT_DELETE = 2
    EXP_UPDATE = 3
    EXP_DELETE = 4


class Ext(IntEnum):
    """Extension TLV types (docs/protocol.md §4.6). Append only; 0 reserved; 6..15 NAT."""

    HELPER = 1
    MASTER = 2
    HELPER_DATA = 3
    UDP_STREAM = 4
    SCTP = 5
    SEQADJ = 6  # CT_UPDATE: NAT sequence adjustment (kernel struct nf_conn_seqadj)
    EXP_NAT = 7  # EXP_UPDATE: NAT of the expected connection (kernel CTA_EXPECT_NAT/_FN)


EXT_NAT_FIRST: Final = 6  # 6..15: reserved for NAT data (sequence adjustment, NAT helpers)
EXT_NAT_LAST: Final = 15

# --- header flags
FLAG_HMAC: Final = 0x01
FLAG_WALK: Final = 0x02
_FLAGS_KNOWN: Final = FLAG_HMAC | FLAG_WALK

# --- record flags
RF_V6: Final = 0x01
RF_RKEY: Final = 0x02  # CT_UPDATE: reply key present
RF_MASTER_V6: Final = 0x02  # EXP_*: the master key is IPv6
RF_MARK: Final = 0x04
RF_WINDOW: Final = 0x08
RF_EXT: Final = 0x10
_RF_CT_UPDATE: Final = RF_V6 | RF_RKEY | RF_MARK | RF_WINDOW | RF_EXT
_RF_CT_DELETE: Final = RF_V6
_RF_EXP_UPDATE: Final = RF_V6 | RF_MASTER_V6 | RF_EXT
_RF_EXP_DELETE: Final = RF_V6 | RF_MASTER_V6

HMAC_LEN: Final = 32
MAX_NACK_RANGES: Final = 128
MAX_HELPER_NAME: Final = 16
_U32_MAX: Final = 0xFFFF_FFFF
_TCP_STATE_MAX: Final = 10  # TcpState.MAX: kernel nlattr_to_tcp() rejects >= TCP_CONNTRACK_MAX
_SCALE_MAX: Final = 14  # RFC 7323 §2.3: shift count at most 14

# version, type, flags, reserved, length, node, epoch, seq, stamp = 20 bytes
HEADER: Final = struct.Struct("!BBBBHHIII")
_ANNOUNCE: Final = struct.Struct("!IIBBH")  # term, oldest, mode, reserved, reserved
_INITSYNC: Final = struct.Struct("!HHI")  # target, reserved, request
_NACK_HEAD: Final = struct.Struct("!HHII")  # target, count, target_epoch, ack
_RANGE: Final = struct.Struct("!II")  # first, last (inclusive)
_WALK: Final = struct.Struct("!II")  # walk, total | walk, sent
_REC_HEAD: Final = struct.Struct("!BBH")  # message type, record flags, record length
_CT_FIXED: Final = struct.Struct("!HBI")  # status, state, timeout_ms
_TCP_FIXED: Final = struct.Struct("!BBB")  # tflags0, tflags1, scales
_U32: Final = struct.Struct("!I")
_SCTP: Final = struct.Struct("!IIBBBB")  # vtag0, vtag1, init0, init1, flags, last_dir
_SEQADJ: Final = struct.Struct("!IiiIii")  # per direction: correction_pos, before, after
_EXP_NAT: Final = struct.Struct("!BH")  # dir, saved port; then the expectfn name
MAX_EXPECTFN_NAME: Final = 32  # "nat-follow-master" (kernel: a C string, no fixed limit)
_EXP_TAIL: Final = struct.Struct("!IHBB")  # timeout_ms, flags, class, helper length
# The twelve u32 of Conn.tw (TW_FIELDS order), then last_dir, last_index, last_wscale,
# last_flags, retrans. Pinned for version 1: a test fails if TW_FIELDS changes.
WINDOW_WORDS: Final = 12
_WINDOW: Final = struct.Struct("!12I5B")
WINDOW_LEN: Final = _WINDOW.size  # 53

_hmac_new = hmac.new
_sha256 = hashlib.sha256
_compare = hmac.compare_digest


class BadVersion(MalformedMessage):
    reason: ClassVar[str] = "bad_version"  # a class attribute also when compiled (mypyc)


class Unauthenticated(MalformedMessage):
    reason: ClassVar[str] = "unauthenticated"  # a class attribute also when compiled (mypyc)


class HmacUnexpected(MalformedMessage):
    reason: ClassVar[str] = "hmac_unexpected"  # a class attribute also when compiled (mypyc)


def _bad(what: str) -> MalformedMessage:
    return MalformedMessage(what)


# ---------------------------------------------------------------------------- keys


def key_length(proto: int, v6: bool) -> int:
    """Length of a packed key of this protocol (keys.py layout)."""
    if proto == IPPROTO_TCP:
        return 36 if v6 else 12
    if proto in PORTED_PROTOS:
        return 37 if v6 else 13
    return 33 if v6 else 9


def inverse_key(key: bytes) -> bytes:
    """The key with both ends swapped (src<->dst, sport<->dport): the reply tuple without NAT.

    For ICMP the real reply tuple also changes the type (echo -> echo reply), so it differs
    from this and travels explicitly (RF_RKEY).
    """
    n = len(key)
    if n == 12 or n == 36:
        a = (n - 4) >> 1
        return key[a : 2 * a] + key[:a] + key[2 * a + 2 : 2 * a + 4] + key[2 * a : 2 * a + 2]
    if n == 13 or n == 37:
        a = (n - 5) >> 1
        return (
            key[:1]
            + key[1 + a : 1 + 2 * a]
            + key[1 : 1 + a]
            + key[1 + 2 * a + 2 : 1 + 2 * a + 4]
            + key[1 + 2 * a : 1 + 2 * a + 2]
        )
    if n == 9 or n == 33:
        a = (n - 1) >> 1
        return key[:1] + key[1 + a :] + key[1 : 1 + a]
    raise ValueError(f"not a conntrack key: {key.hex()}")


def _key_proto(key: bytes) -> int:
    return IPPROTO_TCP if len(key) in (12, 36) else key[0]


def _check_key(proto: int, key: bytes, what: str) -> None:
    if proto != IPPROTO_TCP and key[0] != proto:
        raise _bad(f"{what}: protocol byte {key[0]} != {proto}")


# ---------------------------------------------------------------------------- header


@dataclass(frozen=True, slots=True)
class Header:
    version: int
    type: int
    flags: int
    length: int
    node: int
    epoch: int
    seq: int
    stamp: int


def encode_header(h: Header) -> bytes:
    return HEADER.pack(h.version, h.type, h.flags, 0, h.length, h.node, h.epoch, h.seq, h.stamp)


def decode_header(data: bytes) -> Header:
    """Header fields with every bound checked against ``len(data)`` (HMAC not verified)."""
    if len(data) < 1:
        raise _bad("empty datagram")
    if data[0] != PROTOCOL_VERSION:
        raise BadVersion(f"version {data[0]}")
    if len(data) < HEADER.size:
        raise _bad("truncated header")
    version, ptype, flags, reserved, length, node, epoch, seq, stamp = HEADER.unpack_from(data)
    if flags & ~_FLAGS_KNOWN:
        raise _bad(f"unknown header flags {flags:#x}")
    if reserved:
        raise _bad("reserved header byte set")
    trailer = HMAC_LEN if flags & FLAG_HMAC else 0
    if length < HEADER.size or length + trailer != len(data):
        raise _bad(f"length {length} does not match datagram of {len(data)} bytes")
    if ptype not in _PACKET_TYPES:
        raise _bad(f"unknown packet type {ptype}")
    if node == 0:
        raise _bad("node id 0")
    if flags & FLAG_WALK and ptype != PacketType.SYNC:
        raise _bad("WALK flag on a non-SYNC packet")
    return Header(version, ptype, flags, length, node, epoch, seq, stamp)


_PACKET_TYPES: Final = frozenset(int(t) for t in PacketType)


def encode_datagram(
    ptype: int,
    body: bytes,
    *,
    node: int,
    epoch: int,
    seq: int,
    stamp: int,
    key: bytes | None = None,
    flags: int = 0,
) -> bytes:
    """Header + body (+ HMAC-SHA256 trailer when ``key`` is set)."""
    length = HEADER.size + len(body)
    if length > 0xFFFF:
        raise ValueError("datagram too long")
    if key is not None:
        flags |= FLAG_HMAC
    head = HEADER.pack(PROTOCOL_VERSION, ptype, flags, 0, length, node, epoch, seq, stamp)
    if key is None:
        return head + body
    data = head + body
    return data + _hmac_new(key, data, _sha256).digest()


def decode_datagram(data: bytes, key: bytes | None = None) -> tuple[Header, bytes]:
    """Check the header and the authentication; return the header and the body bytes.

    Raises:
        MalformedMessage: with ``reason`` ``bad_version``, ``unauthenticated``,
            ``hmac_unexpected`` or (the base class) ``malformed``.
    """
    h = decode_header(data)
    if h.flags & FLAG_HMAC:
        if key is None:
            raise HmacUnexpected("HMAC trailer but no key configured")
        mac = _hmac_new(key, data[: h.length], _sha256).digest()
        if not _compare(mac, data[h.length :]):
            raise Unauthenticated("HMAC mismatch")
    elif key is not None:
        raise Unauthenticated("no HMAC trailer")
    return h, data[HEADER.size : h.length]


# ---------------------------------------------------------------------------- control bodies


@dataclass(frozen=True, slots=True)
class Announce:
    term: int
    oldest: int
    mode: int  # 0 concurrent, 1 replicate


def encode_announce(a: Announce) -> bytes:
    return _ANNOUNCE.pack(a.term, a.oldest, a.mode, 0, 0)


def decode_announce(body: bytes) -> Announce:
    if len(body) != _ANNOUNCE.size:
        raise _bad("announce: bad length")
    term, oldest, mode, r1, r2 = _ANNOUNCE.unpack(body)
    if mode > 1 or r1 or r2:
        raise _bad("announce: bad mode or reserved bytes")
    return Announce(term, oldest, mode)


@dataclass(frozen=True, slots=True)
class InitSyncRequest:
    target: int  # master node id, 0 = whoever is master
    request: int


def encode_initsync(r: InitSyncRequest) -> bytes:
    return _INITSYNC.pack(r.target, 0, r.request)


def decode_initsync(body: bytes) -> InitSyncRequest:
    if len(body) != _INITSYNC.size:
        raise _bad("initsync: bad length")
    target, reserved, request = _INITSYNC.unpack(body)
    if reserved:
        raise _bad("initsync: reserved bytes set")
    return InitSyncRequest(target, request)


@dataclass(frozen=True, slots=True)
class Nack:
    """Missing ranges of a master's stream, and a cumulative ACK: every seq before ``ack``
    was received. With no ranges it is a pure ACK (the walk's flow control, §12)."""

    target: int
    target_epoch: int
    ack: int
    ranges: tuple[tuple[int, int], ...]  # inclusive (first, last), serial order


def encode_nack(n: Nack) -> bytes:
    if not 0 <= len(n.ranges) <= MAX_NACK_RANGES:
        raise ValueError("NACK carries 0..128 ranges")
    parts = [_NACK_HEAD.pack(n.target, len(n.ranges), n.target_epoch, n.ack)]
    parts.extend(_RANGE.pack(first, last) for first, last in n.ranges)
    return b"".join(parts)


def decode_nack(body: bytes) -> Nack:
    if len(body) < _NACK_HEAD.size:
        raise _bad("nack: truncated")
    target, count, epoch, ack = _NACK_HEAD.unpack_from(body)
    if count > MAX_NACK_RANGES or len(body) != _NACK_HEAD.size + count * _RANGE.size:
        raise _bad("nack: bad range count")
    ranges = []
    for i in range(count):
        first, last = _RANGE.unpack_from(body, _NACK_HEAD.size + i * _RANGE.size)
        if (last - first) & _U32_MAX >= 0x8000_0000:
            raise _bad("nack: range runs backwards")
        ranges.append((first, last))
    return Nack(target, epoch, ack, tuple(ranges))


@dataclass(frozen=True, slots=True)
class WalkBegin:
    walk: int
    total: int


@dataclass(frozen=True, slots=True)
class WalkDone:
    walk: int
    sent: int


def encode_walk_begin(w: WalkBegin) -> bytes:
    return _WALK.pack(w.walk, w.total)


def decode_walk_begin(body: bytes) -> WalkBegin:
    if len(body) != _WALK.size:
        raise _bad("initsync begin: bad length")
    return WalkBegin(*_WALK.unpack(body))


def encode_walk_done(w: WalkDone) -> bytes:
    return _WALK.pack(w.walk, w.sent)


def decode_walk_done(body: bytes) -> WalkDone:
    if len(body) != _WALK.size:
        raise _bad("initsync done: bad length")
    return WalkDone(*_WALK.unpack(body))


# ---------------------------------------------------------------------------- records


@dataclass(slots=True)
class CtRecord:
    """CT_UPDATE: the synced view of one connection (docs/protocol.md §4.3).

    ``window`` is None or 17 ints: the twelve ``Conn.tw`` words, then last_dir, last_index,
    last_wscale, last_flags, retrans. ``rkey`` is always set (the encoder leaves it out when it
    is the plain inverse of ``key``).
    """

    proto: int
    key: bytes
    rkey: bytes
    status: int
    state: int
    timeout_ms: int
    mark: int = 0
    tflags0: int = 0
    tflags1: int = 0
    scale0: int = 0
    scale1: int = 0
    window: tuple[int, ...] | None = None
    helper: str | None = None
    master: bytes | None = None  # master connection's orig key
    helper_data: bytes | None = None
    stream_ms: int | None = None  # UDP: ms until Conn.stream_ts
    sctp: tuple[int, ...] | None = None  # vtag0, vtag1, init0, init1, flags, last_dir
    seqadj: tuple[int, ...] | None = None  # pos0, before0, after0, pos1, before1, after1


@dataclass(frozen=True, slots=True)
class CtDelete:
    proto: int
    key: bytes


@dataclass(slots=True)
class ExpRecord:
    """EXP_UPDATE: an expectation (kernel nf_conntrack_expect), keyed by (key, mask, master)."""

    proto: int
    key: bytes
    mask: bytes
    master: bytes  # master connection's orig key
    timeout_ms: int
    flags: int = 0
    cls: int = 0
    helper: str = ""
    nat: tuple[int, int, str] | None = None  # dir, saved port, expectfn name


@dataclass(frozen=True, slots=True)
class ExpDelete:
    proto: int
    key: bytes
    mask: bytes
    master: bytes


Record = CtRecord | CtDelete | ExpRecord | ExpDelete


def _ext(t: int, value: bytes) -> bytes:
    if len(value) > 255:
        raise ValueError(f"extension {t} longer than 255 bytes")
    return bytes((t, len(value))) + value


def encode_ct_update(r: CtRecord) -> bytes:
    v6 = len(r.key) in (36, 37, 33)
    flags = RF_V6 if v6 else 0
    parts = [bytes((r.proto,)), r.key]
    if r.rkey != inverse_key(r.key):
        flags |= RF_RKEY
        parts.append(r.rkey)
    parts.append(_CT_FIXED.pack(r.status, r.state, min(r.timeout_ms, _U32_MAX)))
    if r.proto == IPPROTO_TCP:
        parts.append(_TCP_FIXED.pack(r.tflags0, r.tflags1, r.scale0 << 4 | r.scale1))
    if r.mark:
        flags |= RF_MARK
        parts.append(_U32.pack(r.mark))
    if r.window is not None:
        if r.proto != IPPROTO_TCP:
            raise ValueError("window data on a non-TCP record")
        flags |= RF_WINDOW
        parts.append(_WINDOW.pack(*r.window))
    ext = []
    if r.helper is not None:
        ext.append(_ext(Ext.HELPER, r.helper.encode("ascii")))
    if r.master is not None:
        ext.append(_ext(Ext.MASTER, bytes((_key_proto(r.master),)) + r.master))
    if r.helper_data is not None:
        ext.append(_ext(Ext.HELPER_DATA, r.helper_data))
    if r.stream_ms is not None:
        ext.append(_ext(Ext.UDP_STREAM, _U32.pack(min(r.stream_ms, _U32_MAX))))
    if r.sctp is not None:
        ext.append(_ext(Ext.SCTP, _SCTP.pack(*r.sctp)))
    if r.seqadj is not None:
        ext.append(_ext(Ext.SEQADJ, _SEQADJ.pack(*r.seqadj)))
    if ext:
        flags |= RF_EXT
        parts.extend(ext)
    body = b"".join(parts)
    return _REC_HEAD.pack(MsgType.CT_UPDATE, flags, 4 + len(body)) + body


def _decode_ct_update(data: bytes, off: int, end: int, flags: int) -> CtRecord:
    if flags & ~_RF_CT_UPDATE:
        raise _bad(f"ct update: unknown record flags {flags:#x}")
    if off + 1 > end:
        raise _bad("ct update: truncated")
    proto = data[off]
    off += 1
    klen = key_length(proto, bool(flags & RF_V6))
    if off + klen > end:
        raise _bad("ct update: truncated key")
    key = data[off : off + klen]
    _check_key(proto, key, "ct update key")
    off += klen
    if flags & RF_RKEY:
        if off + klen > end:
            raise _bad("ct update: truncated reply key")
        rkey = data[off : off + klen]
        _check_key(proto, rkey, "ct update reply key")
        off += klen
    else:
        rkey = inverse_key(key)
    if off + _CT_FIXED.size > end:
        raise _bad("ct update: truncated")
    status, state, timeout_ms = _CT_FIXED.unpack_from(data, off)
    off += _CT_FIXED.size
    rec = CtRecord(proto, key, rkey, status, state, timeout_ms)
    if proto == IPPROTO_TCP:
        if off + _TCP_FIXED.size > end:
            raise _bad("ct update: truncated tcp")
        rec.tflags0, rec.tflags1, scales = _TCP_FIXED.unpack_from(data, off)
        off += _TCP_FIXED.size
        rec.scale0 = scales >> 4
        rec.scale1 = scales & 15
        if state >= _TCP_STATE_MAX or rec.scale0 > _SCALE_MAX or rec.scale1 > _SCALE_MAX:
            raise _bad("ct update: bad tcp state or scale")
    if flags & RF_MARK:
        if off + 4 > end:
            raise _bad("ct update: truncated mark")
        (rec.mark,) = _U32.unpack_from(data, off)
        off += 4
    if flags & RF_WINDOW:
        if proto != IPPROTO_TCP:
            raise _bad("ct update: window on a non-TCP record")
        if off + WINDOW_LEN > end:
            raise _bad("ct update: truncated window")
        w = _WINDOW.unpack_from(data, off)
        off += WINDOW_LEN
        if w[12] > 1 or w[13] > 5 or w[14] > _SCALE_MAX:
            raise _bad("ct update: bad last_dir/last_index/last_wscale")
        rec.window = w
    if flags & RF_EXT:
        _decode_ext(data, off, end, rec)
    elif off != end:
        raise _bad("ct update: trailing bytes")
    return rec


def _tlvs(data: bytes, off: int, end: int) -> Iterator[tuple[int, bytes]]:
    """The extension area's TLVs in order, each checked as it is consumed (so a record's
    first error is the one reported): never empty, no truncated head, no value past the
    record, no type twice, no type 0. Unknown types are the caller's to skip."""
    seen: set[int] = set()
    if off >= end:
        raise _bad("ext: empty extension area")
    while off < end:
        if off + 2 > end:
            raise _bad("ext: truncated TLV head")
        t, n = data[off], data[off + 1]
        off += 2
        if off + n > end:
            raise _bad("ext: TLV runs past the record")
        value = data[off : off + n]
        off += n
        if t in seen:
            raise _bad(f"ext: TLV {t} repeated")
        seen.add(t)
        if t == 0:
            raise _bad("ext: TLV type 0")
        yield t, value


def _decode_ext(data: bytes, off: int, end: int, rec: CtRecord) -> None:
    for t, value in _tlvs(data, off, end):
        n = len(value)
        if t == Ext.HELPER:
            if not (1 <= n <= MAX_HELPER_NAME and _helper_name_ok(value)):
                raise _bad("ext: bad helper name")
            rec.helper = value.decode("ascii")
        elif t == Ext.MASTER:
            rec.master = _decode_master(value)
        elif t == Ext.HELPER_DATA:
            rec.helper_data = value
        elif t == Ext.UDP_STREAM:
            if n != 4:
                raise _bad("ext: bad UDP_STREAM length")
            (rec.stream_ms,) = _U32.unpack(value)
        elif t == Ext.SCTP:
            if n != _SCTP.size:
                raise _bad("ext: bad SCTP length")
            sctp = _SCTP.unpack(value)
            if sctp[2] > 1 or sctp[3] > 1 or sctp[5] > 1:
                raise _bad("ext: bad SCTP init/last_dir")
            rec.sctp = sctp
        elif t == Ext.SEQADJ:
            if n != _SEQADJ.size:
                raise _bad("ext: bad SEQADJ length")
            rec.seqadj = _SEQADJ.unpack(value)
        # any other type: unknown to version 1, skipped (forward compatibility)


def _helper_name_ok(value: bytes) -> bool:
    return all(0x21 <= b <= 0x7E for b in value)


def _decode_master(value: bytes) -> bytes:
    if len(value) < 2:
        raise _bad("ext: bad master key")
    proto = value[0]
    key = value[1:]
    if len(key) not in (key_length(proto, False), key_length(proto, True)):
        raise _bad("ext: bad master key length")
    _check_key(proto, key, "master key")
    return key


def encode_ct_delete(r: CtDelete) -> bytes:
    flags = RF_V6 if len(r.key) in (36, 37, 33) else 0
    body = bytes((r.proto,)) + r.key
    return _REC_HEAD.pack(MsgType.CT_DELETE, flags, 4 + len(body)) + body


def _decode_ct_delete(data: bytes, off: int, end: int, flags: int) -> CtDelete:
    if flags & ~_RF_CT_DELETE:
        raise _bad("ct delete: unknown record flags")
    if off + 1 > end:
        raise _bad("ct delete: truncated")
    proto = data[off]
    klen = key_length(proto, bool(flags & RF_V6))
    if off + 1 + klen != end:
        raise _bad("ct delete: bad length")
    key = data[off + 1 : end]
    _check_key(proto, key, "ct delete key")
    return CtDelete(proto, key)


def _exp_head(proto: int, key: bytes, mask: bytes, master: bytes) -> tuple[int, bytes]:
    flags = 0
    if len(key) in (36, 37, 33):
        flags |= RF_V6
    if len(master) in (36, 37, 33):
        flags |= RF_MASTER_V6
    if len(mask) != len(key):
        raise ValueError("expectation mask and key differ in length")
    return flags, bytes((proto,)) + key + mask + bytes((_key_proto(master),)) + master


def _decode_exp_head(
    data: bytes, off: int, end: int, flags: int, what: str
) -> tuple[int, bytes, bytes, bytes, int]:
    if off + 1 > end:
        raise _bad(f"{what}: truncated")
    proto = data[off]
    off += 1
    klen = key_length(proto, bool(flags & RF_V6))
    if off + 2 * klen + 1 > end:
        raise _bad(f"{what}: truncated key")
    key = data[off : off + klen]
    mask = data[off + klen : off + 2 * klen]
    _check_key(proto, key, f"{what} key")
    off += 2 * klen
    mproto = data[off]
    off += 1
    mlen = key_length(mproto, bool(flags & RF_MASTER_V6))
    if off + mlen > end:
        raise _bad(f"{what}: truncated master key")
    master = data[off : off + mlen]
    _check_key(mproto, master, f"{what} master key")
    return proto, key, mask, master, off + mlen


def encode_exp_update(r: ExpRecord) -> bytes:
    flags, head = _exp_head(r.proto, r.key, r.mask, r.master)
    name = r.helper.encode("ascii")
    if len(name) > MAX_HELPER_NAME:
        raise ValueError("helper name longer than 16 bytes")
    body = head + _EXP_TAIL.pack(min(r.timeout_ms, _U32_MAX), r.flags, r.cls, len(name)) + name
    if r.nat is not None:
        d, port, fn = r.nat
        fname = fn.encode("ascii")
        if not 1 <= len(fname) <= MAX_EXPECTFN_NAME:
            raise ValueError("expectfn name must be 1..32 bytes")
        flags |= RF_EXT
        body += _ext(Ext.EXP_NAT, _EXP_NAT.pack(d, port) + fname)
    return _REC_HEAD.pack(MsgType.EXP_UPDATE, flags, 4 + len(body)) + body


def _decode_exp_update(data: bytes, off: int, end: int, flags: int) -> ExpRecord:
    if flags & ~_RF_EXP_UPDATE:
        raise _bad("exp update: unknown record flags")
    proto, key, mask, master, off = _decode_exp_head(data, off, end, flags, "exp update")
    if off + _EXP_TAIL.size > end:
        raise _bad("exp update: truncated")
    timeout_ms, eflags, cls, hlen = _EXP_TAIL.unpack_from(data, off)
    off += _EXP_TAIL.size
    if hlen > MAX_HELPER_NAME or off + hlen > end:
        raise _bad("exp update: bad helper name length")
    name = data[off : off + hlen]
    if not _helper_name_ok(name):
        raise _bad("exp update: bad helper name")
    off += hlen
    nat = None
    if flags & RF_EXT:
        nat = _decode_exp_ext(data, off, end)
    elif off != end:
        raise _bad("exp update: trailing bytes")
    return ExpRecord(proto, key, mask, master, timeout_ms, eflags, cls, name.decode("ascii"), nat)


def _decode_exp_ext(data: bytes, off: int, end: int) -> tuple[int, int, str] | None:
    """The TLVs of an EXP_UPDATE: EXP_NAT is known, others are skipped (same rules as
    _decode_ext)."""
    nat = None
    for t, value in _tlvs(data, off, end):
        n = len(value)
        if t == Ext.EXP_NAT:
            fname = value[_EXP_NAT.size :]
            if n <= _EXP_NAT.size or len(fname) > MAX_EXPECTFN_NAME or not _helper_name_ok(fname):
                raise _bad("ext: bad EXP_NAT")
            d, port = _EXP_NAT.unpack_from(value)
            if d > 1:
                raise _bad("ext: bad EXP_NAT direction")
            nat = (d, port, fname.decode("ascii"))
    return nat


def encode_exp_delete(r: ExpDelete) -> bytes:
    flags, body = _exp_head(r.proto, r.key, r.mask, r.master)
    return _REC_HEAD.pack(MsgType.EXP_DELETE, flags, 4 + len(body)) + body


def _decode_exp_delete(data: bytes, off: int, end: int, flags: int) -> ExpDelete:
    if flags & ~_RF_EXP_DELETE:
        raise _bad("exp delete: unknown record flags")
    proto, key, mask, master, off = _decode_exp_head(data, off, end, flags, "exp delete")
    if off != end:
        raise _bad("exp delete: trailing bytes")
    return ExpDelete(proto, key, mask, master)


def encode_record(r: Record) -> bytes:
    if isinstance(r, CtRecord):
        return encode_ct_update(r)
    if isinstance(r, CtDelete):
        return encode_ct_delete(r)
    if isinstance(r, ExpRecord):
        return encode_exp_update(r)
    return encode_exp_delete(r)


# The common record gets a one-call fast path: IPv4 TCP, no optional section.
# head(4) proto(1) key(12) status(2) state(1) timeout(4) tflags0 tflags1 scales = 27 bytes
_CT_TCP4: Final = struct.Struct("!BBHB12sHBIBBB")
CT_TCP4_LEN: Final = _CT_TCP4.size


def decode_records(body: bytes) -> list[Record]:
    """All records of a SYNC body, decoded completely (a packet is applied all or nothing)."""
    out: list[Record] = []
    off = 0
    end_body = len(body)
    if not end_body:
        raise _bad("sync: no records")
    fast = _CT_TCP4.unpack_from
    ct_update = MsgType.CT_UPDATE
    while off < end_body:
        if off + 4 > end_body:
            raise _bad("record: truncated head")
        mtype, flags, rlen = _REC_HEAD.unpack_from(body, off)
        end = off + rlen
        if rlen < 5 or end > end_body:
            raise _bad("record: bad length")
        if mtype == ct_update and flags == 0 and rlen == CT_TCP4_LEN and body[off + 4] == 6:
            _, _, _, _, key, status, state, timeout_ms, tf0, tf1, scales = fast(body, off)
            if state >= _TCP_STATE_MAX or scales >> 4 > _SCALE_MAX or scales & 15 > _SCALE_MAX:
                raise _bad("ct update: bad tcp state or scale")
            rkey = key[4:8] + key[:4] + key[10:12] + key[8:10]
            s0, s1 = scales >> 4, scales & 15
            out.append(CtRecord(6, key, rkey, status, state, timeout_ms, 0, tf0, tf1, s0, s1))
        else:
            decoder = _RECORD_DECODERS.get(mtype)
            if decoder is None:
                raise _bad(f"record: unknown message type {mtype}")
            out.append(decoder(body, off + 4, end, flags))
        off = end
    return out


_RECORD_DECODERS: Final[dict[int, Callable[[bytes, int, int, int], Record]]] = {
    MsgType.CT_UPDATE: _decode_ct_update,
    MsgType.CT_DELETE: _decode_ct_delete,
    MsgType.EXP_UPDATE: _decode_exp_update,
    MsgType.EXP_DELETE: _decode_exp_delete,
}

Body = Announce | InitSyncRequest | Nack | WalkBegin | WalkDone | list[Record]

_BODY_DECODERS: Final[dict[int, Callable[[bytes], Body]]] = {
    PacketType.MASTER_ANNOUNCE: decode_announce,
    PacketType.SLAVE_INITSYNC: decode_initsync,
    PacketType.SYNC: decode_records,
    PacketType.NACK: decode_nack,
    PacketType.INITSYNC_BEGIN: decode_walk_begin,
    PacketType.INITSYNC_DONE: decode_walk_done,
}


def decode_body(ptype: int, body: bytes) -> Body:
    """Decode a packet body by type (the header was checked by decode_datagram)."""
    try:
        return _BODY_DECODERS[ptype](body)
    except MalformedMessage:
        raise
    except (struct.error, ValueError, UnicodeDecodeError, IndexError) as exc:  # belt and braces
        raise MalformedMessage(f"{type(exc).__name__}: {exc}") from None
