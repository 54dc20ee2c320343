"""Output of the live level: a CSV row per scenario, the recovery curves, markdown, PNGs.

Same shape as report.py (the simulation's), different columns: the live level measures
sessions the network kept (not verdicts on copies), a ping outage, frames on the real sync
link and the daemons' CPU time. Nothing here is deterministic: every number is one run on
this machine, so the markdown prints the load average next to the tables.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from pmct.study.live import LiveResult, LiveScenario, LiveStudy

__all__ = ["COLUMNS", "live_plots", "live_rows", "live_summary", "write_live"]

COLUMNS = (
    "run", "strategy", "miss_rate", "sync_loss", "restart_at", "failover_at",
    "master_entries", "held", "agreeing", "agreement", "sessions", "survived", "failed",
    "survival", "outage_s", "ping_lost", "takeover_s", "measured_s", "data_packets",
    "packets_per_s", "sync_bytes_per_s", "sync_frames_per_s", "resync_bytes",
    "cpu_master_us_per_pkt", "cpu_standby_us_per_pkt", "restart_before", "recover_s", "notes",
    "lost_sessions", "mismatch_sample", "standby_diag", "miss_model", "miss_seen",
    "miss_dropped", "miss_measured", "bursts", "burst_s",
)  # fmt: skip

_COLORS = {
    "none": "#7f7f7f",
    "concurrent": "#1f77b4",
    "concurrent+resync": "#2ca02c",
    "replicate": "#d62728",
    "kernel+conntrackd": "#9467bd",
}


def _opt(x: float | None, nd: int = 3) -> Any:
    return "" if x is None else round(x, nd)


def live_rows(study: LiveStudy) -> list[dict[str, Any]]:
    """One row per run (the complete record; the summary pools them)."""
    out = []
    for sc in study.scenarios:
        for i, r in enumerate(study.runs.get(sc) or [study.results[sc]], 1):
            out.append(_row(sc, r, i))
    return out


def _row(sc: LiveScenario, r: LiveResult, run: int) -> dict[str, Any]:
    return {
            "run": run,
            "strategy": sc.strategy,
            "miss_rate": sc.miss_rate,
            "sync_loss": sc.sync_loss,
            "restart_at": "" if sc.restart_at is None else sc.restart_at,
            "failover_at": sc.failover_at,
            "master_entries": r.master_entries,
            "held": r.held,
            "agreeing": r.agreeing,
            "agreement": round(r.agreement, 4),
            "sessions": r.sessions,
            "survived": r.survived,
            "failed": r.failed,
            "survival": round(r.survival, 4),
            "outage_s": _opt(r.outage_s),
            "ping_lost": r.ping_lost,
            "takeover_s": r.takeover_s,
            "measured_s": round(r.seconds, 2),
            "data_packets": r.data_packets,
            "packets_per_s": round(r.per_s(r.data_packets), 1),
            "sync_bytes_per_s": round(r.per_s(r.sync_bytes), 1),
            "sync_frames_per_s": round(r.per_s(r.sync_frames), 2),
            "resync_bytes": r.resync_bytes,
            "cpu_master_us_per_pkt": round(r.us_per_packet(r.cpu_master_s), 1),
            "cpu_standby_us_per_pkt": round(r.us_per_packet(r.cpu_standby_s), 1),
            "restart_before": _opt(r.restart_before, 4),
            "recover_s": _opt(r.recover_s),
            "notes": "; ".join(r.notes),
            "lost_sessions": "; ".join(r.lost),
            "mismatch_sample": "; ".join(r.mismatches),
            "standby_diag": "; ".join(d for d in r.diag if d),
            "miss_model": sc.miss_model,
            "miss_seen": r.miss_seen,
            "miss_dropped": r.miss_dropped,
            "miss_measured": _opt(r.miss_measured, 4),
            "bursts": r.bursts,
            "burst_s": r.burst_s,
    }  # fmt: skip


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _p(x: float) -> str:
    return f"{100 * x:g} %"


def _fault_p(sc: LiveScenario, r: LiveResult | None = None) -> str:
    """p, its model when bursty, and the share the nft counters saw dropped."""
    if sc.strategy in ("none", "replicate", "kernel+conntrackd"):
        return "—"
    out = _p(sc.miss_rate) + (" bursty" if sc.miss_model == "bursty" else "")
    m = None if r is None else r.miss_measured
    return out if m is None else f"{out} ({100 * m:.1f} % measured)"


def _fault_q(sc: LiveScenario) -> str:
    return "—" if sc.strategy in ("none", "concurrent") else _p(sc.sync_loss)


def _runs(study: LiveStudy) -> str:
    n = {len(rs) for rs in study.runs.values()} or {1}
    k = max(n)
    return "1 run" if k == 1 else f"{k} runs"


def live_summary(study: LiveStudy, *, command: str = "") -> str:
    spec, live = study.spec, study.spec.live
    lines = [f"# Live study `{spec.name}`", ""]
    if command:
        lines += ["Reproduce with:", "", "```", command, "```", ""]
    if live is not None:
        lines += [
            f"Traffic: {live.flows} paced HTTP downloads of {live.flow_rate} bytes/s "
            f"(curl), one iperf3 stream at {live.iperf_mbit:g} Mbit/s (-R), "
            f"{live.short_rate:g} short HTTP requests/s, ping every {live.ping_interval:g} s; "
            f"warm-up {live.warmup:g} s, {live.observe:g} s observed after the failover.",
            "",
        ]
    lines += [
        f"{len(study.scenarios)} scenarios, {_runs(study)} each, in {study.seconds:.0f} s; "
        f"{study.load}. Counts are pooled over the runs (results.csv has every run); "
        "outage and take-over: median.",
        "",
        "## Failover",
        "",
        "| strategy | standby misses p | sync loss q | restart | state agreement | "
        "session survival | ping outage | sync bytes/s | sync frames/s | "
        "CPU µs/pkt master | CPU µs/pkt standby |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for sc in study.scenarios:
        r = study.results[sc]
        restart = "—" if sc.restart_at is None else f"at {sc.restart_at:g} s"
        outage = "—" if r.outage_s is None else f"{r.outage_s:.2f} s"
        lines.append(
            f"| {sc.strategy} | {_fault_p(sc, r)} | {_fault_q(sc)} | {restart} | "
            f"{_pct(r.agreement)} ({r.agreeing}/{r.master_entries}) | "
            f"{_pct(r.survival)} ({r.survived}/{r.sessions}) | {outage} | "
            f"{r.per_s(r.sync_bytes):.0f} | {r.per_s(r.sync_frames):.1f} | "
            f"{r.us_per_packet(r.cpu_master_s):.1f} | {r.us_per_packet(r.cpu_standby_s):.1f} |"
        )
    restarts = [sc for sc in study.scenarios if sc.restart_at is not None]
    if restarts:
        lines += [
            "",
            "## Standby restart",
            "",
            "| strategy | p | q | agreement before | recovered after | resync bytes | "
            "agreement at failover | survival at failover |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for sc in restarts:
            r = study.results[sc]
            before = "—" if r.restart_before is None else _pct(r.restart_before)
            if r.recover_s is not None:
                rec = f"{r.recover_s:.2f} s" + (" (median)" if r.runs > 1 else "")
            elif r.recovered:
                rec = f"in {r.recovered} of {r.runs} runs only"
            else:
                rec = "not before the failover"
            lines.append(
                f"| {sc.strategy} | {_fault_p(sc)} | {_fault_q(sc)} | {before} | {rec} | "
                f"{r.resync_bytes} | {_pct(r.agreement)} | "
                f"{_pct(r.survival)} ({r.survived}/{r.sessions}) |"
            )
    notes = [
        f"- {sc.label}: {'; '.join(study.results[sc].notes)}"
        for sc in study.scenarios
        if study.results[sc].notes
    ]
    if notes:
        lines += ["", "Notes:", "", *notes]
    return "\n".join(lines) + "\n"


def live_plots(study: LiveStudy, out: Path) -> list[Path]:
    """survival/agreement bars, sync cost bars, recovery curves. ImportError without
    matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    plain = [sc for sc in study.scenarios if sc.restart_at is None]

    def name(sc: LiveScenario) -> str:
        parts = [sc.strategy]
        if _fault_p(sc) != "—":
            parts.append(f"p={_p(sc.miss_rate)}" + (" b" if sc.miss_model == "bursty" else ""))
        if _fault_q(sc) != "—":
            parts.append(f"q={_p(sc.sync_loss)}")
        return "\n".join(parts)

    if plain:
        fig, ax = plt.subplots(figsize=(max(7, 0.9 * len(plain)), 4.4))
        xs = range(len(plain))
        w = 0.4
        ag = [100 * study.results[sc].agreement for sc in plain]
        sv = [100 * study.results[sc].survival for sc in plain]
        cols = [_COLORS.get(sc.strategy, "#333333") for sc in plain]
        ax.bar([x - w / 2 for x in xs], ag, w, color=cols, alpha=0.45, label="state agreement")
        ax.bar([x + w / 2 for x in xs], sv, w, color=cols, label="session survival")
        ax.set_xticks(
            list(xs), [name(sc).replace("\n", " ") for sc in plain], fontsize=7, rotation=35,
            ha="right",
        )  # fmt: skip
        ax.set_ylabel("%")
        ax.set_ylim(0, 105)
        ax.set_title("Live failover: agreement (light) and session survival (dark)")
        ax.grid(alpha=0.3, axis="y")
        fig.tight_layout()
        path = out / "survival_agreement.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

        syncing = [sc for sc in plain if sc.strategy not in ("none", "concurrent")]
        if syncing:
            fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8, 1.2 * len(syncing)), 3.8))
            xs = range(len(syncing))
            cols = [_COLORS.get(sc.strategy, "#333333") for sc in syncing]
            rs = [study.results[sc] for sc in syncing]
            ax1.bar(list(xs), [r.per_s(r.sync_bytes) for r in rs], color=cols)
            ax2.bar(
                list(xs), [r.us_per_packet(r.cpu_master_s + r.cpu_standby_s) for r in rs],
                color=cols,
            )  # fmt: skip
            for ax, yl in ((ax1, "sync bytes/s (frames, both ways)"),
                           (ax2, "daemon CPU µs per packet (both nodes)")):  # fmt: skip
                ax.set_xticks(
                    list(xs), [name(sc).replace("\n", " ") for sc in syncing], fontsize=6,
                    rotation=35, ha="right",
                )  # fmt: skip
                ax.set_ylabel(yl, fontsize=8)
                ax.grid(alpha=0.3, axis="y")
            fig.suptitle("Live sync cost")
            fig.tight_layout()
            path = out / "sync_cost.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)

    restarts = [sc for sc in study.scenarios if sc.restart_at is not None and
                study.results[sc].recovery]  # fmt: skip
    if restarts:
        fig, ax = plt.subplots(figsize=(7.5, 4.4))
        styles = ["-", "--", ":", "-."]
        seen: dict[str, int] = {}
        for sc in restarts:
            r = study.results[sc]
            k = seen.get(sc.strategy, 0)
            seen[sc.strategy] = k + 1
            ax.step(
                [t for t, _ in r.recovery],
                [100 * s for _, s in r.recovery],
                styles[k % len(styles)],
                where="post",
                color=_COLORS.get(sc.strategy, "#333333"),
                label=name(sc).replace("\n", " "),
            )
        down = study.spec.faults.restart_downtime
        ax.axvspan(0, down, color="#cccccc", alpha=0.5, label="standby down")
        ax.set_xlabel("seconds after the standby's restart")
        ax.set_ylabel("state agreement (%)")
        ax.set_ylim(-3, 103)
        ax.set_title("Live: agreement after a standby restart")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="lower right")
        fig.tight_layout()
        path = out / "recovery.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def write_live(study: LiveStudy, out: Path, *, command: str = "") -> tuple[list[Path], str | None]:
    """results.csv, recovery.csv, summary.md and the PNGs; (paths, why there are no plots)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.csv", out / "recovery.csv", out / "summary.md"]
    with open(paths[0], "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(live_rows(study))
    with open(paths[1], "w", newline="") as fh:
        cw = csv.writer(fh, lineterminator="\n")
        cw.writerow(["strategy", "miss_rate", "sync_loss", "restart_at", "seconds", "agreement"])
        for sc in study.scenarios:
            r: LiveResult = study.results[sc]
            for t, share in r.recovery:
                cw.writerow([sc.strategy, sc.miss_rate, sc.sync_loss, sc.restart_at,
                             round(t, 3), round(share, 4)])  # fmt: skip
    paths[2].write_text(live_summary(study, command=command))
    try:
        paths += live_plots(study, out)
    except ImportError:
        return paths, "no plots: matplotlib is not installed (pip install 'pmct[study]')"
    return paths, None
