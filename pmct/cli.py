"""The ``pmct`` command line: a thin typer layer over module functions.

Rules:
1. Each command is a few lines: parse options, call one module function, print. Logic lives in
   the modules (pmct.replay, pmct.fidelity, ...) where it can be tested without a CLI.
2. Errors the user can fix (missing file, no root for the oracle) exit 2 with one line on
   stderr, not a traceback.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["app"]

app = typer.Typer(
    help="pmct: Python conntrack engine and ct_sync for highly available Linux firewall pairs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class Format(StrEnum):
    tsv = "tsv"
    table = "table"


class Mode(StrEnum):
    bridge = "bridge"
    routed = "routed"


class Clock(StrEnum):
    capture = "capture"
    paced = "paced"


def _fail(msg: str) -> None:
    typer.echo(f"pmct: {msg}", err=True)
    raise typer.Exit(2)


@app.command()
def replay(
    trace: Annotated[Path, typer.Argument(help="pcap or pcapng capture, optionally gzipped")],
    ftp_helper: Annotated[bool, typer.Option(help="track FTP data connections as RELATED")] = False,
    format: Annotated[Format, typer.Option(help="tsv (the kernel oracle's columns) or table")] = (
        Format.tsv
    ),
    dump: Annotated[bool, typer.Option(help="print the final table like `conntrack -L`")] = False,
    clock: Annotated[Clock, typer.Option(help="capture timestamps, or the oracle's pace")] = (
        Clock.capture
    ),
) -> None:
    """Replay a capture through pmct's engine and print the verdict of every IP packet."""
    from pmct.replay import CaptureError, format_table, format_tsv, replay_capture

    if not trace.is_file():
        _fail(f"no such file: {trace}")
    try:
        rep = replay_capture(trace, ftp_helper=ftp_helper, clock=clock.value)
    except CaptureError as e:
        _fail(str(e))
        return
    fmt = format_table if format is Format.table else format_tsv
    for line in fmt(rep, dump=dump):
        typer.echo(line)


@app.command()
def fidelity(
    traces: Annotated[
        list[Path] | None, typer.Argument(help="captures (default: every one in shared/traces/)")
    ] = None,
    mode: Annotated[Mode, typer.Option(help="oracle mode used as the reference")] = Mode.bridge,
    out: Annotated[Path, typer.Option(help="markdown report to write")] = Path("docs/fidelity.md"),
    ftp_helper: Annotated[bool, typer.Option(help="FTP helper on, in pmct and the kernel")] = False,
    clock: Annotated[Clock, typer.Option(help="clock fed to pmct")] = Clock.paced,
    max_listed: Annotated[int, typer.Option(help="disagreements listed per trace; 0 = all")] = 200,
    realtime: Annotated[
        int,
        typer.Option(help="run the oracle in real time, K times faster (0: as fast as possible)"),
    ] = 0,
) -> None:
    """Compare pmct with the real kernel (kernel_oracle.py) packet by packet; write a report."""
    from pmct.fidelity import run_fidelity
    from pmct.replay import CaptureError

    try:
        results = run_fidelity(
            traces or [],
            mode=mode.value,
            out=out,
            ftp_helper=ftp_helper,
            clock=clock.value,
            max_listed=max_listed,
            realtime=realtime,
        )
    except (RuntimeError, CaptureError) as e:
        _fail(str(e))
        return
    total = sum(r.packets for r in results)
    agree = sum(r.agree for r in results)
    typer.echo(f"{agree}/{total} packets agree ({100.0 * agree / max(total, 1):.2f} %); {out}")


# Benchmarks print numbers; they never assert on timing. Other modules add their own
# sub-commands to ``bench_app`` (e.g. ``pmct bench sync``).
bench_app = typer.Typer(help="Benchmarks: print numbers and ratios.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("engine")
def bench_engine(
    traces: Annotated[
        list[Path] | None, typer.Argument(help="captures (default: every one in shared/traces/)")
    ] = None,
    repeat: Annotated[int, typer.Option(help="runs per trace; the best counts")] = 3,
    conns: Annotated[int, typer.Option(help="connections for the memory figure (0: skip)")] = (
        1_000_000
    ),
) -> None:
    """Engine packets/s on one core over real traces, and bytes per connection at scale."""
    from pmct.accel import compiled_modules
    from pmct.bench import bench_memory, bench_traces
    from pmct.fidelity import default_traces

    mode = "compiled (mypyc)" if compiled_modules() else "interpreted"
    typer.echo(f"engine: {mode}")
    runs = bench_traces(traces or default_traces(), repeat=repeat)
    for r in runs:
        typer.echo(f"{r.name:32} {r.packets:8} packets {r.pps:10.0f} packets/s")
    if conns:
        per_conn, seconds, n = bench_memory(conns)
        typer.echo(
            f"memory: {n} TCP connections (3-way handshake each) in {seconds:.1f} s: "
            f"{per_conn:.0f} bytes of resident memory per connection"
        )


# The node's commands (run, status, conntrack, promote, demote, lab) live in pmct.node.cli.
from pmct.node.cli import register as _register_node  # noqa: E402

_register_node(app)

# `pmct study`: comparison studies (pmct.study.cli).
from pmct.study.cli import register as _register_study  # noqa: E402

_register_study(app)
