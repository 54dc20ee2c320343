"""The ct_sync endpoint: a complete protocol core with no sockets, no threads and no clock.

Datagrams and ``now`` go in; datagrams, table changes (through the SyncTable adapter), events
and one timer deadline come out -- the aioquic QuicConnection shape:

    proto.receive_datagram(data, now=now)      # from the sync socket
    proto.local_update(conn, now=now)          # engine NEW/UPDATE events (replicate master)
    proto.handle_timer(now=now)                # when now >= proto.get_timer()
    for d in proto.datagrams_to_send(now=now): sock.send(d)
    while (ev := proto.next_event()) is not None: ...

docs/protocol.md is the specification; the section numbers below refer to it.

Rules:
1. Bad remote input never raises and never half-applies: a datagram is authenticated and
   decoded completely before anything in it is used; every drop is counted by a stable name
   (``drops``, DROP_REASONS).
2. Role (master/slave) is the shell's decision (promote/demote), except for the split-brain
   rule (§6), which demotes deterministically and reports RoleChanged.
3. The slave's init-sync life cycle is a table (SYNC_TRANSITIONS); code classifies the input
   and looks the transition up.
4. A master applies nothing; a slave streams nothing. So nothing this core applies can echo
   back into the stream (conntrackd origin.h solves the same problem with origin tags).
5. Policy lives here, classification in seq.py, framing in codec.py, fields in records.py,
   the merge rule in merge.py, mode differences in modes.py.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from types import MappingProxyType
from typing import Final

from pmct.conntrack.conn import Conn
from pmct.conntrack.constants import Status
from pmct.conntrack.keys import IPPROTO_TCP
from pmct.conntrack.proto.tcp import IP_CT_TCP_FLAG_BE_LIBERAL
from pmct.errors import ConfigError, MalformedMessage
from pmct.serial import MASK32, after, before
from pmct.sync.backlog import Backlog
from pmct.sync.codec import (
    CT_TCP4_LEN,
    FLAG_WALK,
    HEADER,
    HMAC_LEN,
    MAX_NACK_RANGES,
    Announce,
    CtDelete,
    CtRecord,
    ExpDelete,
    ExpRecord,
    Header,
    InitSyncRequest,
    Nack,
    PacketType,
    WalkBegin,
    WalkDone,
    decode_body,
    decode_datagram,
    encode_announce,
    encode_ct_delete,
    encode_datagram,
    encode_exp_delete,
    encode_exp_update,
    encode_initsync,
    encode_nack,
    encode_walk_begin,
    encode_walk_done,
)
from pmct.sync.events import (
    Event,
    InitSyncCompleted,
    InitSyncStarted,
    MasterChanged,
    ReadinessChanged,
    RoleChanged,
    StreamReset,
)
from pmct.sync.modes import MODE_NAMES, make_mode
from pmct.sync.pacer import UNLIMITED, Pacer, default_slack
from pmct.sync.records import delete_record, has_window, pack_conn
from pmct.sync.seq import ReplayWindow, SeqClass, StreamRx
from pmct.sync.table import SyncTable

__all__ = [
    "DROP_REASONS",
    "STAT_NAMES",
    "SYNC_TRANSITIONS",
    "Progress",
    "Role",
    "SyncConfig",
    "SyncEvent",
    "SyncProtocol",
    "SyncState",
    "next_sync_state",
]

_ANNOUNCE: Final = int(PacketType.MASTER_ANNOUNCE)
_INITSYNC: Final = int(PacketType.SLAVE_INITSYNC)
_SYNC: Final = int(PacketType.SYNC)
_NACK: Final = int(PacketType.NACK)
_BEGIN: Final = int(PacketType.INITSYNC_BEGIN)
_DONE: Final = int(PacketType.INITSYNC_DONE)
_CONTROL: Final = frozenset({_INITSYNC, _NACK})  # never part of a master's stream (§3)
_DYING: Final = int(Status.DYING)
_HALF: Final = 0x8000_0000

# Drop reasons: stable names, the counter labels (docs/protocol.md §13).
DROP_REASONS: Final = (
    "malformed",
    "bad_version",
    "unauthenticated",
    "hmac_unexpected",
    "own_node",
    "unknown_node",
    "stale_epoch",
    "replay",
    "duplicate",
    "not_master",
    "not_for_me",
)

STAT_NAMES: Final = (
    "rx_packets",
    "rx_records",
    "tx_packets",
    "tx_bytes",
    "tx_records",
    "announces_sent",
    "announces_received",
    "stale_announces",
    "mode_mismatch",
    "nack_sent",
    "nack_received",
    "acks_sent",
    "acks_received",
    "retransmitted",
    "retransmit_unavailable",
    "initsync_requests_sent",
    "initsync_requests_received",
    "walks_started",
    "walks_completed",
    "walks_received",
    "walks_missed",
    "resyncs",
    "gap_fallbacks",
    "gap_overflow",
    "peer_restarts",
    "split_brain_demotions",
    "split_brain_wins",
    "purged",
    "apply_inserted",
    "apply_replaced",
    "apply_stale",
    "apply_nat_rebound",
    "apply_table_full",
    "apply_deleted",
    "apply_delete_absent",
    "apply_delete_ignored",
    "apply_exp_stored",
    "apply_exp_kept",
    "apply_exp_deleted",
)


class Role(IntEnum):
    SLAVE = 0
    MASTER = 1


class SyncState(IntEnum):
    """A slave's init-sync life cycle (a master is always SYNCED)."""

    UNSYNCED = 0  # needs init sync, request not sent yet
    REQUESTED = 1  # SLAVE_INITSYNC sent, waiting for INITSYNC_BEGIN
    SYNCING = 2  # a walk is being applied
    SYNCED = 3  # ready


class SyncEvent(IntEnum):
    NEED_RESYNC = 0  # boot, unrepairable gap, master change (replicate), stalled walk
    REQUEST_SENT = 1
    WALK_BEGIN = 2
    WALK_DONE = 3


