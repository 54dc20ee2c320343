"""keepalived drives pmct: the shipped configs/keepalived/ files, in the lab's namespaces.

* The notify script's order guard (no root needed): a transition that a later one has
  overtaken must not act, whatever order the scripts reach their lock in.
* Failover: both pmct daemons start passive and keepalived makes fw-a master (notify ->
  ``pmct promote``); a counter stream runs through fw-a; fw-a dies (keepalived frozen, links
  down, pmct and keepalived SIGKILLed); keepalived on fw-b takes over and promotes its pmct;
  the stream goes on with no reset and no lost or duplicated byte. Way back: fw-a returns
  (pmct, links, keepalived) and stays BACKUP: ``nopreempt``. A pre-empting fw-a would cut the
  stream here, because the returning pmct missed the handshake (tcp_loose off, no ct_sync yet).
  VRRP is seen on the sync link and nowhere else: not on any switch/hub port, not in the host
  namespace. Run on the hub lab and on the switched one.
* Readiness gate: keepalived on fw-a runs while fw-a's pmct is not (the check fails): fw-a
  stays in FAULT although it has the higher priority, and fw-b becomes master. Once fw-a's
  pmct is ready fw-a becomes BACKUP; when fw-b's keepalived stops, fw-a takes over.

Waits are for progress (states entered, lines received) with generous deadlines; nothing
asserts on speed.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pmct.lab.keepalived import SHIPPED, Keepalived
from pmct.lab.scenario import Stream, conntrack_entries, wait_for
from pmct.lab.topology import Lab

PORT = 5555
NOTIFY = str(SHIPPED / "pmct-notify.sh")


# ---------------------------------------------------------------------------- notify script


@pytest.fixture
def fake_pmct(tmp_path: Path) -> tuple[Path, Path]:
    """A run_dir and a stand-in `pmct` that appends its arguments to a file."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    calls = tmp_path / "calls"
    fake = tmp_path / "fake-pmct"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    fake.chmod(0o755)
    return run_dir, fake


def _notify(run_dir: Path, fake: Path, state: str, last: tuple[int, int] | None) -> str:
    """Run pmct-notify.sh while we hold its lock; write ``last`` (ppid, pid offset from the
    script's own pid) as the last transition that acted, then let it go. Its log line."""
    log = run_dir / "notify.log"
    log.unlink(missing_ok=True)
    with open(run_dir / "keepalived-notify.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        p = subprocess.Popen(
            [NOTIFY, state, str(run_dir)],
            env={**os.environ, "PMCT": str(fake), "PMCT_NOTIFY_LOG": str(log)},
        )
        if last is None:
            (run_dir / "keepalived-notify.last").unlink(missing_ok=True)
        else:
            pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
            ppid, offset = last
            (run_dir / "keepalived-notify.last").write_text(
                f"{ppid} {(p.pid + offset) % pid_max}\n"
            )
        fcntl.flock(lock, fcntl.LOCK_UN)
    assert p.wait(10) == 0
    return " ".join(log.read_text().split()[2:4])  # action and status


