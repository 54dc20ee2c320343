"""Fidelity: pmct's verdicts against the real Linux nf_conntrack, packet by packet.

For each capture, the kernel oracle (shared/tools/kernel_oracle.py, run as root) replays the
packets through nf_conntrack in network namespaces and writes one TSV row per IP packet;
pmct.replay does the same with pmct's engine. This module runs both, lines the rows up by frame
index and writes a markdown report (docs/fidelity.md).

Rules:
1. Primary columns are ctstate, dir and l4state: the verdict a ruleset acts on. A packet
   agrees when all three are equal. timeout and status are secondary: reported as their own
   percentages over the packets whose primary columns agree, never folded into the headline.
2. The reference is the oracle in **bridge** mode: the firewall namespace bridges the two veths
   with br_netfilter, so every packet is forwarded and every new entry confirmed, as on a
   firewall that tracks everything it sees (pmct's position on the wire). In routed mode the
   kernel's routing drops some packets after PREROUTING (multicast, link-local sources,
   0.0.0.0/8) and their entries are never confirmed: that measures Linux routing as much as
   conntrack. ``--mode routed`` compares against it anyway.
3. The oracle replays as fast as possible, so no timeout ever fires there. pmct is therefore
   fed the ``paced`` clock by default (first timestamp + idx / 10,000 s, the oracle's own pace);
   with capture timestamps entries can expire in pmct that the oracle keeps. The report also
   gives the capture-clock agreement, to show how much of a difference is timing.
4. Oracle results are cached by trace content (sha256) + mode + helper, under
   $PMCT_ORACLE_CACHE (default ~/.cache/pmct/oracle), so reruns need neither root nor time;
   a result already computed under /tmp/oracle/<mode>/ is taken as a seed once its header
   (trace name, mode, helper) and frame count match the trace.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import dpkt

from pmct import __version__
from pmct.conntrack.settings import Settings, Timeouts
from pmct.replay import Frame, Row, iter_frames, replay_capture
from pmct.wire.link import ip_from_frame

__all__ = [
    "MODES",
    "OracleRun",
    "TraceResult",
    "compare",
    "default_traces",
    "find_kernel_oracle",
    "oracle_tsv",
    "packet_summary",
    "parse_oracle_tsv",
    "render_report",
    "run_fidelity",
    "shared_dirs",
    "timeout_agrees",
    "trace_result",
]

MODES: Final = ("bridge", "routed")
PRIMARY: Final = ("ctstate", "dir", "l4state")
SEED_ROOT: Final = Path("/tmp/oracle")
REPO_ROOT: Final = Path(__file__).resolve().parents[1]
WORKPLACE_SHARED: Final = Path("/work/shared")
TRACE_SUFFIXES: Final = (".pcap", ".pcapng", ".pcap.gz", ".pcapng.gz")


# ---------------------------------------------------------------------------------- locating


def shared_dirs() -> list[Path]:
    """Where the project's shared/ folder may be: beside the repository (the layout of the
    work tree and of CI's clone), else the workplace's own copy (a clone made elsewhere)."""
    return [REPO_ROOT.parent / "shared", WORKPLACE_SHARED]


def find_kernel_oracle() -> Path | None:
    """$PMCT_KERNEL_ORACLE, else tools/kernel_oracle.py in the first shared/ that has it."""
    env = os.environ.get("PMCT_KERNEL_ORACLE")
    candidates = [Path(env)] if env else []
    candidates += [d / "tools" / "kernel_oracle.py" for d in shared_dirs()]
    for c in candidates:
        if c.is_file():
            return c
    return None


def default_traces() -> list[Path]:
    """Every capture in $PMCT_TRACES, else in the first shared/traces/ that exists."""
    env = os.environ.get("PMCT_TRACES")
    dirs = [Path(env)] if env else [d / "traces" for d in shared_dirs()]
    for d in dirs:
        if d.is_dir():
            return sorted(p for p in d.iterdir() if p.name.endswith(TRACE_SUFFIXES))
    return []


def cache_root() -> Path:
    env = os.environ.get("PMCT_ORACLE_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "pmct" / "oracle"


def trace_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------- oracle


@dataclass(slots=True)
class OracleRun:
    """A parsed oracle TSV."""

    rows: dict[int, Row]
    trace: str = ""
    kernel: str = ""
    mode: str = ""
    frames: int = -1
    ct_lines: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def parse_oracle_tsv(text: str) -> OracleRun:
    """Read kernel_oracle.py output (its README, "Output"): rows keyed by frame index."""
    run = OracleRun(rows={})
    cols = ["idx", "ctstate", "dir", "l4state", "timeout", "status", "reached", "ct_id", "note"]
    for line in text.splitlines():
        if line.startswith("#"):
            body = line[1:].strip()
            key, _, value = body.partition(":")
            if key == "columns":
                cols = value.strip().split("\t")
            elif key == "trace":
                run.trace = value.strip()
            elif key == "kernel":
                run.kernel = value.strip()
            elif key == "mode":
                run.mode = value.strip()
            elif key == "ct":
                run.ct_lines.append(value.strip())
            elif key == "ERROR":
                run.errors.append(value.strip())
            elif body.startswith("frames="):
                run.frames = int(body.split()[0].removeprefix("frames="))
            continue
        if not line.strip():
            continue
        f = dict(zip(cols, line.split("\t"), strict=False))
        idx = int(f["idx"])
        run.rows[idx] = Row(
            idx,
            f.get("ctstate", "-"),
            f.get("dir", "-"),
            f.get("l4state", "-"),
            f.get("timeout", "-"),
            f.get("status", "-"),
            f.get("note", "-"),
        )
    return run


def _mode_matches(run: OracleRun, mode: str, ftp_helper: bool) -> bool:
    bridged = run.mode.startswith("bridge")
    return bridged == (mode == "bridge") and ("ftp-helper" in run.mode) == ftp_helper


def _seed_dirs(mode: str, ftp_helper: bool) -> list[Path]:
    if ftp_helper:
        return [SEED_ROOT / "ftp"]
    return [SEED_ROOT / mode]


def count_frames(trace: Path) -> int:
    return sum(1 for _ in iter_frames(trace))


def oracle_tsv(
    trace: Path,
    mode: str = "bridge",
    *,
    ftp_helper: bool = False,
    cache: Path | None = None,
    seed: bool = True,
    realtime: int = 0,
) -> Path:
    """Path of the oracle's TSV for ``trace``: from the cache, a checked seed, or a fresh run.

    ``seed=False`` skips /tmp/oracle/, so with an empty ``cache`` the kernel really runs.
    ``realtime=K`` runs the oracle with ``--realtime --speedup K``: packets paced by their
    capture timestamps (K times faster, every conntrack timeout divided by K), so entries
    expire in the kernel as they did on the wire.

    Raises:
        RuntimeError: the oracle must run but cannot (not root, script missing) or failed.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    cache = cache or cache_root()
    rt = f"-rt{realtime}" if realtime else ""
    name = f"{trace_digest(trace)[:24]}-{mode}{'-ftp' if ftp_helper else ''}{rt}.tsv"
    out = cache / name
    if out.is_file():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    for d in _seed_dirs(mode, ftp_helper) if seed and not realtime else []:
        seed = d / f"{trace.name}.tsv"
        if seed.is_file():
            run = parse_oracle_tsv(seed.read_text())
            if (
                run.trace == trace.name
                and _mode_matches(run, mode, ftp_helper)
                and not run.errors
                and run.frames == count_frames(trace)
            ):
                shutil.copyfile(seed, out)
                return out
    oracle = find_kernel_oracle()
    if oracle is None:
        raise RuntimeError(
            "kernel oracle not found: set PMCT_KERNEL_ORACLE or keep shared/tools/ beside the repo"
        )
    if os.geteuid() != 0:
        raise RuntimeError(f"no cached oracle result for {trace.name}; the oracle needs root")
    cmd = [sys.executable, str(oracle), str(trace), "--out"]
    with tempfile.NamedTemporaryFile(dir=cache, suffix=".part", delete=False) as tmp:
        part = Path(tmp.name)
    cmd.append(str(part))
    if mode == "bridge":
        cmd.append("--bridge")
    if ftp_helper:
        cmd.append("--ftp-helper")
    if realtime:
        cmd += ["--realtime", "--speedup", str(realtime)]
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        part.unlink(missing_ok=True)
        raise RuntimeError(
            f"kernel oracle failed on {trace.name} (exit {proc.returncode}): "
            f"{proc.stderr.strip()[-2000:]}"
        )
    part.replace(out)
    return out


