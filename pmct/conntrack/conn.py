"""The connection record (kernel struct nf_conn): one slotted object per tracked connection.

Rules:
1. A Conn is an entity (identity equality). It knows nothing about sync or the node.
2. Memory matters (target: <= 600 bytes per connection at 1M connections, keys and dict
   included), so:
   - the tuples are not stored as objects: ``key``/``rkey`` are the two dict keys themselves
     (see keys.py) and ``orig``/``reply`` decode them on demand;
   - TCP's twelve 32-bit window numbers live in one ``array('I')`` (``tw``, ~128 bytes) instead of
     twelve int objects (~380 bytes); the small numbers (state, scale, flags) are cached small
     ints and cost nothing beyond their slot.
3. Protocol-private fields are slots on the Conn (the kernel's ``ct->proto`` union); a tracker
   touches only its own.
"""

from __future__ import annotations

from array import array
from typing import Any

from pmct.conntrack.keys import Tuple, decode_key

__all__ = ["TW_FIELDS", "Conn", "new_tcp_window"]

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
_TW_ZERO = array("I", bytes(4 * len(TW_FIELDS)))


def new_tcp_window() -> array[int]:
    return array("I", _TW_ZERO)


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
        "tw",  # array('I'): see TW_FIELDS
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
    tw: array[int]
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
