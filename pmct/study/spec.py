"""A study definition: a small TOML file parsed into frozen dataclasses.

Why a strict parser: a study is only worth something if it can be rerun exactly, so every key
is known, typed and range-checked here, and a typo is an error naming the key and the file
instead of a silently ignored setting (the same rule as pmct.config for node configs).

Layout (configs/studies/default.toml is a complete, commented example)::

    [study]    name, seed, strategies
    [traffic]  source = "generate" | "pcap"; pcap_dir; [traffic.generate] flows, duration, mix
    [faults]   miss_rate, miss_model, burst_length, sync_loss, sync_loss_model,
               restart_at, restart_downtime, failover_at
    [sync]     link_delay, send_window, announce_interval
    [metrics]  probe_packets, recover_tolerance, sample_interval, recover_window
    [live]     the live level's traffic and timing (pmct/study/live_spec.py), read only
               when [study] level = "live" (or ``pmct study --live``)

Relative paths are relative to the TOML file's folder.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pmct.errors import ConfigError

if TYPE_CHECKING:
    from pmct.study.live_spec import LiveSpec

__all__ = [
    "LEVELS",
    "LIVE_STRATEGIES",
    "LOSS_MODELS",
    "STRATEGIES",
    "FaultSpec",
    "GeneratorSpec",
    "MetricSpec",
    "StudySpec",
    "SyncSpec",
    "TrafficSpec",
    "load_study",
    "parse_study",
]

STRATEGIES: Final = ("none", "concurrent", "concurrent+resync", "replicate")
# the live level adds the Linux kernel's tracker replicated by conntrackd (FTFW)
LIVE_STRATEGIES: Final = (*STRATEGIES, "kernel+conntrackd")
LEVELS: Final = ("simulation", "live")
LOSS_MODELS: Final = ("random", "bursty")
SOURCES: Final = ("generate", "pcap")


@dataclass(frozen=True, slots=True)
class GeneratorSpec:
    """The built-in traffic generator (traffic.generate)."""

    flows: int = 600
    duration: float = 60.0  # seconds over which flows start
    tcp: float = 0.7  # shares of the flow mix (normalised)
    udp: float = 0.2
    icmp: float = 0.1
    rtt: float = 0.02  # mean round-trip time, seconds
    long_share: float = 0.05  # share of TCP flows that are long-lived, mostly idle sessions
    open_share: float = 0.1  # share of TCP flows never closed (still open at the end)


@dataclass(frozen=True, slots=True)
class TrafficSpec:
    source: str = "generate"
    pcap_dir: Path | None = None
    generate: GeneratorSpec = field(default_factory=GeneratorSpec)


@dataclass(frozen=True, slots=True)
class FaultSpec:
    miss_rate: tuple[float, ...] = (0.0,)  # p: share of packets the standby does not see
    miss_model: tuple[str, ...] = ("random",)
    burst_length: float = 8.0  # bursty: mean packets per miss burst (Gilbert-Elliott)
    sync_loss: tuple[float, ...] = (0.0,)  # q: share of sync datagrams lost (each direction)
    sync_loss_model: str = "random"
    restart_at: tuple[float | None, ...] = (None,)  # None: no restart ("never" in TOML)
    restart_downtime: float = 1.0
    failover_at: tuple[float, ...] = (30.0,)


@dataclass(frozen=True, slots=True)
class SyncSpec:
    link_delay: float = 0.0005  # one-way, seconds
    send_window: bool = False
    announce_interval: float = 1.0


@dataclass(frozen=True, slots=True)
class MetricSpec:
    probe_packets: int = 3  # next packets of each open session judged after a failover
    recover_tolerance: float = 0.01  # recovered: agreement within this of its pre-restart value
    sample_interval: float = 0.25  # agreement sampling after a restart, seconds
    recover_window: float = 20.0  # how long after a restart agreement is sampled


@dataclass(frozen=True, slots=True)
class StudySpec:
    name: str
    seed: int
    strategies: tuple[str, ...]
    traffic: TrafficSpec
    faults: FaultSpec
    sync: SyncSpec
    metrics: MetricSpec
    source: Path | None = None  # the TOML file, for the report
    level: str = "simulation"  # "live": real daemons in the namespace lab (pmct/study/live.py)
    live: LiveSpec | None = None  # the [live] section, parsed when level == "live"


# ------------------------------------------------------------------ parsing helpers


class _Section:
    """Typed access to one TOML table; remembers which keys were read to reject the rest."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: must be a table")
        self.data = data
        self.where = where
        self.seen: set[str] = set()

    def _get(self, key: str, default: Any) -> Any:
        self.seen.add(key)
        return self.data.get(key, default)

    def _err(self, key: str, msg: str) -> ConfigError:
        return ConfigError(f"{self.where}.{key}: {msg}")

    def str_(self, key: str, default: str, choices: tuple[str, ...] | None = None) -> str:
        v = self._get(key, default)
        if not isinstance(v, str):
            raise self._err(key, f"must be a string, not {v!r}")
        if choices is not None and v not in choices:
            raise self._err(key, f"{v!r} is not one of {', '.join(choices)}")
        return v

    def int_(self, key: str, default: int, lo: int, hi: int | None = None) -> int:
        v = self._get(key, default)
        if isinstance(v, bool) or not isinstance(v, int):
            raise self._err(key, f"must be an integer, not {v!r}")
        if v < lo or (hi is not None and v > hi):
            raise self._err(key, f"{v} is out of range {lo}..{hi if hi is not None else ''}")
        return v

    def float_(self, key: str, default: float, lo: float, hi: float = math.inf) -> float:
        v = self._get(key, default)
        return self._check_float(key, v, lo, hi)

    def _check_float(self, key: str, v: Any, lo: float, hi: float) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise self._err(key, f"must be a number, not {v!r}")
        if not lo <= v <= hi:
            raise self._err(key, f"{v} is out of range [{lo}, {hi}]")
        return float(v)

    def bool_(self, key: str, default: bool) -> bool:
        v = self._get(key, default)
        if not isinstance(v, bool):
            raise self._err(key, f"must be true or false, not {v!r}")
        return v

    def floats(
        self, key: str, default: tuple[float, ...], lo: float, hi: float
    ) -> tuple[float, ...]:
        v = self._get(key, list(default))
        if isinstance(v, int | float) and not isinstance(v, bool):
            v = [v]
        if not isinstance(v, list) or not v:
            raise self._err(key, "must be a non-empty list of numbers")
        return tuple(self._check_float(key, x, lo, hi) for x in v)

    def strs(self, key: str, default: tuple[str, ...], choices: tuple[str, ...]) -> tuple[str, ...]:
        v = self._get(key, list(default))
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not v:
            raise self._err(key, "must be a non-empty list of strings")
        for x in v:
            if x not in choices:
                raise self._err(key, f"{x!r} is not one of {', '.join(choices)}")
        if len(set(v)) != len(v):
            raise self._err(key, "lists a value twice")
        return tuple(v)

    def table(self, key: str) -> _Section:
        self.seen.add(key)
        return _Section(self.data.get(key, {}), f"{self.where}.{key}")

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise ConfigError(f"{self.where}: unknown key(s): {', '.join(unknown)}")