# ---------------------------------------------------------------------------------- comparing


@dataclass(slots=True)
class TraceResult:
    """One trace's comparison."""

    trace: str
    packets: int = 0
    agree: int = 0
    timeout_agree: int = 0
    status_agree: int = 0
    capture_agree: int | None = None
    kernel: str = ""
    # (idx, kernel row or None, pmct row or None), in capture order
    diffs: list[tuple[int, Row | None, Row | None]] = field(default_factory=list)
    secondary: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    summaries: dict[int, str] = field(default_factory=dict)


def _primary(r: Row | None) -> tuple[str, str, str] | None:
    return None if r is None else (r.ctstate, r.dir, r.l4state)


def timeout_agrees(kernel: str, pmct: str) -> bool:
    """Equal, or both numbers at most 1 s apart.

    The oracle reads the entry a moment after the packet, ctnetlink rounds the remaining time
    down and the oracle then bumps "configured value - 1" back up; pmct's clock moves on by the
    paced 0.1 ms per frame. Neither side's rounding is a conntrack difference; a wrong timeout
    (300 for 432000, 30 for 120) is far more than a second off.
    """
    if kernel == pmct:
        return True
    if kernel.isdigit() and pmct.isdigit():
        return abs(int(kernel) - int(pmct)) <= 1
    return False


