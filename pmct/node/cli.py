"""The node's sub-commands of ``pmct``: run, status, conntrack, promote, demote, fence, lab.

``register(app)`` adds them to the main typer app (pmct/cli.py). Each command is a few lines
over control.py (talk to a running daemon), daemon.py (run one) or pmct.lab (the netns lab).

Finding the daemon: ``--socket PATH``, else the run_dir of ``--config FILE``, else
``$PMCT_SOCKET``, else /run/pmct/control.sock. Exit status: 0 ok, 1 the daemon said no or is
not ready, 2 a usage problem (bad config, no daemon).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["register"]

SocketOpt = Annotated[
    Path | None, typer.Option("--socket", "-s", help="control socket of the daemon")
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="config file whose run_dir holds the control socket"),
]


def _fail(msg: str, code: int = 2) -> None:
    typer.echo(f"pmct: {msg}", err=True)
    raise typer.Exit(code)


def _load(path: Path | None) -> Any:
    from pmct.config import load_config
    from pmct.errors import ConfigError

    try:
        return load_config(path)
    except ConfigError as e:
        _fail(str(e))


def _socket_path(socket: Path | None, config: Path | None) -> str:
    if socket is not None:
        return str(socket)
    if config is not None:
        return str(_load(config).node.control_socket)
    return os.environ.get("PMCT_SOCKET") or "/run/pmct/control.sock"


def _request(sock: str, cmd: str, **args: Any) -> Any:
    from pmct.node.control import ControlError, request

    try:
        return request(sock, cmd, **args)
    except ControlError as e:
        _fail(str(e))


def run(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML config (default: built-in)")
    ] = None,
    check: Annotated[bool, typer.Option(help="only validate the config and exit")] = False,
) -> None:
    """Run a node: queue the data interfaces and track every packet (until SIGTERM)."""
    cfg = _load(config)
    if check:
        typer.echo(f"{cfg.source}: ok ({cfg.node.name}, {cfg.node.role})")
        return
    from pmct.node.daemon import run as run_daemon

    raise typer.Exit(run_daemon(cfg))


def status(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False,
    ready: Annotated[
        bool, typer.Option("--ready", help="print nothing; exit 0 if the daemon is ready, else 1")
    ] = False,
    wait: Annotated[float, typer.Option(help="with --ready: wait up to this many seconds")] = 0.0,
    socket: SocketOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Role, uptime, connections, packets/s, verdicts, invalid reasons, queue drops."""
    sock = _socket_path(socket, config)
    if ready:
        from pmct.node.control import ControlError, request

        deadline = time.monotonic() + wait
        while True:
            try:
                if request(sock, "ping", timeout=2.0).get("ready"):
                    raise typer.Exit(0)
            except ControlError:
                pass
            if time.monotonic() >= deadline:
                raise typer.Exit(1)
            time.sleep(0.1)
    st = _request(sock, "status")
    if as_json:
        typer.echo(json.dumps(st, indent=2, sort_keys=True))
    else:
        from pmct.node.metrics import render_status

        typer.echo(render_status(st))


