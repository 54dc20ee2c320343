"""The live level of ``pmct study``: real daemons, real TCP flows, a real failover, in the lab.

Why a live level next to the simulation: the simulation (strategies.py) judges the standby's
table with the engine's verdicts on copies of the entries; here the judge is the network
itself. Real programs talk through the namespace lab (pmct.lab.topology: client — LAN hub —
{fw-a, fw-b} — WAN hub — server, sync0 between the firewalls): paced HTTP downloads fetched
by curl, an iperf3 stream, short HTTP requests that leave TIME_WAIT entries behind, and ping.
fw-a is the master, fw-b the standby; at ``failover_at`` fw-a dies (frozen, links down,
killed: pmct.lab.keepalived's order) and fw-b takes over, and what counts is which TCP
sessions keep receiving data through fw-b under a strict ruleset (only a TCP SYN from the LAN
opens a connection, invalid is dropped, ``tcp_loose`` off), so a session survives only if
fw-b holds its state.

Strategies (each scenario runs in a fresh lab):

* ``none``: fw-b is started empty at the failover (a cold standby), as the master.
* ``concurrent``: pmct on both, fw-b passive, tracking the wire; no sync.
* ``concurrent+resync``: the same plus ct_sync in ``concurrent`` mode (init sync after a
  restart, NACK recovery).
* ``replicate``: ct_sync in ``replicate`` mode: fw-b's table is what fw-a streams.
* ``kernel+conntrackd``: no pmct. The Linux kernel's conntrack and an nftables stateful
  ruleset (the same rules) on both, ``nf_conntrack_tcp_loose`` 0, conntrackd in FTFW mode over
  UDP on sync0. fw-b is a VRRP backup: it receives nothing and sends nothing on the data links
  (netdev ingress and egress drop, the place of keepalived's virtual MAC), so its kernel
  table stays empty and the state lives in conntrackd's external cache. The failover is
  conntrack-tools' doc/sync/primary-backup.sh "primary" branch: ``conntrackd -c`` (commit the
  external cache into the kernel), ``-f`` (flush the caches), ``-R`` (resync the internal
  cache with the kernel), ``-B`` (bulk send), then the data links open. conntrackd commits TCP
  entries with window tracking off (its default, TCPWindowTracking no).

Faults: the standby misses a share p of the packets on its data links (nftables netdev
ingress drop, before NFQUEUE; removed when it takes over): ``random`` is a ``numgen random``
drop (each packet on its own), ``bursty`` drops every packet during bursts of ``burst_ms`` on
average that start at random (live_bursts.py: a toggler in fw-b's namespace flips an nft set;
seeded from the study seed and the run); nft counters give the share really missed. The standby
restarts at ``restart_at`` (pmct daemon or conntrackd stopped, down ``restart_downtime``,
started again; conntrackd then runs ``-n``, the script's "backup" resync request); the sync
link loses a share q of the sync datagrams in each direction (numgen drop on sync0 ingress:
this kernel has no sch_netem); the failover at ``failover_at`` (one run per failover point).

Metrics:

* state agreement at the failover: the share of the master's entries (traffic entries, orig
  source = the client) that the standby holds with the same tuple, TCP state and
  SEEN_REPLY/ASSURED bits; read with ``pmct conntrack -L`` (control socket), ``conntrack -L``
  (fw-a's kernel) and ``conntrackd -e`` (fw-b's external cache). The two reads are ~10 ms
  apart, so an entry changing in between can count as a disagreement.
* session survival: of the TCP sessions open at the failover (the downloads and the iperf3
  stream), the share that receives at least ``survive_bytes`` in the second half of the
  ``observe`` window after it and never failed (no reset, no error). The second half, because
  data already in flight or queued in the server's socket buffer can trickle in just after
  the failover even on a cut session.
* outage: the longest gap between ping replies around the failover.
* sync cost: bytes and frames per second on fw-a's sync0, both directions (/proc/net/dev),
  over the steady windows (warm-up end to failover, minus a restart's recovery); the bytes
  of a restart's resync are counted separately.
* CPU: user+system time of each node's daemon (pmct, or conntrackd: the kernel's own
  conntrack work runs in softirq and is not attributable to a process) per packet that
  arrived on fw-a's data links, over the same windows (/proc/<pid>/stat).
* recovery: seconds from the restart until the standby's agreement is back within
  ``recover_tolerance`` of its value just before the restart (downtime included), sampled
  every ``sample_interval``.

Rules: every process is started through the Lab and stopped by pid; every nft table lives in
a lab namespace and goes with it; traffic stays between the lab's namespaces.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, TextIO

from pmct.errors import ConfigError
from pmct.lab.scenario import conntrack_entries, pmct_cli, wait_for
from pmct.lab.topology import (
    CLIENT_IP,
    LAN_GW,
    LAN_MAC,
    SERVER_IP,
    WAN_GW,
    WAN_MAC,
    Lab,
    LabError,
)
from pmct.study.faults import derive_seed
from pmct.study.live_bursts import bursty_miss_table, read_counters
from pmct.study.live_spec import LiveSpec
from pmct.study.runner import Progress
from pmct.study.spec import StudySpec

__all__ = [
    "LiveResult",
    "LiveScenario",
    "LiveStudy",
    "check_host",
    "live_scenarios",
    "run_live",
    "run_scenario",
]

HTTP_PORT: Final = 8080
IPERF_PORT: Final = 5201
PMCT_SYNC_PORT: Final = 3780
CTD_SYNC_PORT: Final = 3781
SYNC_IP: Final = {"fw-a": "198.19.0.1", "fw-b": "198.19.0.2"}
PEER: Final = {"fw-a": "fw-b", "fw-b": "fw-a"}
NODE_ID: Final = {"fw-a": 1, "fw-b": 2}
MISS_TABLE: Final = "pmctstudy_miss"
LOSS_TABLE: Final = "pmctstudy_loss"
STANDBY_TABLE: Final = "pmctstudy_standby"
RULES_TABLE: Final = "pmctstudy"
PMCT_STRATEGIES: Final = ("concurrent", "concurrent+resync", "replicate")
_CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
_IPERF_LINE: Final = re.compile(
    r"^\[\s*\d+\]\s+([\d.]+)-([\d.]+)\s+sec\s+([\d.]+)\s+(Bytes|KBytes|MBytes|GBytes)"
)
_UNITS: Final = {"Bytes": 1, "KBytes": 1024, "MBytes": 1024**2, "GBytes": 1024**3}
_PING_LINE: Final = re.compile(r"^\[(\d+\.\d+)\].*icmp_seq=(\d+)")

# pmct's strict lab ruleset plus ping: an echo request from the LAN may open an entry.
PING_RULE: Final = (
    '\n[[policy.rule]]\nctstate = "new"\nin = "lan0"\nproto = "icmp"\naction = "accept"\n'
    'comment = "ping from the LAN (the study measures the outage with it)"\n'
)
# The same ruleset for the kernel: nft on fw-a and fw-b (the forward hook; pmct's raw-hook
# NFQUEUE is not used in this strategy).
KERNEL_RULES: Final = f"""table inet {RULES_TABLE} {{
  chain forward {{
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    ct state invalid drop
    iifname "lan0" oifname "wan0" tcp flags & (fin|syn|rst|ack) == syn ct state new accept
    iifname "lan0" oifname "wan0" icmp type echo-request ct state new accept
  }}
}}
"""


# ---------------------------------------------------------------------------- scenarios


@dataclass(frozen=True, slots=True)
class LiveScenario:
    strategy: str
    miss_rate: float = 0.0  # p
    sync_loss: float = 0.0  # q
    restart_at: float | None = None
    failover_at: float = 10.0
    miss_model: str = "random"  # "random" (nft numgen) or "bursty" (live_bursts.py)

    def canonical(self) -> LiveScenario:
        """Faults the strategy cannot feel set to neutral (as Scenario.canonical)."""
        s = self
        if s.strategy in ("replicate", "kernel+conntrackd", "none"):
            s = replace(s, miss_rate=0.0)  # the standby does not track the wire
        if s.strategy in ("concurrent", "none"):
            s = replace(s, sync_loss=0.0)  # no sync
        if s.strategy == "none":
            s = replace(s, restart_at=None)  # nothing runs to restart
        if s.miss_rate == 0:
            s = replace(s, miss_model="random")  # no misses: the model does not matter
        return s

    @property
    def label(self) -> str:
        r = "never" if self.restart_at is None else f"{self.restart_at:g}"
        m = " bursty" if self.miss_model == "bursty" else ""
        return (
            f"{self.strategy} p={self.miss_rate:g}{m} q={self.sync_loss:g} restart={r} "
            f"failover={self.failover_at:g}"
        )


def live_scenarios(spec: StudySpec) -> list[LiveScenario]:
    """Every canonical scenario the study asks for, once, in a stable order."""
    f = spec.faults
    out: list[LiveScenario] = []
    for strategy in spec.strategies:
        for restart in f.restart_at:
            for q in f.sync_loss:
                for p in f.miss_rate:
                    for model in f.miss_model:
                        for t in f.failover_at:
                            sc = LiveScenario(strategy, p, q, restart, t, model)
                            out.append(sc.canonical())
    return list(dict.fromkeys(out))


@dataclass(slots=True)
class LiveResult:
    scenario: LiveScenario
    master_entries: int = 0
    held: int = 0  # master's entries the standby holds (same tuple)
    agreeing: int = 0  # ... with the same state and bits
    sessions: int = 0  # TCP sessions open at the failover
    survived: int = 0
    failed: int = 0  # sessions that ended with an error (reset, timeout)
    outage_s: float | None = None  # longest gap between ping replies around the failover
    ping_lost: int = 0
    takeover_s: float = 0.0  # from the master's death until the standby was told / started
    seconds: float = 0.0  # length of the measured windows
    data_packets: int = 0  # packets arriving on fw-a's data links in the windows
    sync_bytes: int = 0  # sync0 frames' bytes, both directions, in the windows
    sync_frames: int = 0
    resync_bytes: int = 0  # sync0 bytes from a restart until agreement was back
    cpu_master_s: float = 0.0
    cpu_standby_s: float = 0.0
    restart_before: float | None = None
    recover_s: float | None = None
    recovery: list[tuple[float, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)  # sessions that did not survive, and why
    mismatches: list[str] = field(default_factory=list)  # master vs standby, a sample
    diag: list[str] = field(default_factory=list)  # the standby's own word, before and after
    runs: int = 1  # > 1: pooled over that many runs (pooled())
    recovered: int = 0  # runs whose agreement recovered after the restart
    miss_seen: int = 0  # packets on the standby's data ingress while the miss rule was there
    miss_dropped: int = 0  # ... of them dropped by it (nft counters)
    bursts: int = 0  # bursty: bursts the toggler ran
    burst_s: float = 0.0  # ... their total length

    @property
    def miss_measured(self) -> float | None:
        return self.miss_dropped / self.miss_seen if self.miss_seen else None

    @property
    def agreement(self) -> float:
        return self.agreeing / self.master_entries if self.master_entries else 1.0

    @property
    def survival(self) -> float:
        return self.survived / self.sessions if self.sessions else 1.0

    def per_s(self, n: float) -> float:
        return n / self.seconds if self.seconds > 0 else 0.0

    def us_per_packet(self, cpu_s: float) -> float:
        return cpu_s * 1e6 / self.data_packets if self.data_packets else 0.0


def pooled(runs: list[LiveResult]) -> LiveResult:
    """Several runs of one scenario as one result: counts summed (so shares are pooled,
    not means of ratios), the outage and take-over time the median, the resync bytes the
    mean, the recovery time the median when every run recovered."""
    if len(runs) == 1:
        return runs[0]
    out = LiveResult(runs[0].scenario, runs=len(runs))
    for name in ("master_entries", "held", "agreeing", "sessions", "survived", "failed",
                 "ping_lost", "data_packets", "sync_bytes", "sync_frames", "seconds",
                 "cpu_master_s", "cpu_standby_s", "miss_seen", "miss_dropped", "bursts",
                 "burst_s"):  # fmt: skip
        setattr(out, name, sum(getattr(r, name) for r in runs))
    outages = [r.outage_s for r in runs if r.outage_s is not None]
    out.outage_s = statistics.median(outages) if outages else None
    out.takeover_s = statistics.median(r.takeover_s for r in runs)
    out.resync_bytes = round(statistics.mean(r.resync_bytes for r in runs))
    before = [r.restart_before for r in runs if r.restart_before is not None]
    out.restart_before = statistics.mean(before) if before else None
    recs = [r.recover_s for r in runs if r.recover_s is not None]
    if before and len(recs) == len(runs):
        out.recover_s = statistics.median(recs)
    elif before:
        out.notes.append(
            f"agreement recovered before the failover in {len(recs)} of {len(runs)} runs"
        )
    out.recovered = len(recs)
    out.recovery = runs[0].recovery
    for i, r in enumerate(runs, 1):
        out.notes += [f"run {i}: {n}" for n in r.notes if "not recovered" not in n]
        out.lost += [f"run {i}: {x}" for x in r.lost]
        out.mismatches += [f"run {i}: {x}" for x in r.mismatches]
        out.diag += [f"run {i}: {x}" for x in r.diag if x]
    return out


@dataclass(slots=True)
class LiveStudy:
    spec: StudySpec
    scenarios: list[LiveScenario]
    results: dict[LiveScenario, LiveResult]  # pooled over the runs
    seconds: float
    load: str = ""  # `uptime` before and after
    runs: dict[LiveScenario, list[LiveResult]] = field(default_factory=dict)


# ---------------------------------------------------------------------------- small helpers


def check_host() -> None:
    """The live level needs root and the tools it drives; ConfigError says what is missing."""
    if os.geteuid() != 0:
        raise ConfigError("the live level needs root (network namespaces)")
    missing = [t for t in ("ip", "nft", "curl", "ping", "iperf3") if shutil.which(t) is None]
    if missing:
        raise ConfigError(f"the live level needs {', '.join(missing)} (scripts/install.sh)")


def _nft(lab: Lab, node: str, script: str) -> None:
    p = subprocess.run(
        ["ip", "netns", "exec", lab.ns[node], "nft", "-f", "-"],
        input=script,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if p.returncode != 0:
        raise LabError(f"nft in {node}: {p.stderr.strip()}")


def _net_dev(lab: Lab, node: str) -> dict[str, tuple[int, int, int, int]]:
    """/proc/net/dev of a namespace: dev -> (rx bytes, rx packets, tx bytes, tx packets)."""
    out = lab.sh(node, ["cat", "/proc/net/dev"]).stdout
    devs = {}
    for line in out.splitlines()[2:]:
        name, _, rest = line.partition(":")
        f = rest.split()
        devs[name.strip()] = (int(f[0]), int(f[1]), int(f[8]), int(f[9]))
    return devs


def _cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a process (0 if it is gone)."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as fh:
            f = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(f[11]) + int(f[12])) / _CLK_TCK


def _miss_rule(p: float) -> str:
    n = round(p * 1_000_000)
    chains = "".join(
        f'chain in_{d} {{ type filter hook ingress device "{d}" priority -500; '
        f'counter name "seen"; numgen random mod 1000000 < {n} counter name "missed" drop; }}\n'
        for d in ("lan0", "wan0")
    )
    return f"table netdev {MISS_TABLE} {{\ncounter seen {{ }}\ncounter missed {{ }}\n{chains}}}\n"


def _start_misses(lab: Lab, spec: StudySpec, live: LiveSpec, sc: LiveScenario, run: int) -> None:
    """The standby's miss rule; bursty: plus the toggler that makes the bursts."""
    if sc.miss_model != "bursty":
        _nft(lab, "fw-b", _miss_rule(sc.miss_rate))
        return
    _nft(lab, "fw-b", bursty_miss_table(MISS_TABLE))
    seed = derive_seed(spec.seed, "live-miss", sc.miss_rate, run)
    lab.start("bursts", "fw-b", [
        sys.executable, "-m", "pmct.study.live_bursts", "--table", MISS_TABLE,
        "--p", f"{sc.miss_rate!r}", "--mean-ms", f"{live.burst_ms!r}", "--seed", str(seed),
        "--duration", f"{sc.failover_at + 5.0:g}",
    ])  # fmt: skip