def compare(kernel: dict[int, Row], pmct: Iterable[Row], trace: str = "") -> TraceResult:
    """Line up rows by idx and count agreement (module docstring, rule 1)."""
    mine = {r.idx: r for r in pmct}
    res = TraceResult(trace)
    for idx in sorted(kernel.keys() | mine.keys()):
        k, p = kernel.get(idx), mine.get(idx)
        res.packets += 1
        if k is None or p is None or _primary(k) != _primary(p):
            res.diffs.append((idx, k, p))
            continue
        res.agree += 1
        if timeout_agrees(k.timeout, p.timeout):
            res.timeout_agree += 1
        else:
            res.secondary[("timeout", k.timeout, p.timeout)] += 1
        if k.status == p.status:
            res.status_agree += 1
        else:
            res.secondary[("status", k.status, p.status)] += 1
    return res


def _count_agree(kernel: dict[int, Row], pmct: Iterable[Row]) -> int:
    mine = {r.idx: r for r in pmct}
    return sum(1 for i, k in kernel.items() if _primary(k) == _primary(mine.get(i)))


_TCP_FLAGS: Final = (
    (0x02, "S"),
    (0x01, "F"),
    (0x04, "R"),
    (0x08, "P"),
    (0x20, "U"),
    (0x10, "."),
    (0x40, "E"),
    (0x80, "W"),
)


def packet_summary(frame: Frame) -> str:
    """A tcpdump-like one-liner for the report; never raises on odd packets."""
    ip = ip_from_frame(frame.data, frame.linktype)
    if ip is None:
        return "no IP datagram"
    try:
        return _ip_summary(ip)
    except (dpkt.UnpackError, ValueError, IndexError, OSError, AttributeError):
        return f"IPv{ip[0] >> 4} len={len(ip)} (unparsable)"


