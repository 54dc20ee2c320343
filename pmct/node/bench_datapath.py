"""Offline benchmark of the node's packet path: NFQUEUE messages in, verdicts out, no kernel queue.

``python -m pmct.node.bench_datapath [--packets 40000] [--repeat 5]`` builds NFQUEUE packet
messages (nfnetlink_queue.c nfqnl_build_packet_message() layout) of one TCP flow as iperf3
sends it with offloads off (a handshake, then 1448-byte segments, an ACK for every second one),
puts them on an AF_UNIX datagram socket and lets ``NetlinkQueue.drain()`` answer them with a
daemon's ``Datapath`` (the lab's ruleset), so every packet costs a real ``recv()`` and every
burst a real verdict ``send()``. It prints the CPU time (user + system, so the load of other
processes matters less than for wall time) per packet for

* the active and the passive node, bursts of up to 256 packets per wake-up, and
* the active node with 1 packet per wake-up (plus a ``select()``), the cost of a wake-up.

What it leaves out is the kernel's side of NFQUEUE (building the message, the reinjection in
the verdict) and the scheduler: bench_live.py measures those in the namespace lab. Numbers are
printed, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import select
import socket
import struct
import sys
import time

from pmct.config import parse_config
from pmct.lab.topology import lab_policy
from pmct.node.daemon import Daemon
from pmct.node.datapath import DrainStats
from pmct.node.forwarding import Role
from pmct.node.nfqueue import NetlinkQueue, datapath_of

__all__ = ["flow_messages", "main"]

CLIENT = bytes((198, 18, 1, 2))
SERVER = bytes((198, 18, 2, 2))
SYN, ACK, PSH = 0x02, 0x10, 0x08


def _tcp4(src: bytes, dst: bytes, sport: int, dport: int, flags: int, seq: int, ack: int,
          payload: bytes = b"") -> bytes:  # fmt: skip
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), 1, 0x4000, 64, 6, 0, src, dst)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0)
    return ip + tcp + payload


def _nla(atype: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, atype) + payload + b"\0" * (-n % 4)


def _message(pkt_id: int, payload: bytes, indev: int) -> bytes:
    attrs = (
        _nla(1, struct.pack("!IHB", pkt_id, 0x0800, 0))  # NFQA_PACKET_HDR
        + _nla(5, struct.pack("!I", indev))  # NFQA_IFINDEX_INDEV
        + _nla(10, payload)  # NFQA_PAYLOAD
    )
    body = struct.pack("!BBH", socket.AF_INET, 0, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), 3 << 8, 0, 0, 0) + body


def flow_messages(n: int) -> list[bytes]:
    """``n`` NFQUEUE packet messages of one TCP flow (indev 1 = lan0, 2 = wan0)."""
    c, s = 1000, 5000
    pkts = [
        (_tcp4(CLIENT, SERVER, 40000, 5201, SYN, c, 0), 1),
        (_tcp4(SERVER, CLIENT, 5201, 40000, SYN | ACK, s, c + 1), 2),
        (_tcp4(CLIENT, SERVER, 40000, 5201, ACK, c + 1, s + 1), 1),
    ]
    seq, data, i = c + 1, b"x" * 1448, 0
    while len(pkts) < n:
        pkts.append((_tcp4(CLIENT, SERVER, 40000, 5201, ACK | PSH, seq, s + 1, data), 1))
        seq += len(data)
        if i % 2:
            pkts.append((_tcp4(SERVER, CLIENT, 5201, 40000, ACK, s + 1, seq), 2))
        i += 1
    return [_message(j + 1, p, dev) for j, (p, dev) in enumerate(pkts[:n])]


def _queue(active: bool) -> tuple[Daemon, NetlinkQueue, socket.socket, socket.socket]:
    d = Daemon(parse_config(lab_policy(False)))
    d.ifnames.update({1: "lan0", 2: "wan0"})
    d._set_verdicts(Role.ACTIVE if active else Role.PASSIVE)
    d.engine.events = None  # what the daemon does without ct_sync and `conntrack -E`
    handler = d._make_handler()
    kernel, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for s in (kernel, ours):
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            s.setsockopt(socket.SOL_SOCKET, opt, 1 << 30)
        for force in (32, 33):  # SO_SNDBUFFORCE, SO_RCVBUFFORCE (root)
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, force, 8 << 20)
    q = NetlinkQueue.__new__(NetlinkQueue)  # no kernel queue: the socket pair stands in
    q.num, q.handler, q.on_error, q.burst = 0, handler, lambda: 0, 256
    q.batch_verdict = 1 if active else 0
    q.stats, q.dp = DrainStats(), datapath_of(handler)
    q.sock, q._qbe, q.bufsize = ours, 0, 70000
    q.flush, q._send, q._vq, q._vt = 1 << 30, None, None, None  # verdicts sent in the loop
    return d, q, kernel, ours


def _discard(sock: socket.socket) -> None:
    while True:
        try:
            sock.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return


def _run(msgs: list[bytes], active: bool, per_wake: int) -> float:
    """CPU µs per packet for answering ``msgs``, ``per_wake`` packets per wake-up."""
    d, q, kernel, ours = _queue(active)
    try:
        spent = 0.0
        fd = ours.fileno()
        for i in range(0, len(msgs), per_wake):
            for m in msgs[i : i + per_wake]:
                kernel.send(m)
            t = time.process_time()
            if per_wake < q.burst:  # as the daemon's loop: select(), one drain
                select.select([fd], [], [], 0.1)
                q.drain()
            else:
                while q.drain():
                    pass
            spent += time.process_time() - t
            _discard(kernel)  # the verdicts: a full peer queue would block the next send
        if sum(d.actions) != len(msgs):
            raise RuntimeError(f"answered {sum(d.actions)} of {len(msgs)} packets")
        return spent / len(msgs) * 1e6
    finally:
        kernel.close()
        ours.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pmct.node.bench_datapath", description=__doc__)
    ap.add_argument("--packets", type=int, default=40000)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args(argv)
    from pmct.accel import compiled_modules

    compiled = {p.stem.split(".")[0] for p in compiled_modules()}
    print(
        f"engine {'compiled' if 'core' in compiled else 'interpreted'}, datapath "
        f"{'compiled' if 'datapath' in compiled else 'interpreted'}; {a.packets} packets, "
        f"median of {a.repeat} (min..max), CPU µs per packet"
    )
    msgs = flow_messages(a.packets)
    cases: list[tuple[str, bool, int]] = [
        ("active, bursts", True, 256),
        ("passive, bursts", False, 256),
        ("active, 1 packet per wake-up", True, 1),
    ]
    for name, active, per_wake in cases:
        runs = sorted(_run(msgs, active, per_wake) for _ in range(a.repeat))
        print(f"  {name:<30} {runs[len(runs) // 2]:6.2f}  ({runs[0]:.2f}..{runs[-1]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
