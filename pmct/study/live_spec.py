"""The [live] section of a study file: traffic and timing of the live level (pmct/study/live.py).

Why a section of its own: the simulation's [traffic] generator describes packets it writes
itself; the live level makes real programs talk (curl downloads, an iperf3 stream, ping,
short HTTP requests) through real daemons, so its knobs are different ones: how many
downloads, how fast, for how long. The [faults] and [metrics] sections are shared with the
simulation (miss_rate, sync_loss, restart_at, restart_downtime, failover_at;
recover_tolerance, sample_interval), with the times counted from the moment the traffic
starts. ``miss_model`` "random" is an nftables ``numgen random`` drop; "bursty" cannot be
the simulation's Gilbert-Elliott chain (an nft rule has no memory between packets, and
``burst_length`` counts packets), so at the live level a burst is a stretch of time in which
the standby misses every packet, ``burst_ms`` long on average (live_bursts.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pmct.errors import ConfigError

if TYPE_CHECKING:
    from pmct.study.spec import FaultSpec, _Section

__all__ = ["LiveSpec", "parse_live"]


@dataclass(frozen=True, slots=True)
class LiveSpec:
    flows: int = 20  # concurrent curl downloads, client <- server
    flow_rate: int = 32768  # bytes/s of each download (curl --limit-rate)
    iperf_mbit: float = 5.0  # one iperf3 TCP stream server -> client (0: none)
    short_rate: float = 4.0  # short HTTP requests per second (each leaves a TIME_WAIT entry)
    ping_interval: float = 0.05  # client -> server echo requests (0: none)
    warmup: float = 3.0  # the downloads start spread over this many seconds
    observe: float = 6.0  # seconds of traffic after the failover
    survive_bytes: int = 1  # a session survives if it receives this much after the failover
    backend: str = ""  # pmct's queue backend ("" = the node default)
    repeat: int = 1  # runs per scenario (counts are pooled over them)
    burst_ms: float = 30.0  # bursty misses: mean burst length (an overload stretch), ms


def parse_live(sec: _Section, faults: FaultSpec) -> LiveSpec:
    """Parse [live]; also checks the [faults] values the live level cannot run."""
    d = LiveSpec()
    live = LiveSpec(
        flows=sec.int_("flows", d.flows, 0, 2000),
        flow_rate=sec.int_("flow_rate", d.flow_rate, 1024, 10**9),
        iperf_mbit=sec.float_("iperf_mbit", d.iperf_mbit, 0.0, 10_000.0),
        short_rate=sec.float_("short_rate", d.short_rate, 0.0, 1000.0),
        ping_interval=sec.float_("ping_interval", d.ping_interval, 0.0, 10.0),
        warmup=sec.float_("warmup", d.warmup, 0.0, 600.0),
        observe=sec.float_("observe", d.observe, 1.0, 600.0),
        survive_bytes=sec.int_("survive_bytes", d.survive_bytes, 1, 10**9),
        backend=sec.str_("backend", d.backend, ("", "netfilterqueue", "netlink")),
        repeat=sec.int_("repeat", d.repeat, 1, 100),
        burst_ms=sec.float_("burst_ms", d.burst_ms, 1.0, 10_000.0),
    )
    sec.done()
    if live.flows == 0 and live.iperf_mbit == 0:
        raise ConfigError("study file.live: flows = 0 and iperf_mbit = 0: no TCP session to watch")
    if live.ping_interval and live.ping_interval < 0.002:
        raise ConfigError("study file.live.ping_interval: below ping's 2 ms minimum")
    if faults.sync_loss_model != "random":
        raise ConfigError('study file.faults.sync_loss_model: the live level has only "random"')
    for r in faults.restart_at:
        if r is not None and r < live.warmup:
            raise ConfigError(
                f"study file.faults.restart_at: {r:g} s is inside the warm-up ({live.warmup:g} s)"
            )
    for t in faults.failover_at:
        if t <= live.warmup:
            raise ConfigError(
                f"study file.faults.failover_at: {t:g} s is inside the warm-up ({live.warmup:g} s)"
            )
        for r in faults.restart_at:
            if r is not None and r + faults.restart_downtime >= t:
                raise ConfigError(
                    f"study file.faults.restart_at: the standby must be back "
                    f"({r:g} + {faults.restart_downtime:g} s) before the failover at {t:g} s"
                )
    return live
