"""Fencing: a node whose daemon died must go silent, without the daemon's help.

Why: ``fail = "open"`` installs the NFQUEUE rules with ``--queue-bypass`` so that traffic
passes while pmct is overloaded or restarting. When the daemon of the ACTIVE node is killed
(SIGKILL, OOM, a crash) nobody is bound to the queue any more, the kernel accepts every queued
packet, and the node keeps routing with no policy at all, while the cluster manager promotes
the standby: two forwarders on one segment, one of them unfiltered. A passive node that dies is
safe: its silence is an nftables table, which outlives the process.

The fix is the same layer-2 drop the passive role uses (netfilter.Silence): installed by a
process that does not need the dead daemon. The daemon writes the nft batch that silences its
data interfaces into ``RUN_DIR/fence.nft`` when it starts and removes it on a clean exit, so:

* keepalived's notify script (configs/keepalived/pmct-notify.sh) runs ``nft -f RUN_DIR/fence.nft``
  when a BACKUP/FAULT/STOP transition finds no daemon to demote (no Python start-up needed);
* ``pmct fence --run-dir DIR`` does the same by hand, ``pmct fence --release`` undoes it;
* systemd can do it on every unclean exit (``ExecStopPost``, see configs/systemd/pmct.service).

A restarted daemon replaces the silence with whatever its role needs (Silence.enable/disable
start with a reset of the same tables), so fencing never has to be undone by hand in a pair.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Sequence

from pmct.node.netfilter import Silence

__all__ = ["FENCE_FILE", "FenceError", "fence", "fence_script", "release", "remove", "write"]

FENCE_FILE = "fence.nft"


class FenceError(RuntimeError):
    """The fence could not be applied (no fence file, or nft refused it)."""


def fence_script(data_ifaces: Sequence[str]) -> str:
    """The nft batch: drop leftovers of the silence tables, then install them (idempotent)."""
    s = Silence(data_ifaces)
    return (
        "#!/usr/sbin/nft -f\n# pmct fence: silence the data interfaces (pmct/node/fence.py)\n"
        + (s._reset() + s.script())
    )


def write(run_dir: str, data_ifaces: Sequence[str]) -> str:
    """Write RUN_DIR/fence.nft atomically (a half-written batch must never be applied)."""
    path = os.path.join(run_dir, FENCE_FILE)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(fence_script(data_ifaces))
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def remove(run_dir: str) -> None:
    """A clean exit: the daemon removed everything itself, there is nothing left to fence."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(run_dir, FENCE_FILE))


def _nft(stdin: str) -> None:
    p = subprocess.run(["nft", "-f", "-"], input=stdin, capture_output=True, text=True)
    if p.returncode != 0:
        raise FenceError(f"nft refused the fence: {p.stderr.strip()}")


def fence(run_dir: str) -> str:
    """Silence the data interfaces named in RUN_DIR/fence.nft; returns the file used."""
    path = os.path.join(run_dir, FENCE_FILE)
    try:
        with open(path, encoding="ascii") as f:
            script = f.read()
    except FileNotFoundError:
        raise FenceError(
            f"{path} does not exist: no daemon has run with this run_dir since boot, "
            "or it stopped cleanly (then it left nothing that forwards)"
        ) from None
    _nft(script)
    return path


def release() -> None:
    """Remove the silence tables (the daemon does this itself when it starts active)."""
    _nft(Silence._reset())