_U, _R, _S, _D = SyncState.UNSYNCED, SyncState.REQUESTED, SyncState.SYNCING, SyncState.SYNCED
# fmt: off
SYNC_TRANSITIONS: Final[Mapping[tuple[SyncState, SyncEvent], SyncState]] = MappingProxyType({
    (_U, SyncEvent.NEED_RESYNC): _U,
    (_R, SyncEvent.NEED_RESYNC): _U,
    (_S, SyncEvent.NEED_RESYNC): _U,   # the walk in progress is abandoned
    (_D, SyncEvent.NEED_RESYNC): _U,   # not ready until a new walk completes
    (_U, SyncEvent.REQUEST_SENT): _R,
    (_R, SyncEvent.REQUEST_SENT): _R,  # retry
    (_U, SyncEvent.WALK_BEGIN): _S,    # any walk will do: it re-sends the whole table
    (_R, SyncEvent.WALK_BEGIN): _S,
    (_S, SyncEvent.WALK_BEGIN): _S,    # the master restarted the walk for another request
    (_D, SyncEvent.WALK_BEGIN): _D,    # someone else's walk: still ready
    (_U, SyncEvent.WALK_DONE): _U,     # end of a walk whose BEGIN we did not apply
    (_R, SyncEvent.WALK_DONE): _R,
    (_S, SyncEvent.WALK_DONE): _D,
    (_D, SyncEvent.WALK_DONE): _D,
})
# fmt: on


def next_sync_state(state: SyncState, ev: SyncEvent) -> SyncState | None:
    """None: the transition is not in the table (the caller keeps ``state``)."""
    return SYNC_TRANSITIONS.get((state, ev))


@dataclass(frozen=True, slots=True)
class SyncConfig:
    """Per-node ct_sync settings (the node's config maps TOML keys onto these)."""

    node_id: int
    peers: frozenset[int]
    mode: str = "concurrent"
    hmac_key: bytes | None = None
    max_datagram: int = 1472  # UDP payload of a 1500-byte MTU over IPv4
    backlog: int = 1024  # packets
    reorder_limit: int = 1024  # packets a follower buffers ahead of a hole
    announce_interval: float = 1.0
    nack_delay: float = 0.005
    nack_interval: float = 0.05
    nack_max_interval: float = 1.0
    nack_retries: int = 6
    initsync_retry: float = 1.0
    initsync_on_start: bool = True
    initsync_rate: float = 0.0  # records per second; 0 = unthrottled
    initsync_burst: int = 0  # pacer slack above one packet (records); 0 = pacer.default_slack
    walk_burst_packets: int = 64  # walk packets per datagrams_to_send() call
    walk_budget: int = 512  # walk records per value of ``now`` (one loop iteration); 0 = no cap
    walk_timeout: float = 30.0  # a walk with no packet (slave) / no ACK (master) for this long
    walk_window: int = 0  # walk packets a requester may leave unacknowledged; 0 = backlog // 2
    ack_every: int = 32  # a follower ACKs at least every this many stream packets ...
    ack_delay: float = 0.02  # ... or this long after progress
    send_window: bool = False
    # A TCP entry a record leaves without window data (td_maxwin 0 both ways: the record had
    # no window section and there was no local window to keep) gets IP_CT_TCP_FLAG_BE_LIBERAL
    # in both directions, as conntrackd injects entries with its default TCPWindowTracking
    # Off. Off (the default) = the kernel's rule for ctnetlink-injected entries: re-seed the
    # window from the next segments, which can judge data in flight at a failover "ACK/SEQ is
    # over upper bound" (docs/protocol.md §10).
    liberal_without_window: bool = False
    replay_window: int = 64
    refresh_interval: float = 1.0  # replicate: rolling refresh scan period
    refresh_batch: int = 10000  # replicate: entries looked at per scan step
    flush_delay: float = 0.0  # replicate: how long live changes may wait to fill a packet
    master_timeout: float = 3.5

    def __post_init__(self) -> None:
        if not 1 <= self.node_id <= 0xFFFF:
            raise ConfigError("sync.node_id: must be 1..65535")
        if any(not 1 <= p <= 0xFFFF for p in self.peers) or self.node_id in self.peers:
            raise ConfigError("sync.peers: node ids 1..65535, not including node_id")
        if self.mode not in MODE_NAMES:
            raise ConfigError(f"sync.mode: unknown mode {self.mode!r}")
        if self.hmac_key is not None and len(self.hmac_key) < 16:
            raise ConfigError("sync.hmac_key: at least 16 bytes")
        if not 576 <= self.max_datagram <= 65507:  # the largest record is < 500 bytes
            raise ConfigError("sync.max_datagram: 576..65507")
        if self.backlog < 2 or self.reorder_limit < 1 or self.replay_window < 1:
            raise ConfigError("sync.backlog >= 2, reorder_limit / replay_window >= 1")
        if self.walk_window < 0 or self.walk_window > self.backlog or self.ack_every < 1:
            raise ConfigError("sync.walk_window: 0..backlog; sync.ack_every >= 1")
        if self.walk_budget < 0:
            raise ConfigError("sync.walk_budget: >= 0")
        if self.initsync_rate < 0 or self.initsync_burst < 0:
            raise ConfigError("sync.initsync_rate / initsync_burst: >= 0")
        if min(self.announce_interval, self.nack_interval, self.initsync_retry) <= 0:
            raise ConfigError("sync intervals must be > 0")


def _liberal_if_windowless(conn: Conn | None) -> None:
    """SyncConfig.liberal_without_window: BE_LIBERAL both ways on an entry with no window."""
    if conn is not None and not has_window(conn):
        conn.tflags0 |= IP_CT_TCP_FLAG_BE_LIBERAL
        conn.tflags1 |= IP_CT_TCP_FLAG_BE_LIBERAL


@dataclass(frozen=True, slots=True)
class Progress:
    """What ``pmct status`` shows about sync."""

    role: str
    state: str
    ready: bool
    master: int | None
    walk: int | None
    total: int
    done: int
    percent: float
    rate: float  # records per second since the walk began
    behind: int  # seqs missing in the followed stream


