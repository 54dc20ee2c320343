"""``pmct study STUDY.toml [--out DIR]``: run a comparison study (pmct.study).

``register(app)`` adds the command to the main typer app (pmct/cli.py), like pmct.node.cli.
Exit status: 0 done, 2 a usage problem (missing or invalid study file, times outside the
traffic).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    @app.command()
    def study(
        study_file: Annotated[Path, typer.Argument(help="study definition (configs/studies/)")],
        out: Annotated[
            Path | None,
            typer.Option("--out", "-o", help="results folder (default: ./study-<name>)"),
        ] = None,
        progress: Annotated[bool, typer.Option(help="progress bar on stderr")] = True,
        live: Annotated[
            bool,
            typer.Option(
                "--live", help='run in the namespace lab (as [study] level = "live"; root)'
            ),
        ] = False,
    ) -> None:
        """Compare none / concurrent / concurrent+resync / replicate on the same traffic
        (and kernel+conntrackd at the live level)."""
        from pmct.errors import ConfigError
        from pmct.study.report import write_all
        from pmct.study.runner import run_study
        from pmct.study.spec import load_study

        command = "pmct " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        try:
            spec = load_study(study_file, level="live" if live else None)
            if spec.level == "live":
                from pmct.study.live import run_live
                from pmct.study.live_report import write_live

                live_result = run_live(spec, progress=progress)
            else:
                result = run_study(spec, progress=progress)
        except ConfigError as e:
            typer.echo(f"pmct: {e}", err=True)
            raise typer.Exit(2) from None
        folder = out if out is not None else Path(f"study-{spec.name}")
        if spec.level == "live":
            paths, why = write_live(live_result, folder, command=command)
            typer.echo((folder / "summary.md").read_text())
            for p in paths:
                typer.echo(f"wrote {p}")
            if why:
                typer.echo(f"pmct: {why}", err=True)
            return
        paths, why = write_all(result, folder, command=command)
        typer.echo((folder / "summary.md").read_text())
        for p in paths:
            typer.echo(f"wrote {p}")
        if why:
            typer.echo(f"pmct: {why}", err=True)
