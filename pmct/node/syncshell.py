"""ct_sync in the running node: the glue between the engine, the sync core and the sync socket.

The core (pmct.sync.SyncProtocol) decides everything; this shell only feeds it and carries out
what it returns, in the aioquic order (``QuicConnectionProtocol.datagram_received()`` /
``transmit()`` / ``_handle_timer()``):

    datagrams from the socket  -> core.receive_datagram(d, now=)
    engine NEW/UPDATE/DESTROY  -> core.local_update / local_delete (a replicate master streams
                                  them; every other combination is a cheap no-op in the core)
    expectation NEW/DESTROY    -> core.local_expect(exp_to_record / exp_delete_record), drained
                                  from ``engine.expect.events`` at the start of every service()
                                  (after the daemon handed over the table events, so a master
                                  entry is queued before its expectations)
    now >= core.get_timer()    -> core.handle_timer(now=)
    then, every time           -> send core.datagrams_to_send(now=), drain core.next_event()

The daemon calls ``service(now)`` from its loop when the socket is readable or the one timer
(``deadline()``) is due, and also every POLL seconds from inside the packet path, because a
loaded NFQUEUE loop may not return to select() for a long time (daemon.py docstring).

What the shell decides itself (node policy, not protocol):

* **Identity at start**: the epoch is ``max(wall-clock second, last epoch + 1)`` persisted in
  ``run_dir/sync-epoch``, so it grows across restarts even within one second (docs/protocol.md
  §1); the first seq is random.
* **Readiness gate** (``ready(now)``): the core's ``ready`` (a master, or a slave whose init sync
  completed), or -- the pfsync rule for a failed bulk update -- nobody to sync from: no master
  has been heard for ``master_timeout`` (3.5 s) since start or since the last one fell silent.
  A node alone must be promotable (the peer may be dead for good); a node that hears a master
  is not ready until the master's walk has reached it completely.
* **Tracking in replicate mode**: a slave does not track from the wire
  (``tracks_wire`` False: the daemon drops its packets without running the engine); everything
  in its table comes from the master's stream.
* The cyclic GC is paused while this node applies an init sync walk and, once it completed,
  everything is moved out of the collector's view (``gc.freeze()``): a million Conns arriving
  in a burst otherwise cost repeated full collections of the whole table, a third of the
  standby's time (docs/protocol.md §4.7). The pause ends with the walk however it ends (done,
  stalled, reset, promoted); a cycle created meanwhile is collected after it, except one that
  is still garbage at the freeze (the engine's entries form no cycles, so that is rare).

Rules: no protocol logic here (no seqs, no records); the socket is transport.py's; the clock is
the caller's ``now`` (time.monotonic()).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import secrets
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from pmct.config import SyncNodeConfig
from pmct.conntrack.core import Engine, EventType
from pmct.conntrack.expect import EXP_NEW
from pmct.node.transport import SyncTransport
from pmct.sync.events import (
    InitSyncCompleted,
    InitSyncStarted,
    MasterChanged,
    RoleChanged,
    StreamReset,
)
from pmct.sync.protocol import Role, SyncConfig, SyncProtocol, SyncState
from pmct.sync.records import exp_delete_record, exp_to_record
from pmct.sync.table import EngineTable

__all__ = ["POLL", "SyncSetupError", "SyncShell", "load_key", "next_epoch", "sync_config"]

log = logging.getLogger("pmct.sync")

POLL: Final = 0.002  # seconds between socket polls from inside the packet path
RECV_BATCH: Final = 256  # datagrams per service() call at most (then the packets' turn)
_DESTROY: Final = int(EventType.DESTROY)


class SyncSetupError(RuntimeError):
    """ct_sync cannot start (bad key file, socket, ...)."""


def load_key(path: str) -> bytes:
    """The shared HMAC key: the file's bytes without surrounding whitespace, >= 16 bytes."""
    try:
        st = os.stat(path)
        data = Path(path).read_bytes().strip()
    except OSError as e:
        raise SyncSetupError(f"sync.hmac_key_file {path}: {e.strerror}") from None
    if len(data) < 16:
        raise SyncSetupError(f"sync.hmac_key_file {path}: at least 16 bytes, not {len(data)}")
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("sync.hmac_key_file %s is readable by others than its owner", path)
    return data


def next_epoch(path: str, wall: float) -> int:
    """``max(int(wall), last + 1)``, persisted in ``path`` (docs/protocol.md §1: it must grow
    across restarts). A missing or unreadable file only loses the ``+ 1`` guarantee."""
    last = -1
    with contextlib.suppress(OSError, ValueError):
        last = int(Path(path).read_text().strip())
    epoch = max(int(wall), last + 1) & 0xFFFF_FFFF
    tmp = f"{path}.tmp"
    try:
        Path(tmp).write_text(f"{epoch}\n")
        os.replace(tmp, path)
    except OSError as e:
        log.warning("cannot persist the sync epoch in %s: %s", path, e)
    return epoch