@dataclass(slots=True)
class _Following:
    node: int
    epoch: int
    term: int


class _Walk:
    """Master side of one init-sync walk (docs/protocol.md §12)."""

    __slots__ = (
        "begun", "exps", "first_seq", "gone", "id", "keys", "pos", "sent", "started", "total",
    )  # fmt: skip

    def __init__(self, wid: int, keys: list[bytes], n_conns: int, n_exps: int, now: float) -> None:
        self.id = wid
        self.keys = keys  # SyncTable.keys(): both directions; the walk sends original ones
        self.pos = 0
        self.gone = 0  # snapshot keys whose entry died before its turn
        self.exps: list[ExpRecord] | None = None  # taken when the conntrack part is done
        self.total = n_conns + n_exps  # an estimate until the end (§12)
        self.sent = 0
        self.started = now
        self.begun = False
        self.first_seq = 0  # seq of INITSYNC_BEGIN


class _WalkRx:
    """Slave side of a walk being applied."""

    __slots__ = ("done", "id", "last", "started", "total")

    def __init__(self, wid: int, total: int, now: float) -> None:
        self.id = wid
        self.total = total
        self.done = 0
        self.started = now
        self.last = now


# A buffered stream item: header, decoded body, local receive time, now_ms - stamp.
_Item = tuple[Header, object, float, int]


def _signed32(x: int) -> int:
    x &= MASK32
    return x - (1 << 32) if x >= _HALF else x