def _ip_summary(data: bytes) -> str:
    if data[0] >> 4 == 4:
        pkt: dpkt.ip.IP | dpkt.ip6.IP6 = dpkt.ip.IP(data)
        fam = socket.AF_INET
        src, dst = socket.inet_ntop(fam, pkt.src), socket.inet_ntop(fam, pkt.dst)
        if pkt.mf or pkt.offset:
            return (
                f"IPv4 frag {src} > {dst} proto={pkt.p} id={pkt.id} "
                f"off={pkt.offset}{' MF' if pkt.mf else ''}"
            )
        proto, l4 = pkt.p, pkt.data
    else:
        pkt = dpkt.ip6.IP6(data)
        fam = socket.AF_INET6
        src, dst = socket.inet_ntop(fam, pkt.src), socket.inet_ntop(fam, pkt.dst)
        proto, l4 = pkt.p, pkt.data
        if 44 in pkt.extension_hdrs and pkt.extension_hdrs[44] is not None:
            return f"IPv6 frag {src} > {dst} next={proto}"
    if isinstance(l4, dpkt.tcp.TCP):
        flags = "".join(c for bit, c in _TCP_FLAGS if l4.flags & bit) or "none"
        return (
            f"TCP {src}.{l4.sport} > {dst}.{l4.dport} [{flags}] seq={l4.seq} ack={l4.ack} "
            f"win={l4.win} len={len(l4.data)}"
        )
    if isinstance(l4, dpkt.udp.UDP):
        return f"UDP {src}.{l4.sport} > {dst}.{l4.dport} len={len(l4.data)}"
    if isinstance(l4, (dpkt.icmp.ICMP, dpkt.icmp6.ICMP6)):
        name = "ICMP" if fam == socket.AF_INET else "ICMPv6"
        return f"{name} {src} > {dst} type={l4.type} code={l4.code}"
    return f"proto {proto} {src} > {dst} len={len(data)}"


def trace_result(
    trace: Path,
    mode: str = "bridge",
    *,
    ftp_helper: bool = False,
    clock: str = "paced",
    cache: Path | None = None,
    capture_clock_too: bool = True,
    realtime: int = 0,
) -> TraceResult:
    """Run (or fetch) the oracle and pmct on one trace and compare them.

    With ``realtime=K`` the kernel replays at capture pace (K times faster, timeouts divided
    by K) and pmct is fed the capture clock. One kernel delay is not scaled by the oracle:
    UDP's 2 s "stream" rule (nf_conntrack_proto_udp.c stream_ts), so pmct's is set to 2*K s of
    capture time to match what the kernel experienced.
    """
    oracle = oracle_tsv(trace, mode, ftp_helper=ftp_helper, cache=cache, realtime=realtime)
    run = parse_oracle_tsv(oracle.read_text())
    settings = None
    if realtime:
        clock = "capture"
        capture_clock_too = False
        settings = Settings(timeouts=Timeouts(udp_stream_after=2.0 * realtime))
    rep = replay_capture(trace, ftp_helper=ftp_helper, clock=clock, settings=settings)
    res = compare(run.rows, rep.rows, trace.name)
    res.kernel = run.kernel
    if capture_clock_too and clock != "capture":
        cap = replay_capture(trace, ftp_helper=ftp_helper, clock="capture")
        res.capture_agree = _count_agree(run.rows, cap.rows)
    wanted = {idx for idx, _, _ in res.diffs}
    if wanted:
        for frame in iter_frames(trace):
            if frame.idx in wanted:
                res.summaries[frame.idx] = packet_summary(frame)
    return res


# ---------------------------------------------------------------------------------- report


def _pct(n: int, d: int) -> str:
    return "n/a" if d == 0 else f"{100.0 * n / d:.2f} %"


def _row_text(r: Row | None) -> str:
    if r is None:
        return "(no row)"
    text = f"{r.ctstate} {r.dir} {r.l4state} {r.timeout} {r.status}"
    if r.note != "-":
        text += f" `{r.note}`"
    return text