def _stop_misses(lab: Lab, sc: LiveScenario, res: LiveResult) -> None:
    """Just before the failover: the toggler stopped by pid (it empties the set on SIGTERM:
    no burst runs into the take-over), the counters read. The table itself goes after the
    master's death (_run), as before, so the take-over time does not include these reads."""
    if sc.miss_model == "bursty":
        lab.stop("bursts")
        for line in lab.log_text("bursts").splitlines():
            f = line.split()
            if len(f) >= 3 and f[0] == "burst" and "failed" not in f:
                res.bursts += 1
                res.burst_s += float(f[2]) - float(f[1])
        res.burst_s = round(res.burst_s, 4)
        failed = lab.log_text("bursts").count(" failed")
        if failed or res.bursts == 0:
            res.notes.append(f"bursty: {res.bursts} bursts ran, {failed} toggles failed")
    out = lab.sh("fw-b", ["nft", "-j", "list", "counters", "table", "netdev", MISS_TABLE],
                 check=False).stdout  # fmt: skip
    with contextlib.suppress(ValueError):
        c = read_counters(out)
        res.miss_seen, res.miss_dropped = c.get("seen", 0), c.get("missed", 0)


def _loss_rule(q: float, port: int) -> str:
    n = round(q * 1_000_000)
    return (
        f"table netdev {LOSS_TABLE} {{ chain in {{ type filter hook ingress device "
        f'"sync0" priority -500; udp dport {port} numgen random mod 1000000 < {n} '
        "counter drop; }; }\n"
    )


