"""The four strategies, simulated: two pure engines, and two ct_sync cores on a simulated link.

Every strategy sees the same traffic. The master's engine tracks every packet; what the
standby knows at a failover is what the strategy gave it:

- ``none``: a cold standby; its table is empty.
- ``concurrent``: the standby tracks the wire, minus the packets it misses; no sync (the poor
  man's pair).
- ``concurrent+resync``: the same, plus ct_sync in concurrent mode: init sync after a
  (re)start, NACK recovery, merge (docs/protocol.md §10-12).
- ``replicate``: the standby does not track; ct_sync in replicate mode streams every engine
  change of the master (§11).

Why this shape: the node daemon (pmct.node) wires the same pieces with sockets and a real
clock; here the clock is the packets' timestamps and pmct.sync.sim.SimNet carries the sync
datagrams, so a run is a pure function of (traffic, scenario, seed). The only impure input is
the optional ``clock`` used to charge CPU time to the master, the standby and the sync layer;
it never influences a decision.

The master's engine events feed its SyncProtocol exactly as a node shell would: NEW/UPDATE ->
``local_update``, DESTROY -> ``local_delete`` (only the replicate mode streams them).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Final

from pmct.conntrack.core import Engine, EventType
from pmct.conntrack.settings import Settings
from pmct.study.faults import derive_seed, make_loss
from pmct.study.metrics import Agreement, Survival, agreement, survival
from pmct.study.spec import STRATEGIES, StudySpec
from pmct.study.traffic import Traffic
from pmct.sync.protocol import Role, SyncConfig, SyncProtocol
from pmct.sync.sim import SimNet
from pmct.sync.table import EngineTable

__all__ = ["TRAITS", "FailoverPoint", "RunResult", "Scenario", "Traits", "simulate"]

MASTER_ID: Final = 1
STANDBY_ID: Final = 2
_DESTROY: Final = int(EventType.DESTROY)
SYNC_LEAD: Final = 1.0  # the sync cores start this long before the first packet


@dataclass(frozen=True, slots=True)
class Traits:
    tracks_wire: bool  # the standby's engine sees the (lossy) traffic
    sync_mode: str | None  # ct_sync mode between the two, or no sync at all


TRAITS: Final = {
    "none": Traits(False, None),
    "concurrent": Traits(True, None),
    "concurrent+resync": Traits(True, "concurrent"),
    "replicate": Traits(False, "replicate"),
}
assert tuple(TRAITS) == STRATEGIES


@dataclass(frozen=True, slots=True)
class Scenario:
    strategy: str
    miss_rate: float = 0.0  # p
    miss_model: str = "random"
    sync_loss: float = 0.0  # q
    restart_at: float | None = None

    def canonical(self) -> Scenario:
        """The same scenario with every fault the strategy cannot feel set to neutral.

        A standby that does not track the wire cannot miss packets; without sync there is no
        sync loss; a cold standby has nothing to lose in a restart; p = 0 is the same for
        both loss models. Runs are made once per canonical scenario.
        """
        t = TRAITS[self.strategy]
        s = self
        if not t.tracks_wire or s.miss_rate == 0.0:
            s = replace(s, miss_rate=0.0 if not t.tracks_wire else s.miss_rate, miss_model="random")
        if t.sync_mode is None:
            s = replace(s, sync_loss=0.0)
        if self.strategy == "none":
            s = replace(s, restart_at=None)
        return s

    @property
    def label(self) -> str:
        r = "never" if self.restart_at is None else f"{self.restart_at:g}"
        return (
            f"{self.strategy} p={self.miss_rate:g} ({self.miss_model}) q={self.sync_loss:g} "
            f"restart={r}"
        )


@dataclass(frozen=True, slots=True)
class FailoverPoint:
    at: float
    agreement: Agreement
    survival: Survival
    standby_up: bool


@dataclass(slots=True)
class RunResult:
    scenario: Scenario
    packets: int
    duration: float  # seconds of traffic
    standby_missed: int
    points: list[FailoverPoint] = field(default_factory=list)
    sync_bytes: tuple[int, int] = (0, 0)  # master->standby, standby->master (sent, incl. lost)
    sync_datagrams: tuple[int, int] = (0, 0)
    sync_lost: int = 0
    sync_counters: dict[str, int] = field(default_factory=dict)
    restart_before: float | None = None  # agreement just before the restart
    recover_s: float | None = None  # seconds from the restart until agreement is back
    recovery: list[tuple[float, float]] = field(default_factory=list)  # (s after restart, share)
    cpu_s: dict[str, float] = field(default_factory=dict)  # master, standby, sync

    def per_second(self, n: int) -> float:
        return n / self.duration if self.duration > 0 else 0.0


def _zero() -> float:
    return 0.0


def _clock_cost(clock: Callable[[], float], n: int = 2000) -> float:
    """Seconds one ``clock()`` call adds to a measured interval (best of 5)."""
    best = float("inf")
    for _ in range(5):
        t0 = clock()
        for _ in range(n):
            clock()
        best = min(best, (clock() - t0) / (n + 1))
    return best


# checkpoint kinds, in the order they run when due at the same instant
_DOWN, _UP, _SAMPLE, _FAILOVER = 0, 1, 2, 3


class _Sim:
    """One run's mutable state; ``simulate`` is the public entry point."""

    def __init__(self, traffic: Traffic, sc: Scenario, spec: StudySpec) -> None:
        self.traffic, self.sc, self.spec = traffic, sc, spec
        self.traits = TRAITS[sc.strategy]
        self.settings = Settings()
        mode = self.traits.sync_mode
        self.master = Engine(self.settings, events=mode == "replicate")
        self.standby = Engine(self.settings)
        self.standby_up = True
        self.epoch = 1
        self.net: SimNet | None = None
        self.mp: SyncProtocol | None = None
        self.sp: SyncProtocol | None = None
        t0 = traffic.start - SYNC_LEAD
        if mode is not None:
            self.net = SimNet(seed=derive_seed(spec.seed, "net"), now=t0)
            self.mp = self.net.add(
                SyncProtocol(
                    self._cfg(MASTER_ID, STANDBY_ID),
                    EngineTable(self.master),  # type: ignore[arg-type]
                    epoch=1,
                    now=t0,
                    role=Role.MASTER,
                )
            )
            self.sp = self.net.add(self._standby_proto(t0))
            f = spec.faults
            for src, dst in ((MASTER_ID, STANDBY_ID), (STANDBY_ID, MASTER_ID)):
                ln = self.net.link(src, dst)
                ln.delay = spec.sync.link_delay
                if sc.sync_loss:
                    ln.drop = make_loss(
                        f.sync_loss_model,
                        sc.sync_loss,
                        burst_length=f.burst_length,
                        seed=derive_seed(spec.seed, "sync", src, f.sync_loss_model, sc.sync_loss),
                    ).predicate()
        self.miss = make_loss(
            sc.miss_model,
            sc.miss_rate,
            burst_length=spec.faults.burst_length,
            seed=derive_seed(spec.seed, "miss", sc.miss_model, sc.miss_rate),
        )

    def _cfg(self, node: int, peer: int) -> SyncConfig:
        mode = self.traits.sync_mode
        assert mode is not None
        return SyncConfig(
            node,
            frozenset({peer}),
            mode=mode,
            send_window=self.spec.sync.send_window,
            announce_interval=self.spec.sync.announce_interval,
        )

    def _standby_proto(self, now: float) -> SyncProtocol:
        return SyncProtocol(
            self._cfg(STANDBY_ID, MASTER_ID),
            EngineTable(self.standby),  # type: ignore[arg-type]
            epoch=self.epoch,
            now=now,
        )

    # -------------------------------------------------------------- restart

    def down(self) -> None:
        self.standby_up = False
        if self.net is not None:
            self.net.link(MASTER_ID, STANDBY_ID).up = False
            self.net.link(STANDBY_ID, MASTER_ID).up = False

    def up(self, now: float) -> None:
        """The standby comes back: an empty engine, a new ct_sync incarnation (epoch + 1)."""
        self.standby = Engine(self.settings)
        self.standby_up = True
        self.epoch += 1
        if self.net is not None:
            self.sp = self.net.add(self._standby_proto(now))
            self.net.link(MASTER_ID, STANDBY_ID).up = True
            self.net.link(STANDBY_ID, MASTER_ID).up = True

    def agreement(self, now: float) -> Agreement:
        standby = self.standby.table if self.standby_up else Engine(self.settings).table
        return agreement(self.master.table, standby, now)