def conntrack(
    table: Annotated[
        str,
        typer.Argument(help='"conntrack" (the connections) or "expect" (pending expectations)'),
    ] = "conntrack",
    dump: Annotated[bool, typer.Option("-L", "--dump", help="list the table")] = False,
    event: Annotated[bool, typer.Option("-E", "--event", help="follow NEW/UPDATE/DESTROY")] = False,
    stats: Annotated[bool, typer.Option("-S", "--stats", help="counters")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="-L as JSON entries")] = False,
    socket: SocketOpt = None,
    config: ConfigOpt = None,
) -> None:
    """The table in conntrack-tools' formats: -L list, -E events, -S counters.

    "-L expect" lists the expectations of the connection helpers (config section "helpers").
    """
    if dump + event + stats != 1:
        _fail("give exactly one of -L, -E, -S")
    if table not in ("conntrack", "expect"):
        _fail(f'unknown table {table!r}: "conntrack" or "expect"')
    if table == "expect" and not dump:
        _fail("only -L lists the expect table")
    sock = _socket_path(socket, config)
    if table == "expect":
        res = _request(sock, "expect")
        if as_json:
            typer.echo(json.dumps(res["entries"], indent=1))
        else:
            for line in res["lines"]:
                typer.echo(line)
            n = len(res["lines"])
            typer.echo(f"pmct (pmct-conntrack): {n} expectations have been shown.", err=True)
    elif dump:
        res = _request(sock, "conntrack")
        if as_json:
            typer.echo(json.dumps(res["entries"], indent=1))
        else:
            for line in res["lines"]:
                typer.echo(line)
            n = len(res["lines"])
            typer.echo(f"pmct (pmct-conntrack): {n} flow entries have been shown.", err=True)
    elif stats:
        typer.echo(_request(sock, "stats"))
    else:
        from pmct.node.control import ControlError, subscribe

        try:
            for ev in subscribe(sock):
                print(ev["line"], flush=True)  # one line per event, also into a pipe
        except ControlError as e:
            _fail(str(e))
        except KeyboardInterrupt:
            pass


def promote(
    socket: SocketOpt = None,
    config: ConfigOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="promote even while ct_sync's initial sync runs")
    ] = False,
) -> None:
    """Make this node active: it forwards what the policy accepts and answers ARP.

    Refused (exit 1) while the node is not ready (ct_sync initial sync still running: its
    table is incomplete, so taking over would cut connections) unless --force is given.
    """
    res = _request(_socket_path(socket, config), "promote", **({"force": True} if force else {}))
    if res.get("refused"):
        typer.echo(f"pmct: promote refused: {res['refused']} (--force to override)", err=True)
        typer.echo(res["role"])
        raise typer.Exit(1)
    typer.echo(f"{res['role']}{'' if res['changed'] else ' (already)'}")


def demote(socket: SocketOpt = None, config: ConfigOpt = None) -> None:
    """Make this node passive: it keeps tracking, drops everything and stays silent."""
    res = _request(_socket_path(socket, config), "demote")
    typer.echo(f"{res['role']}{'' if res['changed'] else ' (already)'}")


def fence(
    run_dir: Annotated[
        Path | None,
        typer.Option("--run-dir", help="the daemon's node.run_dir (holds fence.nft)"),
    ] = None,
    config: ConfigOpt = None,
    release: Annotated[
        bool, typer.Option("--release", help="remove the silence instead of installing it")
    ] = False,
) -> None:
    """Silence this node's data interfaces without the daemon (after it died).

    With fail = "open" a killed active daemon leaves the kernel forwarding every packet
    unfiltered (--queue-bypass); this installs the passive role's layer-2 drop from the
    RUN_DIR/fence.nft the daemon wrote at start. keepalived's notify script does the same
    when a demote finds no daemon. A daemon that starts again replaces it.
    """
    from pmct.node import fence as fence_mod

    if run_dir is None:
        run_dir = Path(_load(config).node.run_dir) if config is not None else Path("/run/pmct")
    try:
        if release:
            fence_mod.release()
            typer.echo("released")
        else:
            typer.echo(f"fenced ({fence_mod.fence(str(run_dir))})")
    except fence_mod.FenceError as e:
        _fail(str(e), 1)


def register(app: typer.Typer) -> None:
    """Add the node's commands (and the ``lab`` group) to the main app."""
    app.command()(run)
    app.command()(status)
    app.command()(conntrack)
    app.command()(promote)
    app.command()(demote)
    app.command()(fence)
    from pmct.lab.cli import lab_app

    app.add_typer(lab_app, name="lab")
    for group in app.registered_groups:  # `pmct bench sync` joins pmct.cli's bench group
        if group.name == "bench" and group.typer_instance is not None:
            from pmct.node.bench_sync import bench_sync

            group.typer_instance.command("sync")(bench_sync)
