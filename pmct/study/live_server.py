"""Traffic programs of the live study: a paced HTTP server and a short-request loop.

Why a paced server and not ``curl --limit-rate``: a rate-limited *reader* leaves data waiting
in its own socket buffer (tens to hundreds of kB), so its output file keeps growing for
seconds after the connection is dead and would count a cut session as a surviving one. Here
the *server* paces the data (``rate`` bytes/s in 20 slices a second) and curl reads at full
speed, so every byte curl writes crossed the firewall at about the moment it was written.

``python -m pmct.study.live_server serve --port P``: a threaded HTTP/1.0 server;
``GET /stream/<rate>`` sends ``rate`` bytes/s for up to an hour, ``GET /small`` 1,000 bytes.

``python -m pmct.study.live_server short --url URL --rate R``: one short request every
``1/R`` s (each a new TCP connection that ends in TIME_WAIT), errors ignored, until SIGTERM.

Only the standard library: both run inside the lab's namespaces.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["main"]

SLICES = 20  # sends per second of a stream
SMALL = b"x" * 1000


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request would flood the log

    def do_GET(self) -> None:
        if self.path == "/small":
            self._head(len(SMALL))
            self.wfile.write(SMALL)
            return
        parts = self.path.strip("/").split("/")
        if len(parts) != 2 or parts[0] != "stream" or not parts[1].isdigit():
            self.send_error(404)
            return
        rate = max(SLICES, int(parts[1]))
        chunk = b"y" * (rate // SLICES)
        self._head(rate * 3600)
        self.wfile.flush()
        t = time.monotonic()
        with contextlib.suppress(OSError):
            for _ in range(3600 * SLICES):
                self.wfile.write(chunk)
                t += 1.0 / SLICES
                time.sleep(max(0.0, t - time.monotonic()))

    def _head(self, length: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.end_headers()


def serve(port: int) -> None:
    srv = ThreadingHTTPServer(("0.0.0.0", port), _Handler)
    srv.daemon_threads = True
    srv.request_queue_size = 256
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"serving on {port}", flush=True)
    srv.serve_forever()


def short(url: str, rate: float) -> None:
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    ok = failed = 0
    t = time.monotonic()
    while not stop:
        try:
            with urllib.request.urlopen(url, timeout=2.0) as r:
                r.read()
            ok += 1
        except (TimeoutError, OSError):
            failed += 1
        t += 1.0 / rate
        time.sleep(max(0.0, t - time.monotonic()))
    print(f"short requests: {ok} ok, {failed} failed", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pmct.study.live_server")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, default=8080)
    c = sub.add_parser("short")
    c.add_argument("--url", required=True)
    c.add_argument("--rate", type=float, default=4.0)
    a = ap.parse_args(argv)
    if a.cmd == "serve":
        serve(a.port)
    else:
        short(a.url, a.rate)


if __name__ == "__main__":
    main()
