"""A long-running TCP stream that proves continuity: a counter line every 10 ms, both ways.

``python -m pmct.lab.stream serve --port P --status FILE`` accepts one connection;
``python -m pmct.lab.stream connect --host H --port P --status FILE`` opens it. Both ends then
send ``0\\n``, ``1\\n``, ``2\\n``, ... every ``--interval`` seconds and check that what they
receive is exactly the next number: a lost, duplicated or reordered byte, a reset or an EOF
is recorded as an error. Progress goes to the status file (JSON, replaced atomically every
0.1 s and at exit), which the failover test and ``pmct lab demo`` read:

    {"role": "client", "sent": 812, "received": 810, "last": 809, "errors": [],
     "state": "open", "rx_gap_max": 0.02, "since_rx": 0.004}

``state`` is ``connecting``, ``open``, ``closed`` (orderly close, by either side), ``reset`` or
``error``; only a wrong line, a reset or a socket error is an error. SIGTERM closes in order
(shutdown, read the rest until the peer closes too, so no RST), writes the final status and
exits 0. Only the standard library: it runs in any namespace.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import socket
import sys
import time
from typing import Any

__all__ = ["main", "read_status"]


def read_status(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            return json.load(f)  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


class _Peer:
    def __init__(self, role: str, status_path: str, interval: float) -> None:
        self.role = role
        self.path = status_path
        self.interval = interval
        self.sent = 0
        self.received = 0
        self.errors: list[str] = []
        self.state = "connecting"
        self.last_rx = time.monotonic()
        self.rx_gap_max = 0.0
        self.stop = False
        self._next_write = 0.0

    def write(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_write:
            return
        self._next_write = now + 0.1
        st = {
            "role": self.role,
            "pid": os.getpid(),
            "sent": self.sent,
            "received": self.received,
            "last": self.received - 1,
            "errors": self.errors[:20],
            "state": self.state,
            "rx_gap_max": round(self.rx_gap_max, 3),
            "since_rx": round(now - self.last_rx, 3),
        }
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            json.dump(st, f)
        os.replace(tmp, self.path)

    def _check(self, lines: list[bytes]) -> None:
        for line in lines:
            want = str(self.received).encode()
            if line != want:
                self.errors.append(f"expected {want.decode()}, got {line[:20]!r}")
                with contextlib.suppress(ValueError):
                    self.received = int(line)  # resynchronise to report once
            self.received += 1

    def run(self, sock: socket.socket) -> None:
        self.state = "open"
        self.last_rx = time.monotonic()
        sock.setblocking(False)
        inbuf = b""
        out = b""
        next_send = time.monotonic()
        while not self.stop:
            now = time.monotonic()
            timeout = max(0.0, min(next_send - now, 0.1))
            try:
                r, _, _ = select.select([sock], [sock] if out else [], [], timeout)
            except InterruptedError:
                continue
            if r:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    self.state = "reset"
                    self.errors.append("connection reset by peer")
                    break
                except OSError as e:
                    self.state = "error"
                    self.errors.append(f"recv: {e}")
                    break
                if not data:  # orderly close by the peer: close our side too
                    self.state = "closed"
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_WR)
                    break
                now = time.monotonic()
                self.rx_gap_max = max(self.rx_gap_max, now - self.last_rx)
                self.last_rx = now
                inbuf += data
                *lines, inbuf = inbuf.split(b"\n")
                self._check(lines)
            now = time.monotonic()
            if now >= next_send:
                out += f"{self.sent}\n".encode()
                self.sent += 1
                next_send += self.interval
                if next_send < now - 1.0:  # the process was stopped: do not burst
                    next_send = now
            if out:
                try:
                    n = sock.send(out)
                    out = out[n:]
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError as e:
                    self.state = "reset" if isinstance(e, ConnectionResetError) else "error"
                    self.errors.append(f"send: {e}")
                    break
            self.write()
        if self.stop and self.state == "open":
            self._close(sock, inbuf)
        self.write(force=True)

    def _close(self, sock: socket.socket, inbuf: bytes) -> None:
        """Orderly close: FIN, then take what is still coming until the peer's FIN."""
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            r, _, _ = select.select([sock], [], [], 0.1)
            if not r:
                continue
            try:
                data = sock.recv(65536)
            except OSError as e:
                self.state = "reset" if isinstance(e, ConnectionResetError) else "error"
                self.errors.append(f"closing: {e}")
                return
            if not data:
                self.state = "closed"
                return
            inbuf += data
            *lines, inbuf = inbuf.split(b"\n")
            self._check(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pmct.lab.stream", description=__doc__)
    ap.add_argument("mode", choices=("serve", "connect"))
    ap.add_argument("--host", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=5555)
    ap.add_argument("--status", required=True, help="JSON status file")
    ap.add_argument("--interval", type=float, default=0.01)
    ap.add_argument("--connect-timeout", type=float, default=10.0)
    a = ap.parse_args(argv)
    peer = _Peer("server" if a.mode == "serve" else "client", a.status, a.interval)

    def stop(*_: Any) -> None:
        peer.stop = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    peer.write(force=True)
    try:
        if a.mode == "serve":
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as ls:
                ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                ls.bind((a.host, a.port))
                ls.listen(1)
                while not peer.stop:
                    r, _, _ = select.select([ls], [], [], 0.1)
                    if r:
                        conn, _ = ls.accept()
                        with conn:
                            peer.run(conn)
                        break
        else:
            conn = socket.create_connection((a.host, a.port), timeout=a.connect_timeout)
            with conn:
                peer.run(conn)
    except OSError as e:
        peer.state = "error"
        peer.errors.append(str(e))
    peer.write(force=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
