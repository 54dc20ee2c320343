"""Study output: one CSV row per (scenario, failover point), a markdown summary, PNG plots.

Why these three: the CSV is the complete record (every count, so any share can be
recomputed); the markdown summary is what docs/study.md quotes; the plots show the two
trade-offs at a glance (what a missed packet costs a wire-tracking standby, what a restart
costs each strategy). Shares pool the counts over failover points (sum of survivors / sum of
sessions), they are not means of ratios.

matplotlib is optional (``pip install pmct[study]``): without it the CSV and markdown are
still written and ``plots`` says why there are no PNGs. CPU columns are the only numbers
that vary between runs (they are this machine's CPU time); everything else is reproducible.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pmct.study.runner import StudyResult
from pmct.study.strategies import RunResult, Scenario

__all__ = ["COLUMNS", "plots", "rows", "summary_markdown", "write_all", "write_csv"]

COLUMNS = (
    "strategy", "miss_model", "miss_rate", "sync_loss", "restart_at", "failover_at",
    "standby_up", "master_entries", "held", "agreeing", "agreement", "open_sessions",
    "probed_sessions", "baseline_sessions", "survived_sessions", "survival",
    "sync_bytes_per_s", "sync_datagrams_per_s", "sync_bytes_to_standby", "sync_bytes_to_master",
    "sync_lost", "retransmitted", "walks", "standby_missed", "restart_before", "recover_s",
    "cpu_master_us_per_pkt", "cpu_standby_us_per_pkt", "cpu_sync_us_per_pkt",
)  # fmt: skip


def _r(x: float, nd: int = 4) -> float:
    return round(x, nd)


def _cpu(r: RunResult, who: str) -> float:
    return _r(r.cpu_s.get(who, 0.0) * 1e6 / r.packets, 3) if r.packets else 0.0


def rows(study: StudyResult) -> list[dict[str, Any]]:
    out = []
    for sc in study.requested:
        r = study.result(sc)
        for p in r.points:
            a, s = p.agreement, p.survival
            out.append({
                "strategy": sc.strategy,
                "miss_model": sc.miss_model,
                "miss_rate": sc.miss_rate,
                "sync_loss": sc.sync_loss,
                "restart_at": "" if sc.restart_at is None else sc.restart_at,
                "failover_at": p.at,
                "standby_up": int(p.standby_up),
                "master_entries": a.entries,
                "held": a.held,
                "agreeing": a.agree,
                "agreement": _r(a.share),
                "open_sessions": s.open,
                "probed_sessions": s.probed,
                "baseline_sessions": s.baseline,
                "survived_sessions": s.survived,
                "survival": _r(s.share),
                "sync_bytes_per_s": _r(r.per_second(sum(r.sync_bytes)), 1),
                "sync_datagrams_per_s": _r(r.per_second(sum(r.sync_datagrams)), 2),
                "sync_bytes_to_standby": r.sync_bytes[0],
                "sync_bytes_to_master": r.sync_bytes[1],
                "sync_lost": r.sync_lost,
                "retransmitted": r.sync_counters.get("retransmitted", 0),
                "walks": r.sync_counters.get("walks_started", 0),
                "standby_missed": r.standby_missed,
                "restart_before": "" if r.restart_before is None else _r(r.restart_before),
                "recover_s": "" if r.recover_s is None else _r(r.recover_s, 3),
                "cpu_master_us_per_pkt": _cpu(r, "master"),
                "cpu_standby_us_per_pkt": _cpu(r, "standby"),
                "cpu_sync_us_per_pkt": _cpu(r, "sync"),
            })  # fmt: skip
    return out


def write_csv(table: Iterable[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(table)


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _pooled(r: RunResult) -> tuple[int, int, int, int]:
    """(agreeing, entries, survived, baseline) summed over failover points."""
    ag = sum(p.agreement.agree for p in r.points)
    en = sum(p.agreement.entries for p in r.points)
    sv = sum(p.survival.survived for p in r.points)
    bl = sum(p.survival.baseline for p in r.points)
    return ag, en, sv, bl


def _unique(study: StudyResult, pred: Any) -> list[Scenario]:
    """Requested scenarios matching ``pred``, one per canonical run, in request order."""
    seen: set[Scenario] = set()
    out = []
    for sc in study.requested:
        c = sc.canonical()
        if pred(sc) and c not in seen:
            seen.add(c)
            out.append(c)
    return out


def summary_markdown(study: StudyResult, *, command: str = "") -> str:
    spec, tr = study.spec, study.traffic
    f = spec.faults
    lines = [f"# Study: {spec.name}", ""]
    if command:
        lines += ["Reproduce with:", "", "```", command, "```", ""]
    lines += [
        f"- traffic: {tr.description}; {len(tr)} packets, {tr.end - tr.start:.1f} s, "
        f"{len(tr.sessions)} TCP sessions",
        f"- failover at {', '.join(f'{t:g}' for t in f.failover_at)} s; session survival "
        f"judges the next {spec.metrics.probe_packets} packets of each open TCP session",
        f"- sync link: {1000 * spec.sync.link_delay:g} ms one way; bursty loss: mean burst "
        f"{f.burst_length:g} packets (Gilbert-Elliott); seed {spec.seed}",
        f"- {len(study.runs)} simulated runs in {study.seconds:.1f} s",
        "",
        "## Failover (no restart)",
        "",
        "Shares pool every failover point. Sync cost counts both directions (UDP payload "
        "bytes; add 28 bytes of IPv4/UDP header per datagram on the wire). CPU is µs per "
        "traffic packet on this machine (not reproducible to the digit).",
        "",
        "| strategy | standby misses p | sync loss q | state agreement | session survival "
        "| sync bytes/s | sync datagrams/s | CPU master | CPU standby | CPU sync |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in _unique(study, lambda s: s.restart_at is None):
        r = study.runs[c]
        ag, en, sv, bl = _pooled(r)
        p = (
            "—"
            if c.strategy in ("none", "replicate")
            else f"{100 * c.miss_rate:g} % ({c.miss_model})"
        )
        q = "—" if c.strategy in ("none", "concurrent") else f"{100 * c.sync_loss:g} %"
        lines.append(
            f"| {c.strategy} | {p} | {q} | {_pct(ag / en if en else 1.0)} | "
            f"{_pct(sv / bl if bl else 1.0)} ({sv}/{bl}) | {r.per_second(sum(r.sync_bytes)):.0f} | "
            f"{r.per_second(sum(r.sync_datagrams)):.1f} | {_cpu(r, 'master'):.1f} | "
            f"{_cpu(r, 'standby'):.1f} | {_cpu(r, 'sync'):.1f} |"
        )
    restarts = _unique(study, lambda s: s.restart_at is not None)
    if restarts:
        lines += [
            "",
            f"## Standby restart ({f.restart_downtime:g} s down, then an empty table)",
            "",
            f"Recovered: agreement back within {100 * spec.metrics.recover_tolerance:g} points "
            "of its value just before the restart, sampled every "
            f"{spec.metrics.sample_interval:g} s. Failover columns: the first failover point "
            "after the standby is back.",
            "",
            "| strategy | p | q | restart at | agreement before | recovered after | "
            "agreement at failover | survival at failover |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in restarts:
            r = study.runs[c]
            if c.restart_at is None:
                continue  # a cold standby has nothing to lose in a restart
            back = c.restart_at + f.restart_downtime
            pts = [p for p in r.points if p.at >= back]
            rec = "never (in the run)" if r.recover_s is None else f"{r.recover_s:g} s"
            before = "—" if r.restart_before is None else _pct(r.restart_before)
            pt = (
                f"{_pct(pts[0].agreement.share)} (at {pts[0].at:g} s) | "
                f"{_pct(pts[0].survival.share)} ({pts[0].survival.survived}/"
                f"{pts[0].survival.baseline})"
                if pts
                else "— | —"
            )
            p = "—" if c.strategy == "replicate" else f"{100 * c.miss_rate:g} % ({c.miss_model})"
            q = "—" if c.strategy == "concurrent" else f"{100 * c.sync_loss:g} %"
            lines.append(
                f"| {c.strategy} | {p} | {q} | {c.restart_at:g} s | {before} | {rec} | {pt} |"
            )
    lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------ plots

_COLORS = {
    "none": "#7f7f7f",
    "concurrent": "#1f77b4",
    "concurrent+resync": "#2ca02c",
    "replicate": "#d62728",
}


def plots(study: StudyResult, out: Path) -> list[Path]:
    """Write the PNGs; returns their paths. Raises ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = study.spec
    f = spec.faults
    q0 = f.sync_loss[0]
    r0 = None if None in f.restart_at else f.restart_at[0]  # plots 1-3: without a restart
    rates = list(f.miss_rate)
    written: list[Path] = []

    # 1 + 2: survival and agreement against the standby's miss rate
    for metric, fname, title in (
        ("survival", "survival_vs_miss.png", "Session survival at failover"),
        ("agreement", "agreement_vs_miss.png", "State agreement at failover"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for strategy in spec.strategies:
            for model in f.miss_model:
                ys = []
                for p in rates:
                    r = study.result(Scenario(strategy, p, model, q0, r0))
                    ag, en, sv, bl = _pooled(r)
                    ys.append(
                        100 * (sv / bl if bl else 1.0)
                        if metric == "survival"
                        else 100 * (ag / en if en else 1.0)
                    )
                style = "-" if model == "random" else "--"
                if strategy in ("none", "replicate") and model != f.miss_model[0]:
                    continue  # their standby does not see the wire: one line is enough
                label = strategy if strategy in ("none", "replicate") else f"{strategy} ({model})"
                ax.plot(
                    range(len(rates)), ys, style, marker="o", color=_COLORS[strategy], label=label
                )
        ax.set_xticks(range(len(rates)), [f"{100 * p:g} %" for p in rates])
        ax.set_xlabel("packets the standby misses (p)")
        ax.set_ylabel(f"{metric} (%)")
        ax.set_ylim(-3, 103)
        ax.set_title(f"{title} (sync loss q = {100 * q0:g} %)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
        fig.tight_layout()
        path = out / fname
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    # 3: sync cost against sync loss (p = 0, no restart)
    syncing = [s for s in spec.strategies if s in ("concurrent+resync", "replicate")]
    if syncing:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3.6))
        width = 0.8 / len(syncing)
        for k, strategy in enumerate(syncing):
            bs, ds = [], []
            for q in f.sync_loss:
                r = study.result(Scenario(strategy, rates[0], f.miss_model[0], q, r0))
                bs.append(r.per_second(sum(r.sync_bytes)))
                ds.append(r.per_second(sum(r.sync_datagrams)))
            xs = [i + k * width for i in range(len(f.sync_loss))]
            ax1.bar(xs, bs, width, color=_COLORS[strategy], label=strategy)
            ax2.bar(xs, ds, width, color=_COLORS[strategy], label=strategy)
        for ax, ylabel in ((ax1, "bytes/s"), (ax2, "datagrams/s")):
            ax.set_xticks(
                [i + width * (len(syncing) - 1) / 2 for i in range(len(f.sync_loss))],
                [f"{100 * q:g} %" for q in f.sync_loss],
            )
            ax.set_xlabel("sync datagrams lost (q)")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3, axis="y")
        ax1.legend(fontsize=8)
        fig.suptitle("Sync link cost (both directions)")
        fig.tight_layout()
        path = out / "sync_cost.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    # 4: agreement after a restart, over time
    restarts = [r for r in f.restart_at if r is not None]
    if restarts:
        t_r = restarts[0]
        p1 = next((p for p in rates if p > 0), rates[0])
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for strategy in spec.strategies:
            if strategy == "none":
                continue
            r = study.result(Scenario(strategy, p1, f.miss_model[0], q0, t_r))
            if not r.recovery:
                continue
            ax.step(
                [dt for dt, _ in r.recovery],
                [100 * share for _, share in r.recovery],
                where="post",
                color=_COLORS[strategy],
                label=strategy,
            )
        ax.axvspan(0, f.restart_downtime, color="#cccccc", alpha=0.5, label="standby down")
        ax.set_xlabel(f"seconds after the standby's restart at {t_r:g} s")
        ax.set_ylabel("state agreement (%)")
        ax.set_ylim(-3, 103)
        ax.set_title(
            f"Recovery after a restart (p = {100 * p1:g} % {f.miss_model[0]}, q = {100 * q0:g} %)"
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        path = out / "recovery.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def write_all(study: StudyResult, out: Path, *, command: str = "") -> tuple[list[Path], str | None]:
    """CSV, recovery CSV, markdown and plots into ``out``; (paths, why there are no plots)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.csv", out / "recovery.csv", out / "summary.md"]
    write_csv(rows(study), paths[0])
    with open(paths[1], "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(
            [
                "strategy",
                "miss_model",
                "miss_rate",
                "sync_loss",
                "restart_at",
                "seconds_after_restart",
                "agreement",
            ]
        )
        for c, r in study.runs.items():
            for dt, share in r.recovery:
                w.writerow(
                    [
                        c.strategy,
                        c.miss_model,
                        c.miss_rate,
                        c.sync_loss,
                        c.restart_at,
                        _r(dt, 3),
                        _r(share),
                    ]
                )
    paths[2].write_text(summary_markdown(study, command=command))
    try:
        paths += plots(study, out)
    except ImportError:
        return paths, "matplotlib is not installed (pip install 'pmct[study]'): no PNG plots"
    return paths, None
