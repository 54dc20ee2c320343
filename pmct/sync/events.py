"""Events the sync core reports to its shell, drained with ``SyncProtocol.next_event()``
(aioquic quic/events.py: plain dataclasses popped from a deque).

Rules: values only (frozen, slotted); the shell acts on them (role file, forwarding, logs),
the core never does.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Event",
    "InitSyncCompleted",
    "InitSyncStarted",
    "MasterChanged",
    "ReadinessChanged",
    "RoleChanged",
    "StreamReset",
]


@dataclass(frozen=True, slots=True)
class RoleChanged:
    role: str
    """"master" or "slave"."""
    reason: str
    """"promote", "demote" or "split_brain: node N term T"."""
    term: int


@dataclass(frozen=True, slots=True)
class ReadinessChanged:
    ready: bool
    """False while this node needs init sync (a cluster manager must not promote it)."""


@dataclass(frozen=True, slots=True)
class MasterChanged:
    node: int | None
    """The master this slave now follows (None: none)."""
    epoch: int
    term: int


@dataclass(frozen=True, slots=True)
class InitSyncStarted:
    walk: int
    total: int


@dataclass(frozen=True, slots=True)
class InitSyncCompleted:
    walk: int
    records: int
    purged: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    reason: str
    """Why the follower gave up part of the stream ("gap_older_than_backlog", ...)."""


Event = (
    RoleChanged
    | ReadinessChanged
    | MasterChanged
    | InitSyncStarted
    | InitSyncCompleted
    | StreamReset
)