def _standby_silence() -> str:
    """A VRRP backup's data links: nothing in, nothing out."""
    chains = "".join(
        f'chain {hook}_{d} {{ type filter hook {hook} device "{d}" priority -500; policy drop; }}\n'
        for d in ("lan0", "wan0")
        for hook in ("ingress", "egress")
    )
    return f"table netdev {STANDBY_TABLE} {{\n{chains}}}\n"


# ---------------------------------------------------------------------------- table entries

Key = tuple[Any, ...]
Value = tuple[str, bool, bool]  # TCP state, SEEN_REPLY, ASSURED


def pmct_table(lab: Lab, fw: str) -> dict[Key, Value]:
    """pmct's table (control socket), traffic entries only."""
    out: dict[Key, Value] = {}
    for e in conntrack_entries(lab, fw):
        if e["orig"][0] != CLIENT_IP:
            continue
        st = int(e["status"])
        out[(e["proto"], *e["orig"])] = (e["state"], bool(st & 2), bool(st & 4))
    return out


def parse_conntrack_lines(text: str) -> dict[Key, Value]:
    """``conntrack -L`` / ``conntrackd -e`` lines -> traffic entries.

    Both print ``proto num [timeout] [STATE] k=v ... k=v ... [UNREPLIED] [ASSURED] ...``;
    the original direction is the first run of k=v pairs, up to the second ``src=``.
    """
    out: dict[Key, Value] = {}
    for line in text.splitlines():
        tok = line.split()
        if len(tok) < 3 or not tok[1].isdigit():
            continue
        state = ""
        orig: list[str] = []
        seen_src = 0
        for t in tok[2:]:
            if "=" in t:
                if t.startswith("src="):
                    seen_src += 1
                if seen_src == 1:
                    orig.append(t)
            elif t.isupper() and t.replace("_", "").isalpha() and not orig:
                state = t
        if not orig or orig[0] != f"src={CLIENT_IP}":
            continue
        key = (tok[0], *orig)
        out[key] = (state if tok[0] in ("tcp", "sctp") else "", "[UNREPLIED]" not in tok,
                    "[ASSURED]" in tok)  # fmt: skip
    return out


