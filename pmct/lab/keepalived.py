"""keepalived in the lab: the shipped configs/keepalived/ files, run in the firewalls' namespaces.

pmct leaves failure detection to a cluster manager (as ct_sync did). The shipped set-up is a
VRRP instance on the sync link whose notify scripts call ``pmct promote`` / ``pmct demote``
and whose check script (``pmct status --ready``) keeps a node that is not ready out of the
MASTER state; configs/keepalived/keepalived-fw-a.conf says why each option is there. This
module runs exactly those files in a Lab, changing only what must differ in a lab: the
scripts' directory and the run_dir (the lab's per-run paths) and, for the benchmark,
advert_int. A substitution that finds nothing to replace is an error, so the lab cannot
silently drift from the shipped files.

Rules:
1. Each keepalived has its own config file, pid files (parent, VRRP child, and the unused
   checker and BFD ones) and log under ``<run_dir>/keepalived/`` and runs inside its
   firewall's namespace (``ip netns exec``), so it sees lan0, wan0, sync0 and lo only; its
   adverts are unicast to the peer's sync address. ``in_namespace()`` checks the namespace of
   the running processes.
2. Both processes (the parent and its VRRP child) are registered with the Lab, so
   ``lab.down()`` stops them by pid even when a test fails half-way.
3. ``kill()`` is a death, not a shutdown: keepalived and pmct are frozen (SIGSTOP) before
   anything else, so no priority-0 "I am leaving" advert goes out (keepalived's child sends
   one when its parent dies) and nothing is forwarded after that instant (a pmct killed
   first would unbind its queue, and ``--queue-bypass`` would let the kernel forward on its
   own until the links are down); then the links go down, then everything gets SIGKILL.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pmct.lab.scenario import wait_for
from pmct.lab.topology import Lab, LabError, _pid_alive

__all__ = ["SHIPPED", "Keepalived", "NotifyEvent"]

SHIPPED: Final = Path(__file__).resolve().parents[2] / "configs" / "keepalived"
SCRIPTS: Final = ("pmct-notify.sh", "pmct-check.sh")
_STATE_LINE: Final = re.compile(r"\((\S+)\) Entering (\w+) STATE")
LINKS: Final = ("lan0", "wan0", "sync0")


@dataclass(frozen=True, slots=True)
class NotifyEvent:
    """One line of PMCT_NOTIFY_LOG: what pmct-notify.sh did, and when (unix times)."""

    time: float  # the script started (keepalived entered ``state`` just before)
    state: str
    action: str  # promote, demote or skipped
    status: int | None  # the action's exit status; None: skipped
    end: float  # the script finished


class Keepalived:
    """keepalived on fw-a and fw-b of a Lab; ``advert_int`` in seconds (VRRPv3: 0.01 steps)."""

    def __init__(self, lab: Lab, *, advert_int: float = 1.0, notify_via: str = "cli") -> None:
        """``notify_via``: "cli" (``pmct promote``) or "file" (the state file), see
        pmct-notify.sh."""
        if shutil.which("keepalived") is None:
            raise LabError("keepalived is not installed (scripts/install.sh installs it)")
        self.lab = lab
        self.advert_int = advert_int
        self.notify_via = notify_via
        self.dir = f"{lab.run_dir}/keepalived"
        self.pmct = f"{sys.executable} -m pmct"  # what the scripts run as `pmct`
        self._log_from: dict[str, int] = {}  # where the current run's log starts

    # ------------------------------------------------------------------ files

    def _install_scripts(self) -> None:
        os.makedirs(self.dir, mode=0o755, exist_ok=True)
        for name in SCRIPTS:
            dst = f"{self.dir}/{name}"
            shutil.copyfile(SHIPPED / name, dst)
            os.chmod(dst, 0o755)  # keepalived's script security: root-owned, not writable

    def render(self, fw: str) -> str:
        """The shipped config of ``fw`` with the lab's paths (and advert_int)."""
        text = (SHIPPED / f"keepalived-{fw}.conf").read_text()
        subs = [
            ("/etc/keepalived/", f"{self.dir}/"),
            (f"/run/pmct/{fw}", f"{self.lab.run_dir}/{fw}"),
            ("advert_int 1\n", f"advert_int {self.advert_int:g}\n"),
        ]
        for old, new in subs:
            if old not in text:
                raise LabError(f"keepalived-{fw}.conf: no {old.strip()!r} to adapt to the lab")
            text = text.replace(old, new)
        return text

    def conf(self, fw: str) -> str:
        return f"{self.dir}/{fw}.conf"

    def pidfile(self, fw: str, which: str = "") -> str:
        return f"{self.dir}/{fw}{'-' + which if which else ''}.pid"

    def notify_log(self, fw: str) -> str:
        return f"{self.dir}/{fw}-notify.log"

    def log(self, fw: str) -> str:
        """The log of the current (or last) keepalived run on ``fw``."""
        return self.lab.log_text(self.name(fw))[self._log_from.get(fw, 0) :]

    @staticmethod
    def name(fw: str) -> str:
        return f"keepalived-{fw}"

    # ------------------------------------------------------------------ processes

    def config_test(self, fw: str) -> tuple[int, str]:
        """``keepalived --config-test`` of the rendered file in the node's namespace."""
        self._install_scripts()
        Path(self.conf(fw)).write_text(self.render(fw))
        p = self.lab.sh(fw, ["keepalived", "--config-test", "-f", self.conf(fw)], check=False)
        return p.returncode, p.stdout + p.stderr

    def start(self, fw: str, timeout: float = 10.0) -> None:
        """Run keepalived (VRRP only, foreground) in ``fw``'s namespace."""
        self._install_scripts()
        Path(self.conf(fw)).write_text(self.render(fw))
        vrrp_pid = self.pidfile(fw, "vrrp")
        for pid_file in (self.pidfile(fw), vrrp_pid):
            Path(pid_file).unlink(missing_ok=True)
        self._log_from[fw] = len(self.lab.log_text(self.name(fw)))
        self.lab.start(
            self.name(fw),
            fw,
            [
                "env",  # execs keepalived in place: the Lab keeps keepalived's own pid
                f"PMCT={self.pmct}",
                f"PMCT_NOTIFY_LOG={self.notify_log(fw)}",
                f"PMCT_NOTIFY_VIA={self.notify_via}",
                "keepalived",
                "--vrrp",
                "--dont-fork",
                "--log-console",
                "--log-detail",
                "--no-syslog",
                "--use-file",
                self.conf(fw),
                "--pid",
                self.pidfile(fw),
                "--vrrp_pid",
                vrrp_pid,
                "--checkers_pid",
                self.pidfile(fw, "checkers"),
                "--bfd_pid",
                self.pidfile(fw, "bfd"),
            ],
        )

        def child() -> int | None:
            if not self.lab.alive(self.name(fw)):
                raise LabError(f"keepalived on {fw} exited:\n{self.log(fw)[-3000:]}")
            try:
                pid = int(Path(vrrp_pid).read_text().split()[0])
            except (OSError, ValueError, IndexError):
                return None
            return pid if _pid_alive(pid) else None

        pid = wait_for(f"keepalived's VRRP process on {fw}", child, timeout)
        self.lab.adopt(self.name(fw) + "-vrrp", fw, pid)

    def pids(self, fw: str) -> list[int]:
        return [
            self.lab.procs[n].pid
            for n in (self.name(fw), self.name(fw) + "-vrrp")
            if n in self.lab.procs
        ]

    def in_namespace(self, fw: str) -> bool:
        """Do both keepalived processes of ``fw`` live in ``fw``'s network namespace?"""
        want = os.stat(f"/run/netns/{self.lab.ns[fw]}").st_ino
        pids = self.pids(fw)
        return len(pids) == 2 and all(os.stat(f"/proc/{pid}/ns/net").st_ino == want for pid in pids)

    def stop(self, fw: str) -> None:
        """Orderly stop (SIGTERM to the parent): the instance says goodbye, notify_stop runs."""
        self.lab.stop(self.name(fw), signal.SIGTERM)
        self.lab.stop(self.name(fw) + "-vrrp", signal.SIGTERM)

    def kill(self, fw: str, *, pmct: bool = True) -> float:
        """``fw`` dies: keepalived frozen, its links down, pmct and keepalived killed.

        Returns the unix time at which it was frozen (the moment of death).
        """
        pids = self.pids(fw)
        if pmct and fw in self.lab.procs:
            pids.append(self.lab.procs[fw].pid)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        t_death = time.time()
        for dev in LINKS:
            self.lab.ip(fw, "link", "set", dev, "down")
        if pmct:
            self.lab.stop(fw, signal.SIGKILL)
        self.lab.stop(self.name(fw) + "-vrrp", signal.SIGKILL)
        self.lab.stop(self.name(fw), signal.SIGKILL)
        return t_death

    def links_up(self, fw: str) -> None:
        for dev in LINKS:
            self.lab.ip(fw, "link", "set", dev, "up")

    # ------------------------------------------------------------------ state

    def states(self, fw: str) -> list[str]:
        """Every VRRP state the running (or last) keepalived of ``fw`` entered, in order."""
        return [m.group(2) for m in _STATE_LINE.finditer(self.log(fw))]

    def state(self, fw: str) -> str | None:
        """The last state entered; None while in the initial one. With ``init_fail`` that is
        FAULT until the check first passes, and keepalived logs (and notifies) no transition
        for it."""
        s = self.states(fw)
        return s[-1] if s else None

    def check_failed(self, fw: str) -> bool:
        """Has the readiness check (pmct_ready) of the current run failed at least once?"""
        return "VRRP_Script(pmct_ready) failed" in self.log(fw)

    def wait_state(self, fw: str, state: str, timeout: float = 30.0) -> None:
        def reached() -> bool:
            if not self.lab.alive(self.name(fw)):
                raise LabError(f"keepalived on {fw} exited:\n{self.log(fw)[-3000:]}")
            return self.state(fw) == state

        try:
            wait_for(f"keepalived on {fw} to enter {state}", reached, timeout)
        except LabError as e:
            raise LabError(f"{e}; states so far {self.states(fw)}") from None

    def events(self, fw: str) -> list[NotifyEvent]:
        """What pmct-notify.sh did on ``fw`` (every keepalived run of this lab)."""
        out = []
        try:
            lines = Path(self.notify_log(fw)).read_text().splitlines()
        except OSError:
            return []
        for line in lines:
            parts = line.split()
            if len(parts) != 5:
                continue
            status = int(parts[3]) if parts[3].isdigit() else None
            out.append(NotifyEvent(float(parts[0]), parts[1], parts[2], status, float(parts[4])))
        return out
