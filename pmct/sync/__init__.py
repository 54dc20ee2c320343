"""ct_sync: state replication between pmct nodes (pure core; the sockets live in pmct.node).

docs/protocol.md is the wire specification. Public API: SyncProtocol (the endpoint),
SyncConfig, the SyncTable adapter Protocol with DictTable/EngineTable, and the events.
"""

from __future__ import annotations

from pmct.sync.events import (
    InitSyncCompleted,
    InitSyncStarted,
    MasterChanged,
    ReadinessChanged,
    RoleChanged,
    StreamReset,
)
from pmct.sync.protocol import DROP_REASONS, Progress, Role, SyncConfig, SyncProtocol, SyncState
from pmct.sync.table import DictTable, EngineTable, SyncTable

__all__ = [
    "DROP_REASONS",
    "DictTable",
    "EngineTable",
    "InitSyncCompleted",
    "InitSyncStarted",
    "MasterChanged",
    "Progress",
    "ReadinessChanged",
    "Role",
    "RoleChanged",
    "StreamReset",
    "SyncConfig",
    "SyncProtocol",
    "SyncState",
    "SyncTable",
]
