"""Which modules run compiled (mypyc, see scripts/build_accel.py) and whether any is stale.

A compiled module shadows its source: Python imports ``tcp.cpython-311-*.so`` before
``tcp.py``. After an edit to the source, the old compiled code would keep running, so the test
suite refuses to run over stale modules (tests/conftest.py) and ``pmct`` warns.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["compiled_modules", "stale_modules"]

_PKG = Path(__file__).resolve().parent


def compiled_modules() -> list[Path]:
    """The compiled extension modules inside the pmct package."""
    return sorted(_PKG.rglob("*.so"))


def stale_modules() -> list[Path]:
    """Compiled modules older than their source file."""
    stale = []
    for so in compiled_modules():
        src = so.with_name(so.name.split(".", 1)[0] + ".py")
        if src.exists() and src.stat().st_mtime > so.stat().st_mtime:
            stale.append(src)
    return stale
