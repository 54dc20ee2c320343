#!/usr/bin/env python3
"""Compile pmct's pure cores with mypyc, in place, for speed (optional; pmct runs without it).

Why: the engine's per-packet budget is ~2.5 µs (400,000 packets/s on one core). Interpreted
CPython spends most of that on bytecode dispatch; mypyc turns the same, unchanged, type-checked
Python modules into C extensions (1.4-2x here, see docs/performance.md). The sources stay the
reference: every test runs against whichever form is importable, and `--clean` removes the
compiled modules to get the interpreted engine back.

Usage:
    python3 scripts/build_accel.py           # compile (needs mypy, which ships mypyc, and gcc)
    python3 scripts/build_accel.py --clean   # remove the compiled modules
    python3 scripts/build_accel.py --check   # print which modules are compiled now

Exit status 0 on success; 1 if compilation failed (pmct then stays interpreted, which works).
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# mypyc puts the code shared by all compiled modules in one top-level extension module
# (<hash>__mypyc); it lives here, and a .pth file in the interpreter's site-packages puts this
# folder on sys.path, so `pmct` finds it from any working directory.
ACCEL_DIR = REPO / ".accel"
PTH = Path(sysconfig.get_paths()["purelib"]) / "pmct_accel.pth"

# The hot path: parsing, the engine, its trackers. Only modules that are mypy-clean and that no
# code subclasses or monkeypatches from interpreted Python.
MODULES = [
    "pmct/serial.py",
    "pmct/wire/__init__.py",  # parse_ip: the engine's slow path calls it for every packet
    "pmct/wire/model.py",
    "pmct/wire/link.py",
    "pmct/wire/ipv4.py",
    "pmct/wire/ipv6.py",
    "pmct/wire/l4.py",
    "pmct/wire/defrag.py",
    "pmct/conntrack/keys.py",
    "pmct/conntrack/settings.py",  # Settings/Timeouts: read by the trackers on every packet
    "pmct/conntrack/conn.py",
    "pmct/conntrack/table.py",
    "pmct/conntrack/core.py",
    "pmct/conntrack/proto/tcp_table.py",
    "pmct/conntrack/proto/tcp.py",
    "pmct/conntrack/proto/udp.py",
    "pmct/conntrack/proto/icmp.py",
    "pmct/conntrack/proto/generic.py",
    "pmct/conntrack/proto/sctp.py",
    # the node's packet path around the engine (docs/performance.md, node section)
    "pmct/node/datapath.py",
    "pmct/node/policy.py",  # Ruleset.decide: the active node's per-packet rule walk
    # ct_sync's pure core: init sync encode/decode/merge (docs/performance.md, ct_sync section).
    # Not table.py (tests subclass DictTable) nor sim.py (test tooling).
    "pmct/sync/codec.py",
    "pmct/sync/records.py",
    "pmct/sync/merge.py",
    "pmct/sync/seq.py",
    "pmct/sync/backlog.py",
    "pmct/sync/pacer.py",
    "pmct/sync/modes.py",
    "pmct/sync/events.py",
    "pmct/sync/protocol.py",
]


def compiled() -> list[Path]:
    return sorted(REPO.glob("pmct/**/*.so")) + sorted(ACCEL_DIR.glob("*.so"))


def clean() -> None:
    for so in compiled():
        so.unlink()
    for so in REPO.glob("*__mypyc*.so"):
        so.unlink()
    shutil.rmtree(REPO / "build", ignore_errors=True)
    PTH.unlink(missing_ok=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clean", action="store_true")
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    if args.check:
        for so in compiled():
            print(so.relative_to(REPO))
        return 0
    clean()
    if args.clean:
        return 0
    mypyc = shutil.which("mypyc") or str(Path(sys.executable).with_name("mypyc"))
    proc = subprocess.run([mypyc, *MODULES], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        clean()
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n", file=sys.stderr)
        print("build_accel: mypyc failed; pmct stays interpreted", file=sys.stderr)
        return 1
    shutil.rmtree(REPO / "build", ignore_errors=True)
    ACCEL_DIR.mkdir(exist_ok=True)
    for so in REPO.glob("*__mypyc*.so"):
        so.replace(ACCEL_DIR / so.name)
    PTH.write_text(f"{ACCEL_DIR}\n")
    sys.path.insert(0, str(ACCEL_DIR))
    sys.path.insert(0, str(REPO))
    core = importlib.import_module("pmct.conntrack.core")
    if not str(core.__file__).endswith(".so"):
        print("build_accel: compiled modules are not the ones imported", file=sys.stderr)
        return 1
    print(f"build_accel: {len(MODULES)} modules compiled with mypyc")
    return 0


if __name__ == "__main__":
    sys.exit(main())
