"""Fencing a node whose daemon died (pmct/node/fence.py).

The hazard: with fail = "open" the queue rules carry --queue-bypass, so when the ACTIVE
node's daemon is SIGKILLed the kernel accepts every queued packet and forwards it with no
policy at all. The test shows exactly that (an ICMP echo the strict ruleset drops passes once
the daemon is dead), then runs keepalived's notify script for FAULT as keepalived would: its
demote finds no daemon, so it applies RUN_DIR/fence.nft, after which fw-a puts no frame on
either hub and the echo is gone; `pmct fence --release` brings the unfiltered forwarding back,
which proves that the fence, and nothing else, stopped it.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pmct.lab.scenario import pmct_cli
from pmct.lab.topology import SERVER_IP, Lab

pytestmark = [pytest.mark.netns]

NOTIFY = Path(__file__).resolve().parents[2] / "configs" / "keepalived" / "pmct-notify.sh"


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab()
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


def ping_ok(lab: Lab) -> bool:
    p = lab.sh("client", ["ping", "-c", "1", "-W", "1", SERVER_IP], check=False)
    return p.returncode == 0


def fw_a_frames(lab: Lab) -> int:
    return lab.port_rx("la") + lab.port_rx("wa")


def test_a_killed_active_node_forwards_unfiltered_until_fenced(lab: Lab) -> None:
    lab.start_node("fw-a", role="active", strict=True, fail="open")
    lab.start_node("fw-b", role="passive", strict=True, fail="open")
    run_dir = f"{lab.run_dir}/fw-a"
    assert os.path.exists(f"{run_dir}/fence.nft")
    # the strict ruleset opens nothing but TCP SYNs from the LAN: no echo gets through
    assert not ping_ok(lab)

    lab.stop("fw-a", signal.SIGKILL)  # no clean-up at all
    # the hazard: nobody is bound to the queue, --queue-bypass accepts, the kernel forwards
    assert any(ping_ok(lab) for _ in range(3))

    # keepalived sees the readiness check fail and runs notify_fault; demote finds no daemon
    env = dict(os.environ, PMCT=f"{shlex.quote(sys.executable)} -m pmct", PMCT_NOTIFY_LOG="")
    log = Path(f"{lab.run_dir}/notify.log")
    env["PMCT_NOTIFY_LOG"] = str(log)
    p = subprocess.run(
        ["ip", "netns", "exec", lab.ns["fw-a"], "sh", str(NOTIFY), "fault", run_dir],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert log.read_text().split()[1:4] == ["fault", "fence", "0"]

    time.sleep(0.2)
    frames = fw_a_frames(lab)
    assert not any(ping_ok(lab) for _ in range(3))
    assert fw_a_frames(lab) == frames  # fenced: fw-a emits nothing on either hub

    # the fence, not something else, stopped it: release it and the kernel forwards again
    r = lab.sh("fw-a", [sys.executable, "-m", "pmct", "fence", "--release"], check=False)
    assert r.returncode == 0, r.stderr
    assert any(ping_ok(lab) for _ in range(3))
    r = lab.sh("fw-a", [sys.executable, "-m", "pmct", "fence", "--run-dir", run_dir], check=False)
    assert (r.returncode, r.stdout.startswith("fenced")) == (0, True), r.stderr
    assert not any(ping_ok(lab) for _ in range(2))


def test_a_clean_stop_leaves_no_fence_file(lab: Lab) -> None:
    lab.start_node("fw-a", role="active")
    run_dir = f"{lab.run_dir}/fw-a"
    assert os.path.exists(f"{run_dir}/fence.nft")
    assert lab.stop("fw-a", signal.SIGTERM) == 0
    assert not os.path.exists(f"{run_dir}/fence.nft")
    r = pmct_cli("fence", "--run-dir", run_dir)
    assert r.returncode == 1 and "does not exist" in r.stderr