def _primary_text(r: Row | None) -> str:
    return "(no row)" if r is None else f"{r.ctstate} {r.dir} {r.l4state}"


def _md(s: str) -> str:
    return s.replace("|", "\\|")


def render_report(
    results: Sequence[TraceResult],
    *,
    mode: str,
    clock: str,
    ftp_helper: bool,
    max_listed: int = 200,
    command: str = "pmct fidelity",
    realtime: int = 0,
) -> str:
    """The markdown report (docs/fidelity.md)."""
    total = sum(r.packets for r in results)
    agree = sum(r.agree for r in results)
    t_ok = sum(r.timeout_agree for r in results)
    s_ok = sum(r.status_agree for r in results)
    kernels = sorted({r.kernel for r in results if r.kernel})
    cap_total = sum(r.capture_agree or 0 for r in results)
    has_cap = any(r.capture_agree is not None for r in results)
    out: list[str] = []
    w = out.append
    w("# Fidelity: pmct against Linux nf_conntrack")
    w("")
    w(f"Generated by `{command}` (pmct {__version__}). Do not edit by hand: rerun the command.")
    w("")
    w(
        f"**Overall: {agree} of {total} packets agree on ctstate, dir and l4state "
        f"({_pct(agree, total)}).**"
    )
    w("")
    w("## Method")
    w("")
    w(
        f"* Reference: the real kernel ({', '.join(kernels) or 'unknown release'}) through "
        f"`shared/tools/kernel_oracle.py` in **{mode}** mode"
        f"{', FTP helper on (both sides)' if ftp_helper else ''}."
    )
    if mode == "bridge":
        w(
            "  Bridge mode is the reference because there every packet is forwarded and every new "
            "entry confirmed, as on a firewall that tracks everything it sees, which is where pmct "
            "sits. In routed mode Linux routing drops some packets after PREROUTING (multicast to "
            "unjoined groups, link-local or 0.0.0.0/8 sources) and never confirms their entries: "
            "that measures the router as much as conntrack (`--mode routed` compares against it)."
        )
    else:
        w(
            "  Routed mode: packets a Linux router refuses after PREROUTING get their verdict but "
            "their entry is never confirmed; pmct confirms every accepted entry, so such packets "
            "can differ (bridge mode is the reference for pmct)."
        )
    w(
        "* Each packet is one row per IP frame, matched by frame index. A packet **agrees** when "
        "ctstate, dir and l4state are all equal. Secondary columns (timeout, status) are compared "
        "only on agreeing packets and reported separately; timeouts agree within 1 s (rounding "
        "of the entry read; see `timeout_agrees`)."
    )
    if realtime:
        w(
            f"* Clock: the oracle runs in **real time** (`--realtime --speedup {realtime}`): "
            f"packets are paced by their capture timestamps, {realtime} times faster, with every "
            "conntrack timeout divided by the same factor, so entries expire in the kernel as "
            "they did on the wire. pmct is fed the capture timestamps with the kernel's "
            "timeouts. The one kernel delay the oracle cannot scale, UDP's 2 s stream rule, is "
            f"set to {2 * realtime} s of capture time in pmct to match."
        )
    else:
        w(
            f"* Clock: pmct is fed the **{clock}** clock. The oracle replays as fast as possible, "
            "so no timeout fires there; `paced` gives pmct the same condition (first timestamp "
            "+ frame index / 10,000 s). The `capture clock` column feeds the capture's own "
            "timestamps instead: a lower figure there means entries that expire on the real "
            "wire's timing (`--realtime K` compares that case against a kernel that expires "
            "entries too)."
        )
    w(
        "* Timeouts: the oracle reads the entry right after the packet (rounded down); for "
        "packets that do not refresh their entry it shows the time left on the earlier one."
    )
    w("")
    w("## Per trace")
    w("")
    head = "| trace | packets | agree | agree % | timeout % | status % |"
    sep = "|---|---:|---:|---:|---:|---:|"
    if has_cap:
        head += " capture clock % |"
        sep += "---:|"
    w(head)
    w(sep)
    for r in results:
        line = (
            f"| {r.trace} | {r.packets} | {r.agree} | {_pct(r.agree, r.packets)} | "
            f"{_pct(r.timeout_agree, r.agree)} | {_pct(r.status_agree, r.agree)} |"
        )
        if has_cap:
            cap = "" if r.capture_agree is None else _pct(r.capture_agree, r.packets)
            line += f" {cap} |"
        w(line)
    line = (
        f"| **all** | **{total}** | **{agree}** | **{_pct(agree, total)}** | "
        f"{_pct(t_ok, agree)} | {_pct(s_ok, agree)} |"
    )
    if has_cap:
        line += f" {_pct(cap_total, total)} |"
    w(line)
    w("")
    patterns: Counter[tuple[str, str]] = Counter()
    for r in results:
        for _, k, p in r.diffs:
            patterns[(_primary_text(k), _primary_text(p))] += 1
    if patterns:
        w("## Disagreement patterns (kernel → pmct)")
        w("")
        w("| count | kernel | pmct |")
        w("|---:|---|---|")
        for (k, p), n in patterns.most_common(30):
            w(f"| {n} | {k} | {p} |")
        w("")
    secondary: Counter[tuple[str, str, str]] = Counter()
    for r in results:
        secondary.update(r.secondary)
    if secondary:
        w("## Secondary differences (most common; kernel → pmct)")
        w("")
        w("| count | column | kernel | pmct |")
        w("|---:|---|---|---|")
        for (col, k, p), n in secondary.most_common(20):
            w(f"| {n} | {col} | {k} | {p} |")
        w("")
    w("## Disagreements")
    w("")
    if not any(r.diffs for r in results):
        w("None.")
    for r in results:
        if not r.diffs:
            continue
        w(f"### {r.trace} ({len(r.diffs)})")
        w("")
        w("| idx | kernel | pmct | packet |")
        w("|---:|---|---|---|")
        for idx, k, p in r.diffs[: max_listed or None]:
            w(
                f"| {idx} | {_md(_row_text(k))} | {_md(_row_text(p))} | "
                f"{_md(r.summaries.get(idx, ''))} |"
            )
        if max_listed and len(r.diffs) > max_listed:
            w("")
            w(
                f"… and {len(r.diffs) - max_listed} more (list capped at {max_listed}; "
                "`--max-listed 0` lists all)."
            )
        w("")
    return "\n".join(out).rstrip() + "\n"


