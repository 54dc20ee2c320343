"""The modules scripts/build_accel.py compiles must stay mypy-clean: mypyc refuses code that
does not type-check, and the engine would silently fall back to interpreted speed."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_compiled_modules_type_check() -> None:
    if shutil.which("mypy") is None and importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy not installed (pip install -e '.[accel]')")
    spec = importlib.util.spec_from_file_location("build_accel", REPO / "scripts/build_accel.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--ignore-missing-imports",
            "--no-error-summary",
            *mod.MODULES,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
