#!/usr/bin/env python3
"""Generate real traffic between throw-away network namespaces and capture it to a pcap.

The capture feeds the fidelity comparison (pmct vs the kernel oracle) with traffic from
today's Linux stacks: TCP with window scaling, SACK and timestamps (HTTP downloads, a bulk
iperf3 run), connection refusals (RST), UDP request/reply, ICMP echo, ICMP port-unreachable
and time-exceeded errors, over IPv4 and IPv6.

Topology (all addresses from 198.18.0.0/15 and 2001:db8::/32; nothing leaves the namespaces)::

    client c0 198.18.1.2 --- r0 198.18.1.1 [router] r1 198.18.2.1 --- s0 198.18.2.2 server

The capture runs on the router's r0 (client side), with offloads off on every veth so the
frames have wire sizes. Namespaces and processes are removed on exit, also on failure.

Usage: sudo python3 scripts/gen_traffic.py OUT.pcap [--seconds 1]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PREFIX = f"pmctg{os.getpid()}"
NS = {n: f"{PREFIX}-{n}" for n in ("client", "router", "server")}
C4, R4C, R4S, S4 = "198.18.1.2", "198.18.1.1", "198.18.2.1", "198.18.2.2"
C6, R6C, R6S, S6 = "2001:db8:1::2", "2001:db8:1::1", "2001:db8:2::1", "2001:db8:2::2"


def sh(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = (["ip", "netns", "exec", NS[ns]] if ns else []) + list(args)
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=60)


def bg(*args: str, ns: str) -> subprocess.Popen:
    return subprocess.Popen(
        ["ip", "netns", "exec", NS[ns], *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def up() -> None:
    for ns in NS.values():
        sh("ip", "netns", "add", ns)
    sh(
        "ip",
        "link",
        "add",
        "c0",
        "netns",
        NS["client"],
        "type",
        "veth",
        "peer",
        "r0",
        "netns",
        NS["router"],
    )
    sh(
        "ip",
        "link",
        "add",
        "s0",
        "netns",
        NS["server"],
        "type",
        "veth",
        "peer",
        "r1",
        "netns",
        NS["router"],
    )
    for ns, dev, a4, a6 in (
        ("client", "c0", C4, C6),
        ("router", "r0", R4C, R6C),
        ("router", "r1", R4S, R6S),
        ("server", "s0", S4, S6),
    ):
        sh("ip", "addr", "add", f"{a4}/24", "dev", dev, ns=ns)
        sh("ip", "-6", "addr", "add", f"{a6}/64", "dev", dev, "nodad", ns=ns)
        sh("ip", "link", "set", dev, "up", ns=ns)
        sh("ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off", ns=ns, check=False)
        sh("ip", "link", "set", "lo", "up", ns=ns)
    sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns="router")
    sh("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1", ns="router")
    sh("ip", "route", "add", "default", "via", R4C, ns="client")
    sh("ip", "-6", "route", "add", "default", "via", R6C, ns="client")
    sh("ip", "route", "add", "default", "via", R4S, ns="server")
    sh("ip", "-6", "route", "add", "default", "via", R6S, ns="server")


def down() -> None:
    for ns in NS.values():
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


UDP_ECHO = (
    "import socket,sys\n"
    "s=socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET,"
    "socket.SOCK_DGRAM)\n"
    "s.bind((sys.argv[1],5353))\n"
    "while True:\n d,a=s.recvfrom(2048); s.sendto(d,a)\n"
)
UDP_ASK = (
    "import socket,sys\n"
    "fam=socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET\n"
    "for i in range(5):\n"
    " s=socket.socket(fam,socket.SOCK_DGRAM); s.settimeout(1)\n"
    " s.sendto(b'query %d'%i,(sys.argv[1],int(sys.argv[2])))\n"
    " try: s.recvfrom(2048)\n"
    " except OSError: pass\n"
    " s.close()\n"
)


def traffic(seconds: float) -> None:
    procs: list[subprocess.Popen] = []
    try:
        sh("dd", "if=/dev/urandom", f"of=/tmp/{PREFIX}-blob", "bs=1k", "count=512")
        procs.append(
            bg(
                sys.executable,
                "-m",
                "http.server",
                "8080",
                "--bind",
                "::",
                "--directory",
                "/tmp",
                ns="server",
            )
        )
        procs.append(bg("iperf3", "-s", "-p", "5201", ns="server"))
        procs.append(bg(sys.executable, "-c", UDP_ECHO, S4, ns="server"))
        procs.append(bg(sys.executable, "-c", UDP_ECHO, S6, ns="server"))
        time.sleep(1.0)
        sh("ping", "-c", "3", "-i", "0.2", S4, ns="client", check=False)
        sh("ping", "-6", "-c", "3", "-i", "0.2", S6, ns="client", check=False)
        sh("ping", "-c", "2", "-t", "1", S4, ns="client", check=False)  # time exceeded
        for url in (
            f"http://{S4}:8080/{PREFIX}-blob",
            f"http://[{S6}]:8080/{PREFIX}-blob",
            f"http://{S4}:8080/",
        ):
            sh("curl", "-s", "-o", "/dev/null", url, ns="client", check=False)
        sh("curl", "-s", "-o", "/dev/null", f"http://{S4}:9/", ns="client", check=False)  # RST
        sh(sys.executable, "-c", UDP_ASK, S4, "5353", ns="client", check=False)
        sh(sys.executable, "-c", UDP_ASK, S6, "5353", ns="client", check=False)
        sh(sys.executable, "-c", UDP_ASK, S4, "9999", ns="client", check=False)  # unreachable
        sh(
            "iperf3",
            "-c",
            S4,
            "-p",
            "5201",
            "-t",
            str(seconds),
            "-b",
            "40M",
            ns="client",
            check=False,
        )
        sh(
            "iperf3",
            "-c",
            S4,
            "-p",
            "5201",
            "-u",
            "-t",
            str(seconds),
            "-b",
            "2M",
            ns="client",
            check=False,
        )
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"/tmp/{PREFIX}-blob")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--seconds", type=float, default=1.0, help="length of each iperf3 run")
    args = ap.parse_args()
    try:
        up()
        cap = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                NS["router"],
                "tcpdump",
                "-i",
                "r0",
                "-s",
                "0",
                "-U",
                "-w",
                str(args.out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(1.0)
            traffic(args.seconds)
            time.sleep(0.5)
        finally:
            cap.send_signal(signal.SIGINT)
            cap.wait(timeout=10)
    finally:
        down()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