class SyncProtocol:
    """One ct_sync endpoint (master or slave). See the module docstring for the API shape.

    Args:
        config: SyncConfig.
        table: the SyncTable adapter over the node's connection table.
        epoch: this incarnation's epoch (must grow across restarts; docs/protocol.md §1).
        now: the clock at start.
        initial_seq: first packet seq (the shell may randomise it).
        role: the role at start (the cluster manager usually promotes later).
        term: for role MASTER, the term of the initial claim (default: the epoch).
    """

    def __init__(
        self,
        config: SyncConfig,
        table: SyncTable,
        *,
        epoch: int,
        now: float,
        initial_seq: int = 0,
        role: Role = Role.SLAVE,
        term: int | None = None,
    ) -> None:
        self.config = config
        self.table = table
        self.mode = make_mode(config.mode)
        self.node_id = config.node_id
        self.epoch = epoch & MASK32
        self._key = config.hmac_key
        self._seq = initial_seq & MASK32
        self._now = now
        self._cap = config.max_datagram - HEADER.size - (HMAC_LEN if self._key else 0)
        self._per_packet = max(1, self._cap // CT_TCP4_LEN)
        # The walk waits for one packet's worth of records (the quantum); the bucket holds one
        # slack more, so a late wake-up's tokens are carried, not lost (pacer.py, §12).
        self._quantum = self._per_packet
        slack = config.initsync_burst or default_slack(config.initsync_rate, self._quantum)
        self._events: deque[Event] = deque()
        self.drops: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.stats: dict[str, int] = dict.fromkeys(STAT_NAMES, 0)
        self.malformed_detail: dict[str, int] = {}

        self.role = Role.SLAVE
        self.term = 0
        self._max_term = 0
        self._epochs: dict[int, int] = {}
        self._replay: dict[int, ReplayWindow] = {}
        # master side
        self._backlog = Backlog(config.backlog, self._seq)
        self._announce_now = False
        self._announce_due: float | None = None
        self._retx: list[bytes] = []
        self._retx_seqs: set[int] = set()
        self._pending: dict[bytes, Conn | None] = {}
        self._pending_exp: list[ExpRecord | ExpDelete] = []
        self._pending_since: float | None = None
        self._walk: _Walk | None = None
        self._walk_waiting: set[int] = set()  # nodes whose request the next walk serves
        self._walk_for: dict[int, float] = {}  # requesters of this walk -> last ACK progress
        self._acks: dict[int, int] = {}  # follower -> its cumulative ACK of our stream
        self._walk_window = config.walk_window or config.backlog // 2
        self._walk_counter = 0
        self._pacer = Pacer(config.initsync_rate, self._quantum + slack, now)
        # the per-iteration budget (§12): walk records sent while ``now`` had this value
        self._budget_now = -math.inf
        self._budget_used = 0
        self._served: dict[int, int] = {}
        self._refresh_keys: list[bytes] = []
        self._refresh_pos = 0
        self._refresh_due: float | None = None
        # slave side
        self._following: _Following | None = None
        self._rx: StreamRx[_Item] | None = None
        self._offset: int | None = None
        self._master_oldest = 0
        self._last_master_rx = -math.inf
        self._nack_due: float | None = None
        self._nack_wait = config.nack_interval
        self._nack_tries = 0
        self._nack_exp = -1  # rx.expected when the last NACK went out
        self._acked = 0  # the cumulative ACK we last sent
        self._ack_due: float | None = None
        self._ctl: list[tuple[int, bytes]] = []
        self.sync_state = SyncState.UNSYNCED if config.initsync_on_start else SyncState.SYNCED
        self._request_id = 1
        self._request_due: float | None = now if config.initsync_on_start else None
        self._walk_rx: _WalkRx | None = None
        self._purge: set[bytes] | None = None
        self._walk_records_total = 0
        if role == Role.MASTER:
            self.promote(now=now, term=term)

    # ------------------------------------------------------------------ public state

    @property
    def ready(self) -> bool:
        """False while this node needs init sync (readiness gate for the cluster manager)."""
        return self.role == Role.MASTER or self.sync_state == SyncState.SYNCED

    @property
    def master(self) -> int | None:
        if self.role == Role.MASTER:
            return self.node_id
        return self._following.node if self._following is not None else None

    def master_alive(self, *, now: float) -> bool:
        if self.role == Role.MASTER:
            return True
        return now - self._last_master_rx <= self.config.master_timeout

    def counters(self) -> dict[str, int]:
        out = {f"drop_{k}": v for k, v in self.drops.items()}
        out.update(self.stats)
        return out

    def progress(self, *, now: float) -> Progress:
        if self.role == Role.MASTER:
            w = self._walk
            if w is None:
                return Progress("master", "SYNCED", True, self.node_id, None, 0, 0, 100.0, 0.0, 0)
            return Progress(
                "master",
                "SYNCED",
                True,
                self.node_id,
                w.id,
                w.total,
                w.sent,
                _percent(w.sent, w.total),
                _rate(w.sent, now - w.started),
                0,
            )
        rx = self._rx
        behind = 0
        if rx is not None and rx.has_gap:
            behind = ((rx.highest - rx.expected) & MASK32) + 1 - len(rx.pending)
        wr = self._walk_rx
        if wr is None:
            pct = 100.0 if self.sync_state == SyncState.SYNCED else 0.0
            state = self.sync_state.name
            return Progress("slave", state, self.ready, self.master, None, 0, 0, pct, 0.0, behind)
        return Progress(
            "slave",
            self.sync_state.name,
            self.ready,
            self.master,
            wr.id,
            wr.total,
            wr.done,
            _percent(wr.done, wr.total),
            _rate(wr.done, now - wr.started),
            behind,
        )

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    # ------------------------------------------------------------------ role changes

    def promote(self, *, now: float, term: int | None = None) -> None:
        """Become master (the cluster manager said so): claim ``(term, node_id)`` (§6)."""
        was_ready = self.ready
        if term is None:
            term = max(self._max_term + 1, self.epoch)
        self.term = term & MASK32
        self._max_term = max(self._max_term, self.term)
        self.role = Role.MASTER
        self._stop_following()
        self._backlog.clear(self._seq)
        self._announce_now = True
        self._announce_due = now + self.config.announce_interval
        self._walk = None
        self._walk_waiting = set()
        self._walk_for = {}
        self._served.clear()
        self._pending.clear()
        self._pending_exp.clear()
        self._pending_since = None
        self.mode.reset()
        self._refresh_keys = []
        self._refresh_pos = 0
        streams = self.mode.streams_changes
        self._refresh_due = now + self.config.refresh_interval if streams else None
        self._ctl.clear()
        self._request_due = None
        self._nack_due = None
        self._walk_rx = None
        self._purge = None
        self.sync_state = SyncState.SYNCED
        self._events.append(RoleChanged("master", "promote", self.term))
        self._ready_event(was_ready)

    def demote(self, *, now: float, reason: str = "demote") -> None:
        """Become slave. In concurrent mode the node keeps its own table and stays ready."""
        if self.role != Role.MASTER:
            return
        self.role = Role.SLAVE
        self._walk = None
        self._walk_waiting = set()
        self._walk_for = {}
        self._retx.clear()
        self._retx_seqs.clear()
        self._pending.clear()
        self._pending_exp.clear()
        self._pending_since = None
        self._announce_now = False
        self._announce_due = None
        self._refresh_due = None
        self.mode.reset()
        self._events.append(RoleChanged("slave", reason, self.term))

    def request_initsync(self, *, now: float) -> None:
        """Ask the master for the whole table again (``pmct sync resync``)."""
        if self.role == Role.SLAVE:
            self._need_resync("requested", now)

    # ------------------------------------------------------------------ local changes

    def local_update(self, conn: Conn, *, now: float) -> None:
        """The engine created or changed ``conn`` (call for NEW and UPDATE events)."""
        if self.role == Role.MASTER and self.mode.streams_changes:
            if not self._pending and not self._pending_exp:
                self._pending_since = now
            self._pending[conn.key] = conn

    def local_delete(self, conn: Conn, *, now: float) -> None:
        """The engine deleted ``conn`` (DESTROY event)."""
        if self.role == Role.MASTER and self.mode.streams_changes:
            if not self._pending and not self._pending_exp:
                self._pending_since = now
            self._pending[conn.key] = None

    def local_expect(self, rec: ExpRecord | ExpDelete, *, now: float) -> None:
        """An expectation was created (ExpRecord, timeout from ``now``) or removed."""
        if self.role == Role.MASTER and self.mode.streams_changes:
            if not self._pending and not self._pending_exp:
                self._pending_since = now
            self._pending_exp.append(rec)

    # ------------------------------------------------------------------ input

    def receive_datagram(self, data: bytes, *, now: float) -> None:
        """Process one datagram from the sync socket. Never raises for any ``data``."""
        self._now = now
        self.stats["rx_packets"] += 1
        try:
            h, body = decode_datagram(data, self._key)
        except MalformedMessage as exc:
            self._drop_malformed(exc)
            return
        node = h.node
        if node == self.node_id:
            self.drops["own_node"] += 1
            return
        if node not in self.config.peers:
            self.drops["unknown_node"] += 1
            return
        try:
            msg = decode_body(h.type, body)
        except MalformedMessage as exc:
            self._drop_malformed(exc)
            return
        # Epoch: an older incarnation is stale; a newer one means the peer restarted (§7).
        known = self._epochs.get(node)
        if known is None or after(h.epoch, known):
            if known is not None:
                self._peer_restarted(node, now)
            self._epochs[node] = h.epoch
        elif h.epoch != known:
            self.drops["stale_epoch"] += 1
            return
        f = self._following
        if f is not None and f.node == node and f.epoch == h.epoch and h.type not in _CONTROL:
            if h.type == _ANNOUNCE and msg.term != f.term:  # type: ignore[union-attr]
                self._claim(h, msg, now)  # type: ignore[arg-type]
            else:
                self._stream(h, msg, now)
            return
        win = self._replay.get(node)
        if win is None:
            self._replay[node] = ReplayWindow(h.seq, self.config.replay_window)
        elif not win.check(h.seq):
            self.drops["replay"] += 1
            return
        t = h.type
        if t == _ANNOUNCE:
            self._claim(h, msg, now)  # type: ignore[arg-type]
        elif t == _INITSYNC:
            self._on_initsync(h, msg, now)  # type: ignore[arg-type]
        elif t == _NACK:
            self._on_nack(h, msg, now)  # type: ignore[arg-type]
        else:
            self.drops["not_master"] += 1

    def _drop_malformed(self, exc: MalformedMessage) -> None:
        reason = getattr(exc, "reason", "malformed")
        self.drops[reason] += 1
        if reason == "malformed":
            detail = str(exc).split(":")[0][:40]
            self.malformed_detail[detail] = self.malformed_detail.get(detail, 0) + 1

    def _peer_restarted(self, node: int, now: float) -> None:
        self.stats["peer_restarts"] += 1
        self._replay.pop(node, None)
        self._served.pop(node, None)
        self._acks.pop(node, None)
        self._walk_for.pop(node, None)
        f = self._following
        if f is not None and f.node == node:
            self._stop_following()
            self._events.append(MasterChanged(None, 0, 0))
            if self.sync_state == SyncState.SYNCING:
                self._need_resync("master_restarted", now)

    # --- split brain / following (§6)

    def _claim(self, h: Header, a: Announce, now: float) -> None:
        self.stats["announces_received"] += 1
        if a.term > self._max_term:
            self._max_term = a.term
        claim = (a.term, h.node)
        if self.role == Role.MASTER:
            if claim > (self.term, self.node_id):
                self.stats["split_brain_demotions"] += 1
                self.demote(now=now, reason=f"split_brain: node {h.node} term {a.term}")
                self._follow(h, a, now)
            else:
                self.stats["split_brain_wins"] += 1
                self._announce_now = True
            return
        f = self._following
        if f is None or claim > (f.term, f.node):
            self._follow(h, a, now)
        else:
            self.stats["stale_announces"] += 1

    def _follow(self, h: Header, a: Announce, now: float) -> None:
        self._following = _Following(h.node, h.epoch, a.term)
        self._rx = StreamRx(h.seq, self.config.reorder_limit)
        self._offset = None
        self._master_oldest = a.oldest
        self._nack_due = None
        self._nack_tries = 0
        self._nack_wait = self.config.nack_interval
        self._acked = h.seq
        self._ack_due = None
        self._replay.pop(h.node, None)
        self._events.append(MasterChanged(h.node, h.epoch, a.term))
        if MODE_NAMES[a.mode] != self.mode.name:
            self.stats["mode_mismatch"] += 1
        state = self.sync_state
        if state == SyncState.SYNCING or (
            state == SyncState.SYNCED and self.mode.initsync_on_master_change
        ):
            self._need_resync("master_changed", now)
        self._stream(h, a, now)

    def _stop_following(self) -> None:
        self._following = None
        self._ack_due = None
        self._rx = None
        self._offset = None
        self._nack_due = None
        self._walk_rx = None
        self._purge = None

    # --- the followed stream (§9)

    def _stream(self, h: Header, msg: object, now: float) -> None:
        rx = self._rx
        assert rx is not None
        self._last_master_rx = now
        cls = rx.classify(h.seq)
        if cls == SeqClass.DUPLICATE:
            self.drops["duplicate"] += 1
            return
        d = _signed32(int(now * 1000.0) - h.stamp)
        if self._offset is None or d < self._offset:
            self._offset = d
        item: _Item = (h, msg, now, d)
        if cls == SeqClass.TOO_FAR:
            # Further ahead than we buffer: drop it, but remember that it exists; the NACKs
            # ask for it again once the hole before it is filled (it is in the backlog).
            self.stats["gap_overflow"] += 1
            rx.note_highest(h.seq)
            self._gap_timer(now)
            return
        if h.type == _ANNOUNCE:
            oldest = msg.oldest  # type: ignore[attr-defined]
            if after(oldest, self._master_oldest):
                self._master_oldest = oldest
        self._deliver_all(rx.accept(h.seq, item), now)
        if self._rx is not rx:
            return
        if rx.has_gap and after(self._master_oldest, rx.expected):
            # The master no longer holds what we miss: skip to what it holds, resync (§9).
            self._give_up(self._master_oldest, "gap_older_than_backlog", now)
        self._gap_timer(now)
        if self._rx is rx and rx.expected != self._acked:
            if (rx.expected - self._acked) & MASK32 >= self.config.ack_every:
                self._send_nack([])
                self.stats["acks_sent"] += 1
            elif self._ack_due is None:
                self._ack_due = now + self.config.ack_delay

    def _gap_timer(self, now: float) -> None:
        rx = self._rx
        if rx is not None and rx.has_gap:
            if self._nack_due is None:
                self._nack_due = now + self.config.nack_delay
        else:
            self._nack_due = None
            self._nack_tries = 0
            self._nack_wait = self.config.nack_interval

    def _give_up(self, seq: int, reason: str, now: float) -> None:
        rx = self._rx
        assert rx is not None
        self.stats["gap_fallbacks"] += 1
        self._events.append(StreamReset(reason))
        self._need_resync(reason, now)
        self._nack_tries = 0
        self._nack_wait = self.config.nack_interval
        self._deliver_all(rx.skip_to(seq), now)

    def _deliver_all(self, items: list[_Item], now: float) -> None:
        for item in items:
            self._deliver(item, now)

    def _deliver(self, item: _Item, now: float) -> None:
        h, msg, recv_now, d = item
        t = h.type
        if t == _SYNC:
            offset = self._offset if self._offset is not None else d
            base = recv_now - (d - offset) / 1000.0
            self._apply_records(msg, base, now, walk=bool(h.flags & FLAG_WALK))  # type: ignore[arg-type]
        elif t == _BEGIN:
            self._walk_begin(msg, now)  # type: ignore[arg-type]
        elif t == _DONE:
            self._walk_done(msg, now)  # type: ignore[arg-type]
        # MASTER_ANNOUNCE: read on arrival; nothing to apply in order.

    def _apply_records(self, records: list[object], base: float, now: float, walk: bool) -> None:
        mode = self.mode
        table = self.table
        purge = self._purge
        apply_update = mode.apply_update
        tally: dict[str, int] = {}
        liberal = self.config.liberal_without_window
        for rec in records:
            if type(rec) is CtRecord:
                outcome = apply_update(table, rec, base, now)
                if purge is not None:
                    purge.discard(rec.key)
                if liberal and rec.proto == IPPROTO_TCP and rec.window is None:
                    _liberal_if_windowless(table.get(rec.key, now))
            elif type(rec) is CtDelete:
                outcome = mode.apply_delete(table, rec, now)
                if purge is not None:
                    purge.discard(rec.key)
            elif type(rec) is ExpRecord:
                stored = table.apply_expect(rec, base, authoritative=mode.authoritative)
                outcome = "exp_stored" if stored else "exp_kept"
            else:
                if mode.authoritative:
                    table.delete_expect(rec)  # type: ignore[arg-type]
                outcome = "exp_deleted"
            tally[outcome] = tally.get(outcome, 0) + 1
        stats = self.stats
        for outcome, n in tally.items():
            stats["apply_" + outcome] += n
        stats["rx_records"] += len(records)
        if walk and self._walk_rx is not None:
            self._walk_rx.done += len(records)
            self._walk_rx.last = now

    def _walk_begin(self, w: WalkBegin, now: float) -> None:
        self.stats["walks_received"] += 1
        was_ready = self.ready
        nxt = next_sync_state(self.sync_state, SyncEvent.WALK_BEGIN)
        if nxt is not None:
            self.sync_state = nxt
        self._request_due = None
        self._walk_rx = _WalkRx(w.walk, w.total, now)
        # both directions; _walk_done() deletes only by original keys (``conn.key == key``)
        self._purge = set(self.table.keys()) if self.mode.purge_after_walk else None
        self._events.append(InitSyncStarted(w.walk, w.total))
        self._ready_event(was_ready)

    def _walk_done(self, w: WalkDone, now: float) -> None:
        wr = self._walk_rx
        if wr is None or wr.id != w.walk:
            if self.sync_state in (SyncState.UNSYNCED, SyncState.REQUESTED):
                # The walk that answered our request began before we followed the stream
                # (its BEGIN was lost to us): that request is spent, ask again at once.
                self._request_id = (self._request_id + 1) & MASK32 or 1
                self._request_due = now
                self.stats["walks_missed"] += 1
            return
        purged = 0
        if self._purge is not None:
            table = self.table
            for key in self._purge:
                conn = table.get(key, now)
                if conn is not None and conn.key == key:
                    table.delete(conn, now)
                    purged += 1
            self.stats["purged"] += purged
        self._purge = None
        self._walk_rx = None
        was_ready = self.ready
        nxt = next_sync_state(self.sync_state, SyncEvent.WALK_DONE)
        if nxt is not None:
            self.sync_state = nxt
        self._events.append(InitSyncCompleted(w.walk, wr.done, purged))
        self._ready_event(was_ready)

    def _need_resync(self, reason: str, now: float) -> None:
        if self.role == Role.MASTER:
            return
        was_ready = self.ready
        self.stats["resyncs"] += 1
        if self.sync_state in (SyncState.SYNCING, SyncState.SYNCED):
            # a new need: a new request value (a walk already served the old one)
            self._request_id = (self._request_id + 1) & MASK32 or 1
        self.sync_state = SYNC_TRANSITIONS[(self.sync_state, SyncEvent.NEED_RESYNC)]
        self._request_due = now
        self._walk_rx = None
        self._purge = None
        self._ready_event(was_ready)

    def _ready_event(self, was_ready: bool) -> None:
        if self.ready != was_ready:
            self._events.append(ReadinessChanged(self.ready))

    # --- master side input

    def _on_initsync(self, h: Header, req: InitSyncRequest, now: float) -> None:
        if self.role != Role.MASTER or req.target not in (0, self.node_id):
            self.drops["not_for_me"] += 1
            return
        self.stats["initsync_requests_received"] += 1
        self._announce_now = True  # lets a slave that does not know us yet follow us
        if self._served.get(h.node) == req.request:
            return  # a retry of a request this (or a finished) walk already answers
        self._served[h.node] = req.request
        self._walk_waiting.add(h.node)
        if self._walk is None:
            self._start_walk(now)
        # else: served by the next walk, right after this one: restarting the running walk
        # for every new request could starve it forever on a lossy link.

    def _start_walk(self, now: float) -> None:
        self._walk_counter = (self._walk_counter + 1) & MASK32 or 1
        table = self.table
        keys = table.keys()  # one cheap step of the packet loop, even for a million entries
        n_exps = len(table.expectations(now))
        self._walk = _Walk(self._walk_counter, keys, len(table), n_exps, now)
        self._walk_for = dict.fromkeys(self._walk_waiting, now)
        self._walk_waiting = set()
        self.stats["walks_started"] += 1

    def _walk_blocked(self, now: float) -> bool:
        """Flow control (§12): a requester has ``walk_window`` walk packets unacknowledged.

        Without it an unthrottled walk outruns the backlog, and on a lossy link an early loss
        could never be repaired. A requester that has not moved its ACK for ``walk_timeout``
        is presumed gone and no longer holds the walk back.
        """
        w = self._walk
        if w is None or not w.begun or not self._walk_for:
            return False
        for node, progress in list(self._walk_for.items()):
            ack = self._acks.get(node)
            if ack is None or before(ack, w.first_seq):
                ack = w.first_seq
            if (self._seq - ack) & MASK32 >= self._walk_window:
                if now - progress > self.config.walk_timeout:
                    del self._walk_for[node]
                    continue
                return True
        return False

    def _on_nack(self, h: Header, nack: Nack, now: float) -> None:
        if (
            self.role != Role.MASTER
            or nack.target != self.node_id
            or nack.target_epoch != (self.epoch)
        ):
            self.drops["not_for_me"] += 1
            return
        node = h.node
        old = self._acks.get(node)
        if not after(nack.ack, self._seq) and (old is None or after(nack.ack, old)):
            self._acks[node] = nack.ack
            if node in self._walk_for:
                self._walk_for[node] = now
        if not nack.ranges:
            self.stats["acks_received"] += 1
            return
        self.stats["nack_received"] += 1
        backlog = self._backlog
        budget = backlog.size
        unavailable = False
        for first, last in nack.ranges:
            n = ((last - first) & MASK32) + 1
            for i in range(min(n, budget)):
                seq = (first + i) & MASK32
                if after(seq, backlog.newest):
                    break
                data = backlog.get(seq)
                if data is None:
                    unavailable = True
                    continue
                if seq not in self._retx_seqs:
                    self._retx_seqs.add(seq)
                    self._retx.append(data)
            budget -= min(n, budget)
            if budget <= 0:
                break
        if unavailable:
            self.stats["retransmit_unavailable"] += 1
            self._announce_now = True  # tells the follower what the backlog still holds

    # ------------------------------------------------------------------ timers

    def get_timer(self) -> float | None:
        """The earliest time at which handle_timer() or datagrams_to_send() has work."""
        due: list[float] = []
        if self.role == Role.MASTER:
            if self._announce_due is not None:
                due.append(self._announce_due)
            if self._announce_now or self._retx:
                due.append(self._now)
            if self._pending or self._pending_exp:
                since = self._pending_since if self._pending_since is not None else self._now
                due.append(since + self.config.flush_delay)
            w = self._walk
            if w is not None:
                if not w.begun:
                    due.append(self._now)
                elif self._walk_blocked(self._now):  # an ACK will unblock it, or a timeout
                    due.append(min(self._walk_for.values()) + self.config.walk_timeout)
                else:
                    remaining = max(1, w.total - w.sent)
                    walk_t = max(self._now, self._pacer.next_time(min(self._quantum, remaining)))
                    budget = self.config.walk_budget
                    if budget and self._budget_used >= budget and walk_t <= self._budget_now:
                        walk_t = math.nextafter(self._budget_now, math.inf)  # next iteration
                    due.append(walk_t)
            if self._refresh_due is not None:
                due.append(self._refresh_due)
        else:
            for t in (self._nack_due, self._request_due, self._ack_due):
                if t is not None:
                    due.append(t)
            if self._ctl:
                due.append(self._now)
            if self._walk_rx is not None:
                due.append(self._walk_rx.last + self.config.walk_timeout)
        return min(due) if due else None

    def handle_timer(self, *, now: float) -> None:
        self._now = now
        cfg = self.config
        if self.role == Role.MASTER:
            if self._announce_due is not None and now >= self._announce_due:
                self._announce_now = True
                self._announce_due = now + cfg.announce_interval
            if self._refresh_due is not None and now >= self._refresh_due:
                self._refresh_step(now)
                self._refresh_due = now + cfg.refresh_interval
            return
        rx = self._rx
        if self._nack_due is not None and now >= self._nack_due and rx is not None:
            if not rx.has_gap:
                self._nack_due = None
            elif self._nack_tries >= cfg.nack_retries:
                target = min(rx.pending, key=lambda s: (s - rx.expected) & MASK32, default=None)
                if target is None:
                    target = (rx.highest + 1) & MASK32
                self._give_up(target, "nack_unanswered", now)
                self._gap_timer(now)
            else:
                f = self._following
                assert f is not None
                if rx.expected != self._nack_exp:  # progress since the last NACK
                    self._nack_exp = rx.expected
                    self._nack_tries = 0
                    self._nack_wait = cfg.nack_interval
                self._send_nack(rx.missing(MAX_NACK_RANGES))
                self.stats["nack_sent"] += 1
                self._nack_tries += 1
                self._nack_due = now + self._nack_wait
                self._nack_wait = min(self._nack_wait * 2.0, cfg.nack_max_interval)
        if self._ack_due is not None and now >= self._ack_due:
            self._ack_due = None
            if rx is not None and self._following is not None and rx.expected != self._acked:
                self._send_nack([])
                self.stats["acks_sent"] += 1
        if self._request_due is not None and now >= self._request_due:
            if self.sync_state in (SyncState.UNSYNCED, SyncState.REQUESTED):
                if self.sync_state == SyncState.REQUESTED:
                    # A retry: no walk began in our stream since the last request. Perhaps the
                    # request was lost, perhaps its walk began before we followed the master;
                    # a fresh value makes the master serve it either way (at worst one more
                    # walk, queued behind the running one).
                    self._request_id = (self._request_id + 1) & MASK32 or 1
                target = self._following.node if self._following is not None else 0
                body = encode_initsync(InitSyncRequest(target, self._request_id))
                self._ctl.append((_INITSYNC, body))
                self.stats["initsync_requests_sent"] += 1
                was_ready = self.ready
                self.sync_state = SYNC_TRANSITIONS[(self.sync_state, SyncEvent.REQUEST_SENT)]
                self._ready_event(was_ready)
                self._request_due = now + cfg.initsync_retry
            else:
                self._request_due = None
        wr = self._walk_rx
        if wr is not None and now >= wr.last + cfg.walk_timeout:
            self._events.append(StreamReset("walk_stalled"))
            self._need_resync("walk_stalled", now)

    def _send_nack(self, ranges: list[tuple[int, int]]) -> None:
        """Queue a NACK with ``ranges`` (none: a pure ACK); it always carries our ACK."""
        f, rx = self._following, self._rx
        assert f is not None and rx is not None
        nack = Nack(f.node, f.epoch, rx.expected, tuple(ranges))
        self._ctl.append((_NACK, encode_nack(nack)))
        self._acked = rx.expected
        self._ack_due = None

    def _refresh_step(self, now: float) -> None:
        """Replicate master: look at the next slice of the table for refreshes (modes.py)."""
        if self._refresh_pos >= len(self._refresh_keys):
            self._refresh_keys = self.table.keys()  # the loop skips reply-direction keys
            self._refresh_pos = 0
        end = self._refresh_pos + self.config.refresh_batch
        table = self.table
        mode = self.mode
        for key in self._refresh_keys[self._refresh_pos : end]:
            conn = table.get(key, now)
            if (
                conn is not None
                and conn.key == key
                and key not in self._pending
                and mode.refresh_due(conn, now)
            ):
                if not self._pending and not self._pending_exp:
                    self._pending_since = now
                self._pending[key] = conn
        self._refresh_pos = end

    # ------------------------------------------------------------------ output

    def datagrams_to_send(self, *, now: float) -> list[bytes]:
        """Everything due at ``now``: control packets, retransmissions, live changes, walk."""
        self._now = now
        out: list[bytes] = []
        if self._ctl:
            for ptype, body in self._ctl:
                out.append(self._emit(ptype, body, now))
            self._ctl.clear()
        if self.role != Role.MASTER:
            return out
        if self._announce_now:
            self._announce_now = False
            out.append(self._emit_announce(now))
        if self._retx:
            out.extend(self._retx)
            self.stats["retransmitted"] += len(self._retx)
            self.stats["tx_packets"] += len(self._retx)
            self.stats["tx_bytes"] += sum(map(len, self._retx))
            self._retx.clear()
            self._retx_seqs.clear()
        if (self._pending or self._pending_exp) and (
            self._pending_since is None or now >= self._pending_since + self.config.flush_delay
        ):
            self._flush_live(out, now)
        if self._walk is not None:
            self._walk_step(out, now)
        return out

    def _emit(self, ptype: int, body: bytes, now: float, flags: int = 0) -> bytes:
        seq = self._seq
        self._seq = (seq + 1) & MASK32
        dgram = encode_datagram(
            ptype,
            body,
            node=self.node_id,
            epoch=self.epoch,
            seq=seq,
            stamp=int(now * 1000.0) & MASK32,
            key=self._key,
            flags=flags,
        )
        if self.role == Role.MASTER:
            self._backlog.add(seq, dgram)
        self.stats["tx_packets"] += 1
        self.stats["tx_bytes"] += len(dgram)
        return dgram

    def _emit_announce(self, now: float) -> bytes:
        b = self._backlog
        count_after = min(b.count + 1, b.size)
        oldest = (self._seq - count_after + 1) & MASK32
        self.stats["announces_sent"] += 1
        body = encode_announce(Announce(self.term, oldest, self.mode.wire))
        return self._emit(_ANNOUNCE, body, now)

    def _flush_live(self, out: list[bytes], now: float) -> None:
        window = self.config.send_window
        mode = self.mode
        cap = self._cap
        parts: list[bytes] = []
        size = 0
        n = 0
        for key, conn in self._pending.items():
            if conn is None or conn.status & _DYING:
                rec = encode_ct_delete(delete_record(key))
                mode.note_deleted(key)
            else:
                rec = pack_conn(conn, now, window=window)
                mode.note_sent(key, conn.expires)
            if size + len(rec) > cap and parts:
                out.append(self._emit(_SYNC, b"".join(parts), now))
                parts = []
                size = 0
            parts.append(rec)
            size += len(rec)
            n += 1
        for erec in self._pending_exp:
            rec = encode_exp_update(erec) if type(erec) is ExpRecord else encode_exp_delete(erec)  # type: ignore[arg-type]
            if size + len(rec) > cap and parts:
                out.append(self._emit(_SYNC, b"".join(parts), now))
                parts = []
                size = 0
            parts.append(rec)
            size += len(rec)
            n += 1
        if parts:
            out.append(self._emit(_SYNC, b"".join(parts), now))
        self.stats["tx_records"] += n
        self._pending.clear()
        self._pending_exp.clear()
        self._pending_since = None

    def _walk_step(self, out: list[bytes], now: float) -> None:
        w = self._walk
        assert w is not None
        if not w.begun:
            w.begun = True
            w.started = now
            w.first_seq = self._seq
            out.append(self._emit(_BEGIN, encode_walk_begin(WalkBegin(w.id, w.total)), now))
        table = self.table
        pacer = self._pacer
        window = self.config.send_window
        note_sent = self.mode.note_sent
        cap = self._cap
        keys = w.keys
        nkeys = len(keys)
        budget = self.config.walk_budget or UNLIMITED
        if now != self._budget_now:  # a new loop iteration: a fresh budget
            self._budget_now = now
            self._budget_used = 0
        for _ in range(self.config.walk_burst_packets):
            if self._budget_used >= budget or self._walk_blocked(now):
                return
            remaining = w.total - w.sent
            allowance = pacer.available(now)
            if allowance < min(self._quantum, max(remaining, 1)):
                return
            parts: list[bytes] = []
            size = 0
            pos = w.pos
            while pos < nkeys and len(parts) < allowance:
                key = keys[pos]
                conn = table.get(key, now)
                if conn is None or conn.key != key:
                    pos += 1
                    if conn is None:
                        # died before its turn: not part of this walk any more (both its
                        # keys are in the snapshot: count it once)
                        w.gone += 1
                        w.total -= w.gone & 1
                    continue
                rec = pack_conn(conn, now, window=window)
                if size + len(rec) > cap and parts:
                    break
                note_sent(key, conn.expires)
                parts.append(rec)
                size += len(rec)
                pos += 1
            w.pos = pos
            if pos >= nkeys:
                if w.exps is None:
                    # The conntrack part is done: what is left of ``total`` is the expectation
                    # count estimated at the start; replace it by the real one.
                    w.exps = table.expectations(now)
                    w.total += len(w.exps) - (w.total - w.sent - len(parts))
                exps = w.exps
                while exps and len(parts) < allowance:
                    rec = encode_exp_update(exps[-1])
                    if size + len(rec) > cap and parts:
                        break
                    parts.append(rec)
                    size += len(rec)
                    exps.pop()
            if parts:
                out.append(self._emit(_SYNC, b"".join(parts), now, FLAG_WALK))
                pacer.consume(len(parts), now)
                self._budget_used += len(parts)
                w.sent += len(parts)
                self.stats["tx_records"] += len(parts)
            if pos >= nkeys and w.exps is not None and not w.exps:
                out.append(self._emit(_DONE, encode_walk_done(WalkDone(w.id, w.sent)), now))
                self.stats["walks_completed"] += 1
                self._walk = None
                if self._walk_waiting:
                    self._start_walk(now)
                return


def _percent(done: int, total: int) -> float:
    return 100.0 if total <= 0 else min(100.0, 100.0 * done / total)


def _rate(done: int, elapsed: float) -> float:
    return done / elapsed if elapsed > 0 else 0.0
