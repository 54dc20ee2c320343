"""Sync modes: the strategies that make one protocol core serve two deployments.

(conntrackd include/sync.h: one ``struct sync_mode`` per reliability mode, chosen from the
config in sync-mode.c:init_sync(); the rest of the daemon is mode-agnostic.)

- ``concurrent`` (default): every node tracks from the wire. ct_sync carries announcements,
  the init sync after a (re)start and NACK recovery; received entries are *merged* with what
  the node tracked itself (merge.py, docs/protocol.md §10).
- ``replicate``: the standby does not track from the wire. The master streams an UPDATE or
  DELETE for every state change (and refreshes, below), as ct_sync and conntrackd do; the
  standby applies the master's log *authoritatively* and in order, and a walk purges entries
  the master does not have.

Refreshes (replicate only): the engine reports state/status changes, not every timer refresh,
so the master remembers the deadline it last sent per entry and the protocol's rolling scan
re-sends an entry once the standby's copy has less than half of the master's remaining
lifetime left (``refresh_due``). This per-entry memory is the replicate mode's price
(conntrackd keeps a whole cache per mode); the concurrent mode keeps nothing per entry.

Rules: a mode decides *what* to do with a record or a change; the protocol decides *when*.
Modes hold no clock and no I/O. Registry below is explicit; an unknown name is a ConfigError.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Final, Protocol

from pmct.conntrack.conn import Conn
from pmct.errors import ConfigError
from pmct.sync.codec import CtDelete, CtRecord
from pmct.sync.merge import apply_authoritative, apply_delete_authoritative, apply_merge
from pmct.sync.table import SyncTable

__all__ = ["MODES", "MODE_NAMES", "ConcurrentMode", "ReplicateMode", "SyncMode", "make_mode"]


class SyncMode(Protocol):
    name: str
    wire: int  # MASTER_ANNOUNCE ``mode`` byte
    streams_changes: bool  # a master sends local changes as they happen
    standby_tracks_wire: bool  # for the node shell: does a slave run the engine on traffic?
    initsync_on_master_change: bool
    purge_after_walk: bool
    authoritative: bool

    def apply_update(self, table: SyncTable, rec: CtRecord, base: float, now: float) -> str: ...

    def apply_delete(self, table: SyncTable, rec: CtDelete, now: float) -> str: ...

    def note_sent(self, key: bytes, expires: float) -> None: ...

    def note_deleted(self, key: bytes) -> None: ...

    def refresh_due(self, conn: Conn, now: float) -> bool: ...

    def reset(self) -> None: ...


class ConcurrentMode:
    name = "concurrent"
    wire = 0
    streams_changes = False
    standby_tracks_wire = True
    initsync_on_master_change = False
    purge_after_walk = False
    authoritative = False

    def apply_update(self, table: SyncTable, rec: CtRecord, base: float, now: float) -> str:
        return apply_merge(table, rec, base, now)

    def apply_delete(self, table: SyncTable, rec: CtDelete, now: float) -> str:
        # Every node sees the wire and expires its own entries; a delete sent before a local
        # reopen would kill a newer connection (docs/protocol.md §10).
        return "delete_ignored"

    def note_sent(self, key: bytes, expires: float) -> None:
        pass

    def note_deleted(self, key: bytes) -> None:
        pass

    def refresh_due(self, conn: Conn, now: float) -> bool:
        return False

    def reset(self) -> None:
        pass


class ReplicateMode:
    name = "replicate"
    wire = 1
    streams_changes = True
    standby_tracks_wire = False
    initsync_on_master_change = True
    purge_after_walk = True
    authoritative = True

    def __init__(self) -> None:
        self.sent: dict[bytes, float] = {}  # orig key -> deadline last sent

    def apply_update(self, table: SyncTable, rec: CtRecord, base: float, now: float) -> str:
        return apply_authoritative(table, rec, base, now)

    def apply_delete(self, table: SyncTable, rec: CtDelete, now: float) -> str:
        return apply_delete_authoritative(table, rec, now)

    def note_sent(self, key: bytes, expires: float) -> None:
        self.sent[key] = expires

    def note_deleted(self, key: bytes) -> None:
        self.sent.pop(key, None)

    def refresh_due(self, conn: Conn, now: float) -> bool:
        sent = self.sent.get(conn.key)
        if sent is None:
            # Never sent by this master: a walk carries it (a replicate standby resyncs whenever
            # it starts following a master), a live change will.
            return False
        return (sent - now) * 2.0 < conn.expires - now

    def reset(self) -> None:
        self.sent.clear()


MODES: Final[Mapping[str, Callable[[], SyncMode]]] = MappingProxyType(
    {"concurrent": ConcurrentMode, "replicate": ReplicateMode}
)
MODE_NAMES: Final = ("concurrent", "replicate")  # index = announce ``mode`` byte


def make_mode(name: str) -> SyncMode:
    factory = MODES.get(name)
    if factory is None:
        raise ConfigError(f"sync.mode: unknown mode {name!r} (expected one of {MODE_NAMES})")
    return factory()
