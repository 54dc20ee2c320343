"""``pmct lab up|down|demo``: the reference lab from the command line (root)."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

__all__ = ["lab_app"]

lab_app = typer.Typer(
    help="The reference lab in network namespaces: client, two hubs, fw-a, fw-b, server.",
    no_args_is_help=True,
)


def _need_root() -> None:
    if os.geteuid() != 0:
        typer.echo("pmct lab: needs root (network namespaces)", err=True)
        raise typer.Exit(2)


@lab_app.command()
def up(
    strict: Annotated[
        bool, typer.Option(help="strict ruleset: only a TCP SYN from the LAN opens")
    ] = False,
    tcp_loose: Annotated[bool, typer.Option(help="conntrack tcp_loose on the firewalls")] = True,
) -> None:
    """Build the lab and start fw-a (active) and fw-b (passive); `pmct lab down` removes it."""
    _need_root()
    from pmct.lab.scenario import wait_for
    from pmct.lab.topology import CLIENT_IP, SERVER_IP, Lab, LabError

    old = Lab.current()
    if old is not None:
        typer.echo(f"pmct lab: lab {old.prefix} is already up; `pmct lab down` first", err=True)
        raise typer.Exit(1)
    lab = Lab(keep_state=True)
    try:
        lab.up()
        lab.start_node("fw-a", role="active", strict=strict, tcp_loose=tcp_loose, detach=True)
        lab.start_node("fw-b", role="passive", strict=strict, tcp_loose=tcp_loose, detach=True)
        lab.start(
            "http",
            "server",
            [sys.executable, "-m", "pmct.lab.probe", "http", "--bind", SERVER_IP, "--port", "8080"],
            detach=True,
        )
        wait_for(
            "the HTTP server",
            lambda: "LISTEN" in lab.sh("server", ["ss", "-Hltn", "sport = :8080"]).stdout,
            10,
        )
    except (LabError, OSError) as e:
        lab.down()
        typer.echo(f"pmct lab: {e}", err=True)
        raise typer.Exit(1) from None
    ns = lab.ns
    typer.echo(
        f"lab {lab.prefix} is up: client {CLIENT_IP} -- fw-a (active) / fw-b (passive) -- "
        f"server {SERVER_IP}\n"
        f"  ip netns exec {ns['client']} curl -so /dev/null -w '%{{http_code}}\\n' "
        f"http://{SERVER_IP}:8080/\n"
        f"  pmct status -s {lab.socket('fw-a')}\n"
        f"  pmct conntrack -L -s {lab.socket('fw-b')}\n"
        f"  pmct promote -s {lab.socket('fw-b')}     (or: echo 1 > {lab.run_dir}/fw-b/role)\n"
        f"  logs: {lab.run_dir}/*.log\n"
        "  pmct lab down"
    )


@lab_app.command()
def down() -> None:
    """Stop the lab's processes and delete its namespaces."""
    _need_root()
    from pmct.lab.topology import Lab

    lab = Lab.current()
    if lab is None:
        typer.echo("pmct lab: no lab is up")
        return
    lab.down()
    typer.echo(f"lab {lab.prefix} removed")


@lab_app.command()
def demo(
    seconds: Annotated[float, typer.Option(help="how long the stream runs before fw-a dies")] = 3.0,
    control: Annotated[
        bool, typer.Option(help="also show the control: a fw-b that missed the handshake")
    ] = True,
) -> None:
    """The failover story: a TCP stream through fw-a survives fw-a's death; fw-b takes over."""
    _need_root()
    from pmct.lab.demo import run_demo

    raise typer.Exit(run_demo(before=seconds, control=control))
