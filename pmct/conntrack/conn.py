"""The connection record (kernel struct nf_conn): one slotted object per tracked connection.

Rules:
1. A Conn is an entity (identity equality). It knows nothing about sync or the node.
2. Memory matters (target: <= 600 bytes per connection at 1M connections, keys and dict
   included), so:
   - the tuples are not stored as objects: ``key``/``rkey`` are the two dict keys themselves
     (see keys.py) and ``orig``/``reply`` decode them on demand;
   - TCP's twelve 32-bit window numbers live in one ``TcpWindow`` (``tw``: twelve C fields when
     compiled, ~120 bytes) instead of twelve int objects (~380 bytes); the small numbers
     (state, scale, flags) are cached small ints and cost nothing beyond their slot.
3. Protocol-private fields are slots on the Conn (the kernel's ``ct->proto`` union); a tracker
   touches only its own.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Final

from pmct.conntrack.keys import Tuple, decode_key

__all__ = ["TW_FIELDS", "Conn", "TcpWindow", "new_tcp_window", "window_of"]

# Index of each number in Conn.tw (kernel ip_ct_tcp: seen[2] and the last_* fields).
TW_FIELDS = (
    "td_end0",
    "td_maxend0",
    "td_maxwin0",
    "td_end1",
    "td_maxend1",
    "td_maxwin1",
    "last_seq",
    "last_ack",
    "last_end",
    "last_win",
    "td_maxack0",  # appended for the TCP tracker's RST check (kernel seen[dir].td_maxack)
    "td_maxack1",
)
_U32_MAX: Final = 0xFFFFFFFF  # a C constant when compiled (TcpWindow.__setitem__ tests it)


class TcpWindow:
    """The twelve 32-bit numbers of TCP window tracking, a sequence in TW_FIELDS order.

    Why a class of its own and not ``array('I')``: compiled (scripts/build_accel.py), each
    number is a C field of the object and ``tw[i]`` a direct call that picks the field by
    ``i``; an array builds an int object for every read and parses one for every write, a
    generic C-API round trip that was a fifth of the TCP tracker's time. The memory is the
    same (twelve 8-byte fields in the object instead of a buffer of twelve 4-byte words next
    to an array header). Like the array, it refuses numbers outside 0..2**32-1.
    """

    __slots__ = (  # TW_FIELDS
        "td_end0",
        "td_maxend0",
        "td_maxwin0",
        "td_end1",
        "td_maxend1",
        "td_maxwin1",
        "last_seq",
        "last_ack",
        "last_end",
        "last_win",
        "td_maxack0",
        "td_maxack1",
    )

    td_end0: int
    td_maxend0: int
    td_maxwin0: int
    td_end1: int
    td_maxend1: int
    td_maxwin1: int
    last_seq: int
    last_ack: int
    last_end: int
    last_win: int
    td_maxack0: int
    td_maxack1: int

    def __init__(self) -> None:
        self.td_end0 = self.td_maxend0 = self.td_maxwin0 = 0
        self.td_end1 = self.td_maxend1 = self.td_maxwin1 = 0
        self.last_seq = self.last_ack = self.last_end = self.last_win = 0
        self.td_maxack0 = self.td_maxack1 = 0

    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int) -> int:
        if i < 0:
            i += 12
        if i < 6:
            if i < 3:
                if i == 0:
                    return self.td_end0
                if i == 1:
                    return self.td_maxend0
                if i == 2:
                    return self.td_maxwin0
            elif i == 3:
                return self.td_end1
            elif i == 4:
                return self.td_maxend1
            else:
                return self.td_maxwin1
        elif i < 10:
            if i == 6:
                return self.last_seq
            if i == 7:
                return self.last_ack
            if i == 8:
                return self.last_end
            return self.last_win
        elif i == 10:
            return self.td_maxack0
        elif i == 11:
            return self.td_maxack1
        raise IndexError("TcpWindow index out of range")

    def __setitem__(self, i: int, value: int) -> None:
        if value < 0 or value > _U32_MAX:
            raise OverflowError(f"TcpWindow number {value} is not an unsigned 32-bit integer")
        if i < 0:
            i += 12
        if i < 6:
            if i < 3:
                if i == 0:
                    self.td_end0 = value
                    return
                if i == 1:
                    self.td_maxend0 = value
                    return
                if i == 2:
                    self.td_maxwin0 = value
                    return
            elif i == 3:
                self.td_end1 = value
                return
            elif i == 4:
                self.td_maxend1 = value
                return
            else:
                self.td_maxwin1 = value
                return
        elif i < 10:
            if i == 6:
                self.last_seq = value
            elif i == 7:
                self.last_ack = value
            elif i == 8:
                self.last_end = value
            else:
                self.last_win = value
            return
        elif i == 10:
            self.td_maxack0 = value
            return
        elif i == 11:
            self.td_maxack1 = value
            return
        raise IndexError("TcpWindow assignment index out of range")

    def __iter__(self) -> Iterator[int]:
        return iter(
            (
                self.td_end0,
                self.td_maxend0,
                self.td_maxwin0,
                self.td_end1,
                self.td_maxend1,
                self.td_maxwin1,
                self.last_seq,
                self.last_ack,
                self.last_end,
                self.last_win,
                self.td_maxack0,
                self.td_maxack1,
            )
        )

    def __repr__(self) -> str:
        return f"TcpWindow({list(self)})"

    def copy(self) -> TcpWindow:
        return window_of(list(self))


def new_tcp_window() -> TcpWindow:
    return TcpWindow()


def window_of(values: Sequence[int]) -> TcpWindow:
    """A TcpWindow holding ``values`` (twelve numbers, TW_FIELDS order)."""
    if len(values) != 12:
        raise ValueError(f"a TCP window has 12 numbers, not {len(values)}")
    tw = TcpWindow()
    for i in range(12):
        tw[i] = values[i]
    return tw


class Conn:
    """One tracked connection.

    ``expires`` is an absolute deadline in the caller's clock (seconds, float). ``state`` is the
    protocol state (TcpState for TCP, SCTP state for SCTP, 0 elsewhere). ``timeout`` is
    unused by the engine's hot path; ``status`` uses the kernel's IPS_* bits.
    """

    __slots__ = (
        "id",
        "key",
        "rkey",
        "l3",
        "proto",
        "status",
        "expires",
        "state",
        "stream_ts",  # UDP: deadline after which the flow counts as a stream (kernel stream_ts)
        # --- TCP (kernel struct ip_ct_tcp) ---
        "tw",  # TcpWindow: see TW_FIELDS
        "td_scale0",
        "td_scale1",
        "tflags0",  # IP_CT_TCP_FLAG_* of the original-direction sender
        "tflags1",
        "last_dir",
        "last_index",
        "last_wscale",
        "last_flags",
        "retrans",
        "extra",  # dict for rare data (mark, helper, master, NAT binding); None when unused
    )

    # Declared for type checkers and mypyc (scripts/build_accel.py compiles the hot modules).
    id: int
    key: bytes
    rkey: bytes
    l3: int
    proto: int
    status: int
    expires: float
    state: int
    stream_ts: float
    tw: TcpWindow
    td_scale0: int
    td_scale1: int
    tflags0: int
    tflags1: int
    last_dir: int
    last_index: int
    last_wscale: int
    last_flags: int
    retrans: int
    extra: dict[str, Any] | None

    def __init__(self, cid: int, key: bytes, rkey: bytes, l3: int, proto: int) -> None:
        self.id = cid
        self.key = key
        self.rkey = rkey
        self.l3 = l3
        self.proto = proto
        self.status = 0
        self.expires = 0.0
        self.state = 0
        self.stream_ts = 0.0
        self.extra = None

    # Rarely set attributes live in ``extra``: a slot costs 8 bytes on every one of a million
    # connections, while a mark, a helper or a master is set on few of them.

    def _get_extra(self, name: str, default: Any) -> Any:
        extra = self.extra
        return default if extra is None else extra.get(name, default)

    def _set_extra(self, name: str, value: Any, default: Any) -> None:
        extra = self.extra
        if extra is None:
            if value == default:
                return
            extra = self.extra = {}
        if value == default:
            extra.pop(name, None)
        else:
            extra[name] = value

    @property
    def mark(self) -> int:
        return int(self._get_extra("mark", 0))

    @mark.setter
    def mark(self, value: int) -> None:
        self._set_extra("mark", value, 0)

    @property
    def helper(self) -> Any:
        return self._get_extra("helper", None)

    @helper.setter
    def helper(self, value: Any) -> None:
        self._set_extra("helper", value, None)

    @property
    def master(self) -> Conn | None:
        m: Conn | None = self._get_extra("master", None)
        return m

    @master.setter
    def master(self, value: Conn | None) -> None:
        self._set_extra("master", value, None)

    @property
    def orig(self) -> Tuple:
        return decode_key(self.key)

    @property
    def reply(self) -> Tuple:
        return decode_key(self.rkey)

    def __repr__(self) -> str:
        o = self.orig
        return (
            f"<Conn id={self.id} proto={self.proto} {o.src_text()}:{o.sport} -> "
            f"{o.dst_text()}:{o.dport} state={self.state} status={self.status:#x}>"
        )