def test_notify_acts_unless_a_later_transition_already_did(fake_pmct: tuple[Path, Path]) -> None:
    run_dir, fake = fake_pmct
    me = os.getpid()  # the scripts' parent, as keepalived's VRRP process is
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    sock = f"--socket {run_dir}/control.sock"
    assert _notify(run_dir, fake, "master", None) == "promote 0"
    assert _notify(run_dir, fake, "backup", (me, -1)) == "demote 0"  # an earlier one acted
    assert _notify(run_dir, fake, "master", (me, +1)) == "skipped -"
    assert _notify(run_dir, fake, "fault", (me, 0)) == "skipped -"
    # pids wrap around: a last pid "half the pid space ahead" is in fact behind
    assert _notify(run_dir, fake, "stop", (me, pid_max // 2 + 1)) == "demote 0"
    # another keepalived (after a restart): its pids say nothing about ours
    assert _notify(run_dir, fake, "master", (me + 1, +1)) == "promote 0"
    calls = (run_dir.parent / "calls").read_text().splitlines()
    assert calls == [f"promote {sock}", f"demote {sock}", f"demote {sock}", f"promote {sock}"]


def test_notify_via_the_state_file(fake_pmct: tuple[Path, Path]) -> None:
    run_dir, fake = fake_pmct
    env = {**os.environ, "PMCT": str(fake), "PMCT_NOTIFY_VIA": "file"}
    # no state file: no daemon, nothing to ask
    assert subprocess.run([NOTIFY, "master", str(run_dir)], env=env).returncode == 1
    assert not (run_dir / "role").exists()
    (run_dir / "role").write_text("passive\n")  # what a running daemon keeps there
    assert subprocess.run([NOTIFY, "master", str(run_dir)], env=env).returncode == 0
    assert (run_dir / "role").read_text() == "1\n"
    assert subprocess.run([NOTIFY, "fault", str(run_dir)], env=env).returncode == 0
    assert (run_dir / "role").read_text() == "0\n"
    assert not (run_dir.parent / "calls").exists()  # the CLI was never run


def test_notify_refuses_an_unknown_state(fake_pmct: tuple[Path, Path]) -> None:
    run_dir, fake = fake_pmct
    p = subprocess.run(
        [NOTIFY, "bogus", str(run_dir)],
        env={**os.environ, "PMCT": str(fake)},
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and "unknown state" in p.stderr
    assert not (run_dir.parent / "calls").exists()


# ---------------------------------------------------------------------------- in the lab


@pytest.fixture(params=["hub", "switch"])
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    lab = Lab(switched=request.param == "switch")
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


@pytest.fixture
def hub_lab() -> Iterator[Lab]:
    lab = Lab()
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


def role(lab: Lab, fw: str) -> str:
    return str(lab.control(fw, "ping")["role"])


def wait_role(lab: Lab, fw: str, want: str, timeout: float = 30) -> None:
    wait_for(f"pmct on {fw} to be {want}", lambda: role(lab, fw) == want, timeout)


def stream_entry(lab: Lab, fw: str) -> dict[str, object] | None:
    for e in conntrack_entries(lab, fw):
        if e["proto"] == "tcp" and e["orig"][3] == PORT:
            return e
    return None


class VrrpWatch:
    """tcpdump for VRRP (IP protocol 112) on the sync link, every hub port, and the host."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.names = {"sync": "fw-b", "ports": "hub", "host": None}
        for what, node in self.names.items():
            iface = "sync0" if what == "sync" else "any"
            # immediate mode: nothing may wait in a ring block when tcpdump is stopped
            argv = ["tcpdump", "-i", iface, "-n", "-l", "-p", "--immediate-mode", "ip proto 112"]
            if node is None:
                self._start_host(what, argv)
            else:
                lab.start(f"vrrp-{what}", node, argv)
            wait_for(
                f"tcpdump ({what})", lambda w=what: "listening on" in lab.log_text(f"vrrp-{w}"), 10
            )

    def _start_host(self, what: str, argv: list[str]) -> None:
        # the host namespace: started like Lab.start, tracked by pid the same way
        log = f"{self.lab.run_dir}/vrrp-{what}.log"
        with open(log, "ab") as out:
            p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        self.lab.adopt(f"vrrp-{what}", "hub", p.pid, log)
        self.host = p

    def stop(self) -> dict[str, int]:
        """Stop the captures; VRRP packets seen by each."""
        counts = {}
        for what in self.names:
            name = f"vrrp-{what}"
            self.lab.stop(name, signal.SIGINT)
            if what == "host":
                self.host.wait(10)
            text = self.lab.log_text(name)
            counts[what] = sum(1 for line in text.splitlines() if "VRRP" in line)
        return counts


@pytest.mark.netns
@pytest.mark.slow
def test_keepalived_fails_over_and_fw_a_returns_without_preempting(lab: Lab) -> None:
    lab.start_node("fw-a", role="passive", strict=True, tcp_loose=False)
    lab.start_node("fw-b", role="passive", strict=True, tcp_loose=False)
    vrrp = VrrpWatch(lab)
    ka = Keepalived(lab)
    ka.start("fw-a")
    ka.wait_state("fw-a", "MASTER")
    wait_role(lab, "fw-a", "active")  # promoted by keepalived's notify_master
    ka.start("fw-b")
    ka.wait_state("fw-b", "BACKUP")
    assert ka.in_namespace("fw-a") and ka.in_namespace("fw-b")
    for fw in ("fw-a", "fw-b"):
        assert all(Path(ka.pidfile(fw, w)).exists() for w in ("", "vrrp"))

    stream = Stream(lab, port=PORT)
    stream.wait_received(100, 100, timeout=30)
    entry = stream_entry(lab, "fw-b")
    assert entry is not None and entry["state"] == "ESTABLISHED"
    assert role(lab, "fw-b") == "passive"

    ka.kill("fw-a")  # frozen, links down, pmct and keepalived SIGKILLed
    c0, s0 = stream.received()
    ka.wait_state("fw-b", "MASTER")
    wait_role(lab, "fw-b", "active")  # nobody but keepalived promoted it
    stream.wait_received(c0 + 200, s0 + 200, timeout=60)
    assert stream.errors() == []
    wait_for(
        "fw-b's notify_master",
        lambda: [e.action for e in ka.events("fw-b")][-1:] == ["promote"],
        30,
    )
    # the order guard sees keepalived's VRRP process as the scripts' parent
    last_ppid = Path(f"{lab.run_dir}/fw-b/keepalived-notify.last").read_text().split()[0]
    assert int(last_ppid) == ka.pids("fw-b")[1]

    # The way back: fw-a boots (pmct first, passive and silent), links up, keepalived.
    lab.start_node("fw-a", role="passive", strict=True, tcp_loose=False)
    ka.links_up("fw-a")
    ka.start("fw-a")
    ka.wait_state("fw-a", "BACKUP")
    # fw-a is ready and has the higher priority; let it hear fw-b's adverts for a while
    c1, s1 = stream.received()
    stream.wait_received(c1 + 300, s1 + 300, timeout=60)
    assert ka.state("fw-a") == "BACKUP" and "MASTER" not in ka.states("fw-a")
    assert ka.state("fw-b") == "MASTER"
    assert (role(lab, "fw-a"), role(lab, "fw-b")) == ("passive", "active")
    assert stream_entry(lab, "fw-a") is None  # it missed the handshake: taking over would cut

    client, server = stream.stop()
    assert client["errors"] == [] and server["errors"] == []
    assert client["state"] == "closed" and server["state"] == "closed"
    assert client["received"] == server["sent"] and server["received"] == client["sent"]

    seen = vrrp.stop()
    assert seen["sync"] > 0  # the capture works: the adverts are there ...
    assert seen["ports"] == 0 and seen["host"] == 0  # ... and nowhere else
    print(
        f"keepalived failover ({'switch' if lab.switched else 'hub'}): longest silence seen "
        f"by the client {client['rx_gap_max']} s, by the server {server['rx_gap_max']} s"
    )


@pytest.mark.netns
@pytest.mark.slow
def test_a_node_whose_pmct_is_not_ready_never_becomes_master(hub_lab: Lab) -> None:
    lab = hub_lab
    ka = Keepalived(lab)
    for fw in ("fw-a", "fw-b"):
        code, out = ka.config_test(fw)
        assert code == 0, out  # the shipped files, as adapted to the lab, are valid
    ka.start("fw-a")  # no pmct on fw-a: `pmct status --ready` fails
    wait_for("fw-a's readiness check to fail", lambda: ka.check_failed("fw-a"), 30)
    lab.start_node("fw-b", role="passive")
    ka.start("fw-b")
    # fw-b waits the same master-down interval fw-a would have (a little longer: its
    # priority is lower) and fw-a started first: had fw-a's check passed, fw-a would be master
    ka.wait_state("fw-b", "MASTER")
    wait_role(lab, "fw-b", "active")
    assert ka.states("fw-a") == []  # still in its initial FAULT (init_fail): never master

    lab.start_node("fw-a", role="passive")  # now fw-a is ready ...
    ka.wait_state("fw-a", "BACKUP")  # ... and joins as backup (nopreempt)
    assert role(lab, "fw-a") == "passive"
    wait_for(  # the notify scripts run asynchronously
        "fw-a's notify_backup",
        lambda: [(e.state, e.action) for e in ka.events("fw-a")] == [("backup", "demote")],
        30,
    )

    ka.stop("fw-b")  # orderly: priority 0 advert, notify_stop demotes fw-b's pmct
    ka.wait_state("fw-a", "MASTER")
    wait_role(lab, "fw-a", "active")
    wait_role(lab, "fw-b", "passive")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v", "-s"]))