def run_fidelity(
    traces: Sequence[Path],
    *,
    mode: str = "bridge",
    out: Path | None = Path("docs/fidelity.md"),
    ftp_helper: bool = False,
    clock: str = "paced",
    cache: Path | None = None,
    max_listed: int = 200,
    progress: bool = True,
    realtime: int = 0,
) -> list[TraceResult]:
    """Compare every trace, write the report to ``out`` (None: don't write), return results."""
    if not traces:
        traces = default_traces()
    if not traces:
        raise RuntimeError("no traces given and none found in shared/traces/ (or $PMCT_TRACES)")
    results = []
    for t in traces:
        r = trace_result(
            Path(t), mode, ftp_helper=ftp_helper, clock=clock, cache=cache, realtime=realtime
        )
        if progress:
            print(f"{r.trace}: {r.agree}/{r.packets} {_pct(r.agree, r.packets)}", file=sys.stderr)
        results.append(r)
    if out is not None:
        cmd = f"pmct fidelity --mode {mode}{' --ftp-helper' if ftp_helper else ''}"
        if realtime:
            cmd += f" --realtime {realtime}"
            clock = "capture"
        elif clock != "paced":
            cmd += f" --clock {clock}"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            render_report(
                results,
                mode=mode,
                clock=clock,
                ftp_helper=ftp_helper,
                max_listed=max_listed,
                command=cmd,
                realtime=realtime,
            )
        )
    return results