def parse_study(
    data: dict[str, Any], *, base: Path | None = None, level: str | None = None
) -> StudySpec:
    """Build a StudySpec from parsed TOML; ``base`` resolves relative paths; ``level``
    overrides [study] level (``pmct study --live``)."""
    root = _Section(data, "study file")

    st = root.table("study")
    name = st.str_("name", "study")
    seed = st.int_("seed", 1, 0, 2**63 - 1)
    level = level or st.str_("level", "simulation", LEVELS)
    st.seen.add("level")
    choices = LIVE_STRATEGIES if level == "live" else STRATEGIES
    strategies = st.strs("strategies", STRATEGIES, choices)
    st.done()

    tr = root.table("traffic")
    source = tr.str_("source", "generate", SOURCES)
    pcap_raw = tr._get("pcap_dir", None)
    pcap_dir: Path | None = None
    if pcap_raw is not None:
        if not isinstance(pcap_raw, str):
            raise ConfigError("study file.traffic.pcap_dir: must be a path string")
        pcap_dir = Path(pcap_raw)
        if base is not None and not pcap_dir.is_absolute():
            pcap_dir = base / pcap_dir
    if source == "pcap" and pcap_dir is None:
        raise ConfigError('study file.traffic.pcap_dir: required when source = "pcap"')
    g = tr.table("generate")
    d = GeneratorSpec()
    gen = GeneratorSpec(
        flows=g.int_("flows", d.flows, 1, 10_000_000),
        duration=g.float_("duration", d.duration, 0.001),
        tcp=g.float_("tcp", d.tcp, 0.0),
        udp=g.float_("udp", d.udp, 0.0),
        icmp=g.float_("icmp", d.icmp, 0.0),
        rtt=g.float_("rtt", d.rtt, 0.0001, 10.0),
        long_share=g.float_("long_share", d.long_share, 0.0, 1.0),
        open_share=g.float_("open_share", d.open_share, 0.0, 1.0),
    )
    g.done()
    if gen.tcp + gen.udp + gen.icmp <= 0:
        raise ConfigError("study file.traffic.generate: tcp + udp + icmp must be > 0")
    tr.done()

    fa = root.table("faults")
    df = FaultSpec()
    restart = fa._get("restart_at", ["never"])
    if not isinstance(restart, list):
        restart = [restart]
    if not restart:
        raise ConfigError("study file.faults.restart_at: must be a non-empty list")
    restart_at: list[float | None] = []
    for x in restart:
        if x == "never":
            restart_at.append(None)
        else:
            restart_at.append(fa._check_float("restart_at", x, 0.0, math.inf))
    faults = FaultSpec(
        miss_rate=fa.floats("miss_rate", df.miss_rate, 0.0, 0.99),
        miss_model=fa.strs("miss_model", df.miss_model, LOSS_MODELS),
        burst_length=fa.float_("burst_length", df.burst_length, 1.0),
        sync_loss=fa.floats("sync_loss", df.sync_loss, 0.0, 0.99),
        sync_loss_model=fa.str_("sync_loss_model", df.sync_loss_model, LOSS_MODELS),
        restart_at=tuple(restart_at),
        restart_downtime=fa.float_("restart_downtime", df.restart_downtime, 0.0),
        failover_at=tuple(sorted(fa.floats("failover_at", df.failover_at, 0.0, math.inf))),
    )
    fa.done()

    sy = root.table("sync")
    ds = SyncSpec()
    sync = SyncSpec(
        link_delay=sy.float_("link_delay", ds.link_delay, 0.0, 10.0),
        send_window=sy.bool_("send_window", ds.send_window),
        announce_interval=sy.float_("announce_interval", ds.announce_interval, 0.01, 60.0),
    )
    sy.done()

    me = root.table("metrics")
    dm = MetricSpec()
    metrics = MetricSpec(
        probe_packets=me.int_("probe_packets", dm.probe_packets, 1, 1000),
        recover_tolerance=me.float_("recover_tolerance", dm.recover_tolerance, 0.0, 1.0),
        sample_interval=me.float_("sample_interval", dm.sample_interval, 0.001),
        recover_window=me.float_("recover_window", dm.recover_window, 0.0),
    )
    me.done()
    live = None
    if level == "live":
        from pmct.study.live_spec import parse_live

        live = parse_live(root.table("live"), faults)
    root.done()
    return StudySpec(
        name,
        seed,
        strategies,
        TrafficSpec(source, pcap_dir, gen),
        faults,
        sync,
        metrics,
        level=level,
        live=live,
    )


def load_study(path: Path, *, level: str | None = None) -> StudySpec:
    """Read and check a study file. Raises ConfigError with the file name on any problem."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    try:
        spec = parse_study(data, base=path.resolve().parent, level=level)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return replace(spec, source=path)
