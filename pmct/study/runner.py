"""Run a study: load the traffic, sweep the scenarios, show progress, collect the results.

Why the runner owns the clock: the simulation (strategies.py) is a pure function of traffic,
scenario and seed. CPU per packet is a property of this machine, not of the simulation, so
it is measured here and handed in as a callable; tests pass none and get bit-identical
results. The clock is ``time.perf_counter``: the run is single-threaded and never sleeps, so
elapsed time on one core is its CPU time, and a vDSO clock read costs ~50 ns where
``process_time`` (a system call) costs several times that per measured interval.

Each canonical scenario (Scenario.canonical) runs once; requested scenarios that differ only
in a fault the strategy cannot feel share its result.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from pmct.errors import ConfigError
from pmct.study.spec import StudySpec
from pmct.study.strategies import RunResult, Scenario, simulate
from pmct.study.traffic import Traffic, generate, load_pcap_dir

__all__ = ["Progress", "StudyResult", "load_traffic", "run_study", "scenarios"]


@dataclass(slots=True)
class StudyResult:
    spec: StudySpec
    traffic: Traffic
    requested: list[Scenario]
    runs: dict[Scenario, RunResult]  # by canonical scenario
    seconds: float  # wall time of the sweep

    def result(self, sc: Scenario) -> RunResult:
        return self.runs[sc.canonical()]


def scenarios(spec: StudySpec) -> list[Scenario]:
    """Every combination the study asks for, in a stable order."""
    f = spec.faults
    out: list[Scenario] = []
    for strategy, restart, q, model, p in itertools.product(
        spec.strategies, f.restart_at, f.sync_loss, f.miss_model, f.miss_rate
    ):
        out.append(Scenario(strategy, p, model, q, restart))
    return out


def load_traffic(spec: StudySpec) -> Traffic:
    tr = spec.traffic
    if tr.source == "pcap":
        assert tr.pcap_dir is not None
        traffic = load_pcap_dir(tr.pcap_dir)
    else:
        traffic = generate(tr.generate, spec.seed)
    if not len(traffic):
        raise ConfigError("traffic: no IP packets")
    return traffic


def _check_times(spec: StudySpec, traffic: Traffic) -> None:
    end = traffic.end
    for t in spec.faults.failover_at:
        if not traffic.start < t <= end:
            raise ConfigError(
                f"faults.failover_at: {t:g} s is outside the traffic "
                f"({traffic.start:g} .. {end:.1f} s)"
            )
    for r in spec.faults.restart_at:
        if r is not None and not traffic.start < r < end:
            raise ConfigError(
                f"faults.restart_at: {r:g} s is outside the traffic "
                f"({traffic.start:g} .. {end:.1f} s)"
            )


class Progress:
    """A plain progress bar on a terminal (``\\r``), one line per step otherwise."""

    def __init__(self, total: int, stream: TextIO | None = None, width: int = 30) -> None:
        self.total, self.n, self.width = total, 0, width
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.t0 = time.monotonic()

    def step(self, label: str) -> None:
        self.n += 1
        done = self.width * self.n // max(self.total, 1)
        bar = "#" * done + "." * (self.width - done)
        el = time.monotonic() - self.t0
        line = f"[{bar}] {self.n}/{self.total} {el:5.1f} s  {label}"
        if self.tty:
            self.stream.write("\r" + line[:120].ljust(120))
            if self.n == self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def run_study(
    spec: StudySpec,
    *,
    progress: bool = True,
    clock: Callable[[], float] | None = time.perf_counter,
    traffic: Traffic | None = None,
    stream: TextIO | None = None,
) -> StudyResult:
    """Sweep every canonical scenario of ``spec`` over the study's traffic."""
    t0 = time.monotonic()
    if traffic is None:
        traffic = load_traffic(spec)
    _check_times(spec, traffic)
    requested = scenarios(spec)
    todo = list(dict.fromkeys(sc.canonical() for sc in requested))
    bar = Progress(len(todo), stream) if progress else None
    runs: dict[Scenario, RunResult] = {}
    for sc in todo:
        runs[sc] = simulate(traffic, sc, spec, clock=clock)
        if bar is not None:
            bar.step(sc.label)
    return StudyResult(spec, traffic, requested, runs, time.monotonic() - t0)