def sync_config(
    cfg: SyncNodeConfig, key: bytes | None, max_datagram: int | None = None
) -> SyncConfig:
    """The core's settings from the node's [sync] section (the rest keep the core defaults);
    ``max_datagram``: the transport's ``max_payload`` (the sync interface's MTU, IPv4 or IPv6)."""
    return SyncConfig(
        node_id=cfg.node_id,
        peers=frozenset(cfg.peers),
        mode=cfg.mode,
        hmac_key=key,
        max_datagram=max_datagram or 1472,
        backlog=cfg.backlog,
        reorder_limit=cfg.backlog,
        initsync_rate=cfg.initsync_rate,
        liberal_without_window=not cfg.tcp_window_tracking,
    )


class SyncShell:
    """One node's ct_sync endpoint: the core, its table adapter and its socket.

    Args:
        cfg: the [sync] section (enabled).
        iface: interfaces.sync.
        engine: the daemon's engine (its table is what is synced).
        master: start as master (the node starts active).
        run_dir: where the epoch is persisted.
        now: the clock at start.
        on_role: called with (master, reason) when the core changes role by itself (the
            split-brain rule, docs/protocol.md §6); the daemon then switches its forwarding.
        on_ready: called with the new readiness whenever ``ready(now)`` changes.
        transport: an already open transport (tests); default: open one from ``cfg``.
    """

    def __init__(
        self,
        cfg: SyncNodeConfig,
        iface: str,
        engine: Engine,
        *,
        master: bool,
        run_dir: str,
        now: float,
        on_role: Callable[[bool, str], None] | None = None,
        on_ready: Callable[[bool], None] | None = None,
        transport: SyncTransport | None = None,
    ) -> None:
        self.cfg = cfg
        self.engine = engine
        key = load_key(cfg.hmac_key_file) if cfg.hmac_key_file else None
        self.epoch = next_epoch(os.path.join(run_dir, "sync-epoch"), time.time())
        self.transport = transport or SyncTransport(
            iface, cfg.address, cfg.port, multicast=cfg.transport == "multicast"
        )
        self.config = sync_config(cfg, key, getattr(self.transport, "max_payload", None))
        self.core = SyncProtocol(
            self.config,
            EngineTable(engine),
            epoch=self.epoch,
            now=now,
            initial_seq=secrets.randbits(32),
            role=Role.MASTER if master else Role.SLAVE,
        )
        self.started = now
        self.on_role = on_role
        self.on_ready = on_ready
        self.streams = self.core.mode.streams_changes
        # the EXPECT stream (issue 7): this shell is the consumer that drains the engine's
        # expectation events (expect.py records them only once someone sets the list)
        if engine.expect.events is None:
            engine.expect.events = []
        self.tracks_wire = True
        self._ready = self.ready(now)
        self._update_tracking()
        self.next_poll = now
        self.frozen = False
        self.gc_paused = False
        log.info(
            "ct_sync: node %d epoch %d, %s, %s %s port %d on %s%s",
            cfg.node_id,
            self.epoch,
            cfg.mode,
            cfg.transport,
            ",".join(cfg.address),
            cfg.port,
            iface,
            ", HMAC" if key else "",
        )

    # ------------------------------------------------------------------ loop integration

    def fileno(self) -> int:
        return self.transport.fileno()

    def deadline(self) -> float | None:
        """When ``service()`` must run at the latest (the core's one timer)."""
        return self.core.get_timer()

    def service(self, now: float) -> None:
        """Read what waits on the socket, run the timer if due, send, handle events."""
        core = self.core
        self.next_poll = now + POLL
        self.expect_events(now)
        send = self.transport.send
        for data in self.transport.recv_many(RECV_BATCH):
            core.receive_datagram(data, now=now)
            # after every datagram, as aioquic's transmit(): the follower's ACKs (every 32
            # packets) leave at once instead of after the whole batch, which keeps a walk's
            # flow-control window (docs/protocol.md §12) moving
            for out in core.datagrams_to_send(now=now):
                send(out)
        t = core.get_timer()
        if t is not None and t <= now:
            core.handle_timer(now=now)
        self._flush(now)

    def engine_events(self, events: list[tuple[int, Any]], now: float) -> None:
        """Table changes from ``Engine.drain_events()`` (a replicate master streams them)."""
        core = self.core
        if not self.streams or core.role != Role.MASTER:
            return
        for etype, conn in events:
            if etype == _DESTROY:
                core.local_delete(conn, now=now)
            else:
                core.local_update(conn, now=now)

    def expect_events(self, now: float) -> None:
        """Expectation changes since the last call -> ``core.local_expect`` (a replicate master
        streams them as EXP_UPDATE / EXP_DELETE, docs/protocol.md §4.5); elsewhere they are
        dropped: a concurrent standby's helper sees the control channel itself, and an init
        sync walk carries the live expectations (EngineTable.expectations)."""
        table = self.engine.expect
        if not table.events:
            return
        events = table.drain_events()
        core = self.core
        if not self.streams or core.role != Role.MASTER:
            return
        for kind, exp in events:
            rec = exp_to_record(exp, now) if kind == EXP_NEW else exp_delete_record(exp)
            core.local_expect(rec, now=now)

    def _flush(self, now: float) -> None:
        core = self.core
        send = self.transport.send
        for data in core.datagrams_to_send(now=now):
            send(data)
        while (ev := core.next_event()) is not None:
            self._event(ev, now)
        if self.gc_paused and core.sync_state != SyncState.SYNCING:
            self._resume_gc()  # the walk ended some other way (stalled, reset, promoted)
        ready = self.ready(now)
        if ready != self._ready:
            self._ready = ready
            p = core.progress(now=now)
            log.info(
                "ct_sync: %s (%s, master %s)",
                "ready" if ready else "NOT READY",
                p.state,
                p.master if core.master_alive(now=now) else "none heard",
            )
            if self.on_ready is not None:
                self.on_ready(ready)

    def _event(self, ev: object, now: float) -> None:
        if type(ev) is RoleChanged:
            self._update_tracking()
            log.info("ct_sync: role %s (%s, term %d)", ev.role, ev.reason, ev.term)
            if ev.reason not in ("promote", "demote") and self.on_role is not None:
                self.on_role(ev.role == "master", ev.reason)
        elif type(ev) is MasterChanged:
            log.info("ct_sync: following master %s (epoch %d, term %d)", ev.node, ev.epoch, ev.term)
        elif type(ev) is InitSyncStarted:
            log.info("ct_sync: init sync walk %d began, %d entries", ev.walk, ev.total)
            if self.core.sync_state == SyncState.SYNCING and gc.isenabled():
                gc.disable()
                self.gc_paused = True
        elif type(ev) is InitSyncCompleted:
            log.info(
                "ct_sync: init sync walk %d complete, %d records, %d purged",
                ev.walk,
                ev.records,
                ev.purged,
            )
            self._resume_gc()
            gc.freeze()  # see the module docstring (no collect first: it would scan them all)
            self.frozen = True
        elif type(ev) is StreamReset:
            log.warning("ct_sync: stream reset (%s): init sync again", ev.reason)

    def _resume_gc(self) -> None:
        if self.gc_paused:
            self.gc_paused = False
            gc.enable()

    def _update_tracking(self) -> None:
        core = self.core
        self.tracks_wire = core.mode.standby_tracks_wire or core.role == Role.MASTER

    # ------------------------------------------------------------------ roles and readiness

    def promote(self, now: float) -> None:
        if self.core.role != Role.MASTER:
            self.core.promote(now=now)
        self._update_tracking()
        self._flush(now)  # the MASTER_ANNOUNCE leaves at once

    def demote(self, now: float) -> None:
        self.core.demote(now=now)
        self._update_tracking()
        self._flush(now)

    def ready(self, now: float) -> bool:
        """The readiness gate (module docstring): synced, or nobody to sync from."""
        core = self.core
        if core.ready:
            return True
        return not core.master_alive(now=now) and now - self.started >= core.config.master_timeout

    # ------------------------------------------------------------------ status

    def status(self, now: float) -> dict[str, Any]:
        core = self.core
        p = core.progress(now=now)
        counters = core.counters()
        return {
            "state": p.state,
            "ready": self.ready(now),
            "mode": self.cfg.mode,
            "transport": self.cfg.transport,
            "address": list(self.cfg.address),
            "port": self.cfg.port,
            "hmac": self.config.hmac_key is not None,
            "node_id": core.node_id,
            "epoch": core.epoch,
            "role": p.role,
            "term": core.term,
            "master": p.master,
            "master_alive": core.master_alive(now=now),
            "tracks_wire": self.tracks_wire,
            "initsync": {
                "walk": p.walk,
                "total": p.total,
                "done": p.done,
                "percent": round(p.percent, 1),
                "rate": round(p.rate, 1),
            },
            "behind": p.behind,
            "drops": dict(core.drops),
            "counters": {k: v for k, v in counters.items() if not k.startswith("drop_")},
            "socket": self.transport.stats(),
        }

    def close(self) -> None:
        self._resume_gc()
        self.transport.close()