def mismatches(master: dict[Key, Value], standby: dict[Key, Value], n: int = 8) -> list[str]:
    """Up to ``n`` of the master's entries the standby lacks or holds differently."""
    out = []
    for k, v in sorted(master.items(), key=lambda kv: str(kv[0])):
        w = standby.get(k)
        if w != v:
            what = "missing" if w is None else "/".join(map(str, w))
            out.append(f"{' '.join(map(str, k))}: {'/'.join(map(str, v))} vs {what}")
            if len(out) == n:
                break
    return out


def agreement(master: dict[Key, Value], standby: dict[Key, Value]) -> tuple[int, int, int]:
    """(master's entries, held by the standby, held with the same state and bits)."""
    held = sum(1 for k in master if k in standby)
    agree = sum(1 for k, v in master.items() if standby.get(k) == v)
    return len(master), held, agree


# ---------------------------------------------------------------------------- the two pairs


class _Pair:
    """What the runner needs of a firewall pair; one subclass per kind of daemon."""

    def __init__(self, lab: Lab, sc: LiveScenario, live: LiveSpec) -> None:
        self.lab, self.sc, self.live = lab, sc, live

    def start(self) -> None: ...
    def master_table(self) -> dict[Key, Value]: ...
    def standby_table(self) -> dict[Key, Value]: ...
    def pids(self) -> tuple[int | None, int | None]: ...
    def stop_standby(self) -> None: ...
    def start_standby(self) -> None: ...
    def take_over(self) -> None: ...
    def sync_port(self) -> int: ...

    def kill_master(self) -> None:
        """fw-a dies: its daemon frozen first (no last word), links down, then killed."""
        pid = self.pids()[0]
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        for dev in ("lan0", "wan0", "sync0"):
            self.lab.ip("fw-a", "link", "set", dev, "down")
        self.stop_master()

    def stop_master(self) -> None: ...

    def diagnose(self, when: str) -> str:
        """A line of the standby's own counters (for the CSV; "" if it has none)."""
        return ""


