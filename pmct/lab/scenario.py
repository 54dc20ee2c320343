"""Traffic and failover steps on a running Lab, shared by the integration tests and the demo.

Each helper starts processes through the Lab (so ``lab.down()`` stops them by pid) and waits
with deadlines for *progress* (lines received, a daemon ready), never for a fixed time.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

from pmct.lab.stream import read_status
from pmct.lab.topology import SERVER_IP, Lab, LabError

__all__ = [
    "Capture",
    "Stream",
    "conntrack_entries",
    "pmct_cli",
    "probe",
    "queue_opts",
    "table_key",
    "wait_for",
]

T = TypeVar("T")


def wait_for(what: str, fn: Callable[[], T | None], timeout: float, poll: float = 0.05) -> T:
    """Call ``fn`` until it returns something truthy; LabError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


def queue_opts(name: str) -> dict[str, Any]:
    """``Lab.start_node`` options for a queue set-up: netfilterqueue, netlink, netlink-gso
    (a passive node reads a packet ring, the default), and netlink-passive-queue (a passive
    node reads NFQUEUE too)."""
    opts: dict[str, dict[str, Any]] = {
        "netfilterqueue": {"backend": "netfilterqueue"},
        "netlink": {"backend": "netlink"},
        "netlink-gso": {"backend": "netlink", "gso": True},
        "netlink-passive-queue": {"backend": "netlink", "passive_capture": "queue"},
    }
    return opts[name]


def probe(lab: Lab, node: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``python -m pmct.lab.probe ARGS`` in a node."""
    return lab.sh(
        node, [sys.executable, "-m", "pmct.lab.probe", *args], check=False, timeout=timeout
    )


def pmct_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run the ``pmct`` command (this interpreter's) from the host namespace."""
    return subprocess.run(
        [sys.executable, "-m", "pmct", *args], capture_output=True, text=True, timeout=timeout
    )


class Stream:
    """The counter stream (pmct.lab.stream) from the client to SERVER_IP:port."""

    def __init__(self, lab: Lab, port: int = 5555, interval: float = 0.01) -> None:
        self.lab = lab
        self.port = port
        self.server_file = f"{lab.run_dir}/stream-server.json"
        self.client_file = f"{lab.run_dir}/stream-client.json"
        base = [sys.executable, "-m", "pmct.lab.stream"]
        lab.start(
            "stream-server",
            "server",
            [
                *base,
                "serve",
                "--port",
                str(port),
                "--status",
                self.server_file,
                "--interval",
                str(interval),
            ],
        )
        wait_for("the stream server", lambda: read_status(self.server_file), 10)
        lab.start(
            "stream-client",
            "client",
            [
                *base,
                "connect",
                "--host",
                SERVER_IP,
                "--port",
                str(port),
                "--status",
                self.client_file,
                "--interval",
                str(interval),
            ],
        )

    def client(self) -> dict[str, Any]:
        return read_status(self.client_file) or {}

    def server(self) -> dict[str, Any]:
        return read_status(self.server_file) or {}

    def received(self) -> tuple[int, int]:
        """Lines the client and the server have received so far."""
        return self.client().get("received", 0), self.server().get("received", 0)

    def errors(self) -> list[str]:
        return [*self.client().get("errors", []), *self.server().get("errors", [])]

    def wait_received(self, client: int, server: int, timeout: float) -> tuple[int, int]:
        def ok() -> tuple[int, int] | None:
            c, s = self.received()
            bad = self.errors()
            if bad:
                raise LabError(f"the stream broke: {bad}")
            return (c, s) if c >= client and s >= server else None

        return wait_for(f"the stream to reach {client}/{server} lines", ok, timeout)

    def stop(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Stop both ends (SIGTERM by pid) and return their final status."""
        self.lab.stop("stream-client", signal.SIGTERM)
        self.lab.stop("stream-server", signal.SIGTERM)
        return self.client(), self.server()


class Capture:
    """tcpdump on a hub port, inbound only (= frames the node behind the port sent)."""

    def __init__(self, lab: Lab, port: str) -> None:
        self.lab = lab
        self.port = port
        self.file = f"{lab.run_dir}/capture-{port}.pcap"
        self.name = f"tcpdump-{port}"
        lab.start(
            self.name, "hub", ["tcpdump", "-i", port, "-Q", "in", "-n", "-U", "-w", self.file]
        )
        wait_for(
            f"tcpdump on {port}",
            lambda: "listening on" in lab.log_text(self.name),
            10,
        )

    def stop(self) -> list[bytes]:
        """Stop tcpdump (SIGINT flushes) and return the captured frames."""
        import dpkt

        self.lab.stop(self.name, signal.SIGINT)
        frames: list[bytes] = []
        with open(self.file, "rb") as f:
            for _ts, buf in dpkt.pcap.Reader(f):
                frames.append(bytes(buf))
        return frames


def table_key(entry: dict[str, Any]) -> tuple[Any, ...]:
    """What must match between two nodes' tables: everything but the countdown."""
    return (
        entry["proto"],
        tuple(entry["orig"]),
        tuple(entry["reply"]),
        entry["state"],
        entry["status"],
    )


def conntrack_entries(lab: Lab, fw: str) -> list[dict[str, Any]]:
    return list(lab.control(fw, "conntrack")["entries"])
