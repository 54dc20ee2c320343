"""``python -m pmct`` runs the CLI."""

from __future__ import annotations

from pmct.cli import app

app()