class PmctPair(_Pair):
    """pmct on both firewalls (strict ruleset, tcp_loose off)."""

    def _extra(self, fw: str) -> str:
        mode = {"concurrent+resync": "concurrent", "replicate": "replicate"}.get(self.sc.strategy)
        if mode is None:
            return PING_RULE
        return PING_RULE + (
            f"\n[sync]\nenabled = true\nnode_id = {NODE_ID[fw]}\npeers = [{NODE_ID[PEER[fw]]}]\n"
            f'mode = "{mode}"\ntransport = "unicast"\naddress = "{SYNC_IP[PEER[fw]]}"\n'
            f"port = {PMCT_SYNC_PORT}\n"
        )

    def _start(self, fw: str, role: str) -> None:
        opts: dict[str, Any] = {"strict": True, "tcp_loose": False, "extra": self._extra(fw)}
        if self.live.backend:
            opts["backend"] = self.live.backend
        self.lab.start_node(fw, role=role, wait=60.0, **opts)

    def start(self) -> None:
        self._start("fw-a", "active")
        if self.sc.strategy != "none":
            self._start("fw-b", "passive")

    def master_table(self) -> dict[Key, Value]:
        return pmct_table(self.lab, "fw-a")

    def standby_table(self) -> dict[Key, Value]:
        if not self.lab.alive("fw-b"):
            return {}
        try:
            return pmct_table(self.lab, "fw-b")
        except Exception:
            return {}  # starting or stopping: it holds nothing usable

    def pids(self) -> tuple[int | None, int | None]:
        a, b = self.lab.procs.get("fw-a"), self.lab.procs.get("fw-b")
        return (a.pid if a else None, b.pid if b else None)

    def stop_standby(self) -> None:
        self.lab.stop("fw-b", signal.SIGTERM)

    def start_standby(self) -> None:
        self._start("fw-b", "passive")

    def stop_master(self) -> None:
        self.lab.stop("fw-a", signal.SIGKILL)

    def take_over(self) -> None:
        if self.sc.strategy == "none":
            self.lab.start_node("fw-b", role="active", wait=60.0, strict=True, tcp_loose=False,
                                extra=PING_RULE)  # fmt: skip
            return
        p = pmct_cli("promote", "--force", "-s", self.lab.socket("fw-b"))
        if p.returncode != 0:
            raise LabError(f"pmct promote on fw-b failed: {p.stderr.strip()}")

    def sync_port(self) -> int:
        return PMCT_SYNC_PORT

    def diagnose(self, when: str) -> str:
        try:
            st = self.lab.control("fw-b", "status")
        except Exception as e:
            return f"{when}: no status ({e})"
        sync = st.get("sync", {})
        c = sync.get("counters", {})
        inv = ", ".join(f"{k} {v}" for k, v in sorted(st.get("invalid", {}).items()))
        return (
            f"{when}: role {st.get('role')}, ready {st.get('ready')}, sync {sync.get('state')}, "
            f"invalid {st.get('ctstates', {}).get('invalid', 0)} ({inv or '-'}), "
            f"nack_sent {c.get('nack_sent', '-')}, gap_fallbacks {c.get('gap_fallbacks', '-')}, "
            f"walks_received {c.get('walks_received', '-')}"
        )