def simulate(
    traffic: Traffic,
    scenario: Scenario,
    spec: StudySpec,
    *,
    clock: Callable[[], float] | None = None,
) -> RunResult:
    """Run one scenario over the traffic; deterministic except for ``cpu_s`` (from ``clock``)."""
    sim = _Sim(traffic, scenario, spec)
    clk = clock or _zero
    f, m = spec.faults, spec.metrics
    res = RunResult(scenario, len(traffic), max(traffic.end - traffic.start, 0.0), 0)
    cpu_master = cpu_standby = cpu_sync = 0.0

    checkpoints: list[tuple[float, int, int]] = []  # (time, kind, n): a heap
    for t in f.failover_at:
        heapq.heappush(checkpoints, (t, _FAILOVER, 0))
    if scenario.restart_at is not None:
        heapq.heappush(checkpoints, (scenario.restart_at, _DOWN, 0))
        heapq.heappush(checkpoints, (scenario.restart_at + f.restart_downtime, _UP, 0))
    restart_target = 0.0

    def checkpoint(now: float, kind: int, cursor: int) -> None:
        nonlocal restart_target
        if kind == _FAILOVER:
            standby = sim.standby.table if sim.standby_up else Engine(sim.settings).table
            sv = survival(
                traffic,
                cursor,
                sim.master.table,
                standby,
                now,
                probe_packets=m.probe_packets,
                settings=sim.settings,
            )
            res.points.append(FailoverPoint(now, sim.agreement(now), sv, sim.standby_up))
        elif kind == _DOWN:
            before = sim.agreement(now).share
            res.restart_before = before
            restart_target = before - m.recover_tolerance
            res.recovery.append((0.0, before))
            sim.down()
            heapq.heappush(checkpoints, (now + m.sample_interval, _SAMPLE, 0))
        elif kind == _UP:
            sim.up(now)
        else:  # _SAMPLE
            assert scenario.restart_at is not None
            dt = now - scenario.restart_at
            share = sim.agreement(now).share
            if dt <= m.recover_window + 1e-9:
                res.recovery.append((dt, share))
            if res.recover_s is None and sim.standby_up and share >= restart_target:
                res.recover_s = dt
            if res.recover_s is None or dt < m.recover_window:
                heapq.heappush(checkpoints, (now + m.sample_interval, _SAMPLE, 0))

    master, net, mp = sim.master, sim.net, sim.mp
    tracks = sim.traits.tracks_wire
    lost = sim.miss.lost
    next_gc = traffic.start
    times, packets = traffic.times, traffic.packets
    inf = float("inf")
    due = inf  # the simulated link's next deadline: nothing to do before it
    n_sync = n_standby = 0  # intervals measured, to subtract the clock's own cost
    if net is not None:
        net.run(traffic.start)
        due = net.next_time() or inf
    for i in range(len(packets)):
        now = times[i]
        while checkpoints and checkpoints[0][0] <= now:
            t, kind, _ = heapq.heappop(checkpoints)
            if net is not None:
                net.run(t)
            checkpoint(t, kind, i)
            if net is not None:
                due = net.next_time() or inf
        data = packets[i]
        if net is not None and now >= due:
            c0 = clk()
            net.run(now)
            due = net.next_time() or inf
            cpu_sync += clk() - c0
            n_sync += 1
        c0 = clk()
        master.process_ip(data, now)
        cpu_master += clk() - c0
        if mp is not None and master.events:
            assert net is not None
            c0 = clk()
            for etype, conn in master.drain_events():
                if etype == _DESTROY:
                    mp.local_delete(conn, now=now)
                else:
                    mp.local_update(conn, now=now)
            net.now = now  # nothing was due before ``now`` (due > now), so no step is skipped
            net.step()  # send the changes now, as a node shell does after each burst
            due = net.next_time() or inf
            cpu_sync += clk() - c0
            n_sync += 1
        if tracks and not lost() and sim.standby_up:
            c0 = clk()
            sim.standby.process_ip(data, now)
            cpu_standby += clk() - c0
            n_standby += 1
        elif now >= next_gc:
            # a standby that does not see this packet still expires entries on its own clock
            next_gc = now + 1.0
            sim.standby.expire(now)
    # checkpoints after the last packet (within the traffic's span only)
    while checkpoints and checkpoints[0][0] <= traffic.end:
        t, kind, _ = heapq.heappop(checkpoints)
        if net is not None:
            net.run(t)
        checkpoint(t, kind, len(packets))
    res.standby_missed = sim.miss.losses if tracks else 0
    if net is not None:
        ms = net.link(MASTER_ID, STANDBY_ID)
        sm = net.link(STANDBY_ID, MASTER_ID)
        res.sync_bytes = (ms.bytes, sm.bytes)
        res.sync_datagrams = (ms.sent, sm.sent)
        res.sync_lost = ms.dropped + sm.dropped
        assert sim.mp is not None and sim.sp is not None
        c = sim.mp.counters()
        res.sync_counters = {
            k: c.get(k, 0)
            for k in (
                "walks_started",
                "nack_received",
                "retransmitted",
                "retransmit_unavailable",
                "tx_records",
            )
        }
        res.sync_counters["gap_fallbacks"] = sim.sp.counters().get("gap_fallbacks", 0)
    if clock is not None:
        # Each measured interval includes one clock call; subtract its calibrated cost.
        ovh = _clock_cost(clock)
        cpu_master = max(0.0, cpu_master - ovh * len(packets))
        cpu_standby = max(0.0, cpu_standby - ovh * n_standby)
        cpu_sync = max(0.0, cpu_sync - ovh * n_sync)
    res.cpu_s = {"master": cpu_master, "standby": cpu_standby, "sync": cpu_sync}
    return res