class ConntrackdPair(_Pair):
    """The kernel's conntrack + nftables on both, conntrackd FTFW over sync0."""

    def conf_path(self, fw: str) -> str:
        return f"{self.lab.run_dir}/conntrackd-{fw}.conf"

    def conf(self, fw: str) -> str:
        d = f"{self.lab.run_dir}/{fw}"
        ignore = "\n".join(
            f"        IPv4_address {a}" for a in ("127.0.0.1", *SYNC_IP.values(), LAN_GW, WAN_GW)
        )
        return f"""# conntrackd for the pmct live study ({fw}), after conntrack-tools'
# doc/sync/ftfw/conntrackd.conf, unicast UDP on the lab's sync link
Sync {{
    Mode FTFW {{
    }}
    UDP {{
        IPv4_address {SYNC_IP[fw]}
        IPv4_Destination_Address {SYNC_IP[PEER[fw]]}
        Port {CTD_SYNC_PORT}
        Interface sync0
        SndSocketBuffer 1249280
        RcvSocketBuffer 1249280
        Checksum on
    }}
}}
General {{
    HashSize 32768
    HashLimit 131072
    LogFile {d}/conntrackd.log
    Syslog off
    LockFile {d}/conntrackd.lock
    UNIX {{
        Path {d}/conntrackd.ctl
    }}
    NetlinkBufferSize 2097152
    NetlinkBufferSizeMaxGrowth 8388608
    Filter From Userspace {{
        Protocol Accept {{
            TCP
            UDP
            ICMP
        }}
        Address Ignore {{
{ignore}
        }}
    }}
}}
"""

    def ctl(self, fw: str, *args: str, check: bool = True) -> str:
        p = self.lab.sh(fw, ["conntrackd", "-C", self.conf_path(fw), *args], check=False)
        if check and p.returncode != 0:
            raise LabError(f"conntrackd {' '.join(args)} in {fw}: {p.stderr.strip()}")
        return p.stdout

    def _firewall(self, fw: str) -> None:
        lab = self.lab
        if fw == "fw-b":
            _nft(lab, fw, _standby_silence())  # before it owns the cluster addresses
        for dev, mac, addr in (("lan0", LAN_MAC, LAN_GW), ("wan0", WAN_MAC, WAN_GW)):
            lab.ip(fw, "link", "set", dev, "address", mac)
            lab.ip(fw, "addr", "add", f"{addr}/24", "dev", dev)
        _nft(lab, fw, KERNEL_RULES)
        lab.sysctl(fw, "net.netfilter.nf_conntrack_tcp_loose=0")

    def _start_ctd(self, fw: str) -> None:
        os.makedirs(f"{self.lab.run_dir}/{fw}", exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{self.lab.run_dir}/{fw}/conntrackd.lock")
        Path(self.conf_path(fw)).write_text(self.conf(fw))
        name = f"conntrackd-{fw}"
        self.lab.start(name, fw, ["conntrackd", "-C", self.conf_path(fw)])

        def up() -> bool:
            if not self.lab.alive(name):
                raise LabError(f"{name} exited:\n{self.lab.log_text(name)[-2000:]}")
            p = self.lab.sh(fw, ["conntrackd", "-C", self.conf_path(fw), "-s"], check=False)
            return p.returncode == 0

        wait_for(f"{name} to answer", up, 20)

    def start(self) -> None:
        if shutil.which("conntrackd") is None:
            raise ConfigError("kernel+conntrackd needs conntrackd (scripts/install.sh)")
        for fw in ("fw-a", "fw-b"):
            self._firewall(fw)
            self._start_ctd(fw)
        self.ctl("fw-b", "-n")  # the script's "backup" branch: ask the master for its state

    def master_table(self) -> dict[Key, Value]:
        return parse_conntrack_lines(self.lab.sh("fw-a", ["conntrack", "-L"]).stdout)

    def standby_table(self) -> dict[Key, Value]:
        if not self.lab.alive("conntrackd-fw-b"):
            return {}
        return parse_conntrack_lines(self.ctl("fw-b", "-e", check=False))

    def pids(self) -> tuple[int | None, int | None]:
        a, b = self.lab.procs.get("conntrackd-fw-a"), self.lab.procs.get("conntrackd-fw-b")
        return (a.pid if a else None, b.pid if b else None)

    def stop_standby(self) -> None:
        self.lab.stop("conntrackd-fw-b", signal.SIGTERM)

    def start_standby(self) -> None:
        self._start_ctd("fw-b")
        self.ctl("fw-b", "-n")

    def stop_master(self) -> None:
        self.lab.stop("conntrackd-fw-a", signal.SIGKILL)

    def take_over(self) -> None:
        # primary-backup.sh "primary": commit, flush, resync, bulk send; then the data links
        for arg in ("-c", "-f", "-R", "-B"):
            self.ctl("fw-b", arg, check=False)
        self.lab.sh("fw-b", ["nft", "delete", "table", "netdev", STANDBY_TABLE])

    def sync_port(self) -> int:
        return CTD_SYNC_PORT


# ---------------------------------------------------------------------------- traffic


class Traffic:
    """The live traffic: paced downloads (curl), iperf3 -R, short requests, ping."""

    def __init__(self, lab: Lab, live: LiveSpec, work: str) -> None:
        self.lab, self.live, self.work = lab, live, work
        self.curls: list[str] = []
        self.t_iperf: float | None = None
        self.t_ping_wall: float | None = None
        py = [sys.executable, "-m", "pmct.study.live_server"]
        lab.start("http", "server", [*py, "serve", "--port", str(HTTP_PORT)])
        wait_for("the HTTP server", lambda: "serving" in lab.log_text("http"), 20)
        if live.iperf_mbit:
            lab.start("iperf3-s", "server", ["iperf3", "-s", "-p", str(IPERF_PORT), "--forceflush"])
            wait_for("iperf3 -s", lambda: "listening" in lab.log_text("iperf3-s").lower(), 20)

    def start(self, duration: float, step: Callable[[float], None]) -> None:
        """Start everything; the downloads spread over the warm-up (``step`` sleeps)."""
        lab, live = self.lab, self.live
        if live.ping_interval:
            self.t_ping_wall = time.time()
            lab.start("ping", "client", ["ping", "-D", "-n", "-i", f"{live.ping_interval:g}",
                                         SERVER_IP])  # fmt: skip
        if live.iperf_mbit:
            self.t_iperf = time.monotonic()
            lab.start("iperf3", "client", [
                "iperf3", "-c", SERVER_IP, "-p", str(IPERF_PORT), "-R", "-b",
                f"{live.iperf_mbit:g}M", "-t", str(int(duration) + 30), "-i", "0.5",
                "--forceflush",
            ])  # fmt: skip
        if live.short_rate:
            lab.start("short", "client", [
                sys.executable, "-m", "pmct.study.live_server", "short", "--url",
                f"http://{SERVER_IP}:{HTTP_PORT}/small", "--rate", f"{live.short_rate:g}",
            ])  # fmt: skip
        gap = live.warmup / live.flows if live.flows else 0.0
        for i in range(live.flows):
            name = f"curl-{i}"
            self.curls.append(name)
            lab.start(name, "client", [
                "curl", "-s", "-S", "-o", f"{self.work}/{name}.out",
                f"http://{SERVER_IP}:{HTTP_PORT}/stream/{live.flow_rate}",
            ])  # fmt: skip
            step(gap)

    def curl_bytes(self) -> dict[str, int]:
        out = {}
        for name in self.curls:
            try:
                out[name] = os.path.getsize(f"{self.work}/{name}.out")
            except OSError:
                out[name] = 0
        return out

    def curl_failed(self) -> set[str]:
        failed = set()
        for name in self.curls:
            p = self.lab.procs.get(name)
            if p is not None and p.popen is not None and p.popen.poll() not in (None, 0):
                failed.add(name)
        return failed

    def iperf_bytes(self, t0: float, t1: float) -> int:
        """Bytes the iperf3 client received in the 0.5 s intervals inside [t0, t1) (monotonic)."""
        if self.t_iperf is None:
            return 0
        total = 0
        for line in self.lab.log_text("iperf3").splitlines():
            m = _IPERF_LINE.match(line)
            if not m:
                continue
            a, b = float(m.group(1)), float(m.group(2))
            if b - a > 0.6:  # the summary lines at the end
                continue
            if t0 <= self.t_iperf + a and self.t_iperf + b <= t1 + 0.01:
                total += int(float(m.group(3)) * _UNITS[m.group(4)])
        return total

    def iperf_failed(self) -> bool:
        return "error" in self.lab.log_text("iperf3").lower()

    def ping_outage(self, w0: float, w1: float) -> tuple[float | None, int]:
        """(longest gap between replies inside [w0, w1] wall time, echoes lost in it)."""
        if not self.live.ping_interval:
            return None, 0
        replies = []
        for line in self.lab.log_text("ping").splitlines():
            m = _PING_LINE.match(line)
            if m:
                replies.append((float(m.group(1)), int(m.group(2))))
        inside = [(t, s) for t, s in replies if w0 <= t <= w1]
        if len(inside) < 2:
            return None, 0
        gap = max(b[0] - a[0] for a, b in itertools.pairwise(inside))
        lost = (inside[-1][1] - inside[0][1] + 1) - len({s for _, s in inside})
        return gap, lost

    def stop(self) -> None:
        for name in [*self.curls, "short", "iperf3", "ping", "iperf3-s", "http"]:
            with contextlib.suppress(Exception):
                self.lab.stop(name, signal.SIGTERM, timeout=5)


# ---------------------------------------------------------------------------- meters


class Meter:
    """Accumulates sync0 traffic, data packets and daemon CPU over measured windows."""

    def __init__(self, lab: Lab, pair: _Pair) -> None:
        self.lab, self.pair = lab, pair
        self.open: tuple[float, tuple[int, int, int, int], int, float, float] | None = None
        self.seconds = 0.0
        self.sync_bytes = self.sync_frames = self.packets = 0
        self.cpu_a = self.cpu_b = 0.0

    def _read(self) -> tuple[float, tuple[int, int, int, int], int, float, float]:
        dev = _net_dev(self.lab, "fw-a")
        s = dev["sync0"]
        data = dev["lan0"][1] + dev["wan0"][1]
        a, b = self.pair.pids()
        return time.monotonic(), s, data, _cpu_s(a), _cpu_s(b)

    def sync_bytes_now(self) -> int:
        s = _net_dev(self.lab, "fw-a")["sync0"]
        return s[0] + s[2]

    def start(self) -> None:
        self.open = self._read()

    def stop(self) -> None:
        if self.open is None:
            return
        t0, s0, d0, a0, b0 = self.open
        t1, s1, d1, a1, b1 = self._read()
        self.open = None
        self.seconds += t1 - t0
        self.sync_bytes += (s1[0] - s0[0]) + (s1[2] - s0[2])
        self.sync_frames += (s1[1] - s0[1]) + (s1[3] - s0[3])
        self.packets += d1 - d0
        self.cpu_a += max(0.0, a1 - a0)
        self.cpu_b += max(0.0, b1 - b0)


# ---------------------------------------------------------------------------- one scenario


@contextlib.contextmanager
def _lab(prefix: str | None) -> Iterator[Lab]:
    lab = Lab(prefix)
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


def run_scenario(
    spec: StudySpec,
    sc: LiveScenario,
    *,
    prefix: str | None = None,
    log: TextIO | None = None,
    run: int = 0,
) -> LiveResult:
    """Build a lab, run one scenario in it, take it down; the measurements."""
    live = spec.live or LiveSpec()
    res = LiveResult(sc)
    work = tempfile.mkdtemp(prefix="pmct-live-")
    try:
        with _lab(prefix) as lab:
            _run(lab, spec, live, sc, res, work, log, run)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return res


def _say(log: TextIO | None, msg: str) -> None:
    if log is not None:
        log.write(msg + "\n")
        log.flush()


def _run(
    lab: Lab,
    spec: StudySpec,
    live: LiveSpec,
    sc: LiveScenario,
    res: LiveResult,
    work: str,
    log: TextIO | None,
    run: int = 0,
) -> None:
    pair: _Pair = ConntrackdPair(lab, sc, live) if sc.strategy == "kernel+conntrackd" else (
        PmctPair(lab, sc, live))  # fmt: skip
    pair.start()
    if sc.miss_rate > 0:
        _start_misses(lab, spec, live, sc, run)
    if sc.sync_loss > 0:
        for fw in ("fw-a", "fw-b"):
            _nft(lab, fw, _loss_rule(sc.sync_loss, pair.sync_port()))
    traffic = Traffic(lab, live, work)
    meter = Meter(lab, pair)
    t0 = time.monotonic()

    def at(t: float) -> float:
        return t0 + t

    def sleep_until(t: float) -> None:
        time.sleep(max(0.0, at(t) - time.monotonic()))

    try:
        traffic.start(sc.failover_at + live.observe, lambda s: time.sleep(s))
        sleep_until(live.warmup)
        meter.start()
        tol = spec.metrics.recover_tolerance
        if sc.restart_at is not None:
            sleep_until(sc.restart_at)
            n, _, ag = agreement(pair.master_table(), pair.standby_table())
            res.restart_before = ag / n if n else 1.0
            meter.stop()
            resync0 = meter.sync_bytes_now()
            t_r = time.monotonic()
            pair.stop_standby()
            res.recovery.append((0.0, 0.0))
            time.sleep(max(0.0, t_r + spec.faults.restart_downtime - time.monotonic()))
            res.recovery.append((time.monotonic() - t_r, 0.0))
            pair.start_standby()
            end = at(sc.failover_at) - 0.5
            while time.monotonic() < end:
                m, s = pair.master_table(), pair.standby_table()
                n, _, ag = agreement(m, s)
                share = ag / n if n else 1.0
                dt = time.monotonic() - t_r
                res.recovery.append((round(dt, 3), share))
                if res.recover_s is None and share >= res.restart_before - tol:
                    res.recover_s = round(dt, 3)
                    res.recovered = 1
                    res.resync_bytes = meter.sync_bytes_now() - resync0
                    meter.start()
                time.sleep(spec.metrics.sample_interval)
            if res.recover_s is None:
                res.notes.append("agreement not recovered before the failover")
                meter.start()
        sleep_until(sc.failover_at)
        meter.stop()
        # the state both nodes hold at the failover
        m, s = pair.master_table(), pair.standby_table()
        res.master_entries, res.held, res.agreeing = agreement(m, s)
        res.mismatches = mismatches(m, s)
        bytes0 = traffic.curl_bytes()
        failed0 = traffic.curl_failed()
        res.diag.append(pair.diagnose("before"))
        if sc.miss_rate > 0:
            _stop_misses(lab, sc, res)
        t_fail, wall_fail = time.monotonic(), time.time()
        pair.kill_master()
        if sc.miss_rate > 0:
            lab.sh("fw-b", ["nft", "delete", "table", "netdev", MISS_TABLE], check=False)
        pair.take_over()
        res.takeover_s = round(time.monotonic() - t_fail, 3)
        half = t_fail + live.observe / 2
        time.sleep(max(0.0, half - time.monotonic()))
        bytes_half = traffic.curl_bytes()
        time.sleep(max(0.0, t_fail + live.observe - time.monotonic()))
        bytes_end = traffic.curl_bytes()
        res.diag.append(pair.diagnose("after"))
        failed = traffic.curl_failed()
        # sessions open at the failover: running downloads that had received data
        open_curls = [c for c in traffic.curls if c not in failed0 and bytes0[c] > 0]
        res.sessions = len(open_curls)
        for c in open_curls:
            ok = c not in failed and bytes_end[c] - bytes_half[c] >= live.survive_bytes
            res.survived += ok
            res.failed += c in failed
            if not ok:
                res.lost.append(
                    f"{c} ({'failed' if c in failed else 'silent'}: "
                    f"{bytes_half[c] - bytes0[c]} B in the first half, "
                    f"{bytes_end[c] - bytes_half[c]} B in the second)"
                )
        if traffic.t_iperf is not None and traffic.iperf_bytes(traffic.t_iperf, t_fail) > 0:
            res.sessions += 1
            got = traffic.iperf_bytes(half, t_fail + live.observe)
            if traffic.iperf_failed():
                res.failed += 1
                res.lost.append("iperf3 (error)")
            elif got >= live.survive_bytes:
                res.survived += 1
            else:
                res.lost.append(f"iperf3 (silent: {got} B in the second half)")
        res.outage_s, res.ping_lost = traffic.ping_outage(wall_fail - 1.0,
                                                          wall_fail + live.observe)  # fmt: skip
        if res.outage_s is not None:
            res.outage_s = round(res.outage_s, 3)
    finally:
        traffic.stop()
    res.seconds = meter.seconds
    res.data_packets = meter.packets
    res.sync_bytes, res.sync_frames = meter.sync_bytes, meter.sync_frames
    res.cpu_master_s, res.cpu_standby_s = meter.cpu_a, meter.cpu_b
    _say(log, f"{sc.label}: agreement {res.agreeing}/{res.master_entries}, survival "
              f"{res.survived}/{res.sessions}, outage {res.outage_s}")  # fmt: skip


# ---------------------------------------------------------------------------- the study


def _uptime() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def run_live(spec: StudySpec, *, progress: bool = True, stream: TextIO | None = None) -> LiveStudy:
    """Run every canonical scenario of ``spec`` at the live level, one fresh lab each."""
    check_host()
    t0 = time.monotonic()
    todo = live_scenarios(spec)
    bar = Progress(len(todo) * (spec.live or LiveSpec()).repeat, stream) if progress else None
    load0 = _uptime()
    live = spec.live or LiveSpec()
    runs: dict[LiveScenario, list[LiveResult]] = {sc: [] for sc in todo}
    # run k of every scenario before run k+1 of any: a slow phase of this shared machine
    # then spreads over the scenarios instead of hitting one of them
    for k in range(live.repeat):
        for sc in todo:
            try:
                res = run_scenario(spec, sc, run=k)
            except LabError as e:  # one retry: a lab step can time out on a loaded machine
                res = run_scenario(spec, sc, run=k)
                res.notes.append(f"second attempt (the first failed: {str(e)[:120]})")
            runs[sc].append(res)
            if bar is not None:
                bar.step(f"run {k + 1}/{live.repeat} {sc.label}")
    load = f"load average before {load0}, after {_uptime()}"
    results = {sc: pooled(rs) for sc, rs in runs.items()}
    return LiveStudy(spec, todo, results, time.monotonic() - t0, load, runs)
