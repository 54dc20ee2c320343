"""Small traffic probes for the lab, standard library only (no ping/nc needed on the host).

``python -m pmct.lab.probe ping DST [-c N]``      ICMP echo (raw socket, root); exit 0 if all
                                                  were answered
``python -m pmct.lab.probe udp-echo --port P``    UDP echo server (until SIGTERM)
``python -m pmct.lab.probe http --bind A --port P --size N``  HTTP server answering N bytes
                                                  (no reverse DNS lookup, unlike http.server)
``python -m pmct.lab.probe udp DST PORT``         one request, exit 0 if the echo came back
``python -m pmct.lab.probe udp-refused DST PORT`` exit 0 if an ICMP port unreachable came back
                                                  (the ICMP error crossed the firewall as RELATED)

Each prints one JSON line with what happened.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from typing import Any

__all__ = ["main"]


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ping(dst: str, count: int, timeout: float, interval: float = 0.2) -> dict[str, Any]:
    ident = os.getpid() & 0xFFFF
    answered: set[int] = set()
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        for seq in range(1, count + 1):
            body = struct.pack("!HHd", ident, seq, time.time())
            hdr = struct.pack("!BBH", 8, 0, 0)
            pkt = hdr[:2] + struct.pack("!H", _csum(hdr + body)) + body
            s.sendto(pkt, (dst, 0))
            deadline = time.monotonic() + (timeout if seq == count else interval)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                r, _, _ = select.select([s], [], [], left)
                if not r:
                    break
                data, addr = s.recvfrom(2048)
                ihl = (data[0] & 15) * 4
                if len(data) < ihl + 8 or addr[0] != dst:
                    continue
                itype, _, _, rid, rseq = struct.unpack_from("!BBHHH", data, ihl)
                if itype == 0 and rid == ident:
                    answered.add(rseq)
    return {"probe": "ping", "dst": dst, "sent": count, "received": len(answered)}


def udp_request(dst: str, port: int, timeout: float) -> dict[str, Any]:
    payload = f"pmct-probe {os.getpid()} {time.time()}".encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect((dst, port))
        s.send(payload)
        try:
            data = s.recv(2048)
        except TimeoutError:
            return {"probe": "udp", "dst": dst, "port": port, "result": "timeout"}
        except ConnectionRefusedError:
            return {"probe": "udp", "dst": dst, "port": port, "result": "refused"}
    return {
        "probe": "udp",
        "dst": dst,
        "port": port,
        "result": "reply" if data == payload else "wrong reply",
    }


def udp_echo(port: int) -> None:
    stop = False

    def on_term(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", port))
        while not stop:
            r, _, _ = select.select([s], [], [], 0.2)
            if r:
                data, addr = s.recvfrom(65535)
                s.sendto(data, addr)


def http_serve(bind: str, port: int, size: int) -> None:
    import http.server
    import socketserver

    body = bytes(i % 251 for i in range(size))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True

    with Server((bind, port), Handler) as srv:  # SIGTERM's default action ends it
        srv.serve_forever(poll_interval=0.2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pmct.lab.probe")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("ping")
    p.add_argument("dst")
    p.add_argument("-c", "--count", type=int, default=3)
    p.add_argument("--timeout", type=float, default=2.0)
    h = sub.add_parser("http")
    h.add_argument("--bind", default="0.0.0.0")
    h.add_argument("--port", type=int, default=8080)
    h.add_argument("--size", type=int, default=100_000)
    e = sub.add_parser("udp-echo")
    e.add_argument("--port", type=int, default=7)
    for name in ("udp", "udp-refused"):
        u = sub.add_parser(name)
        u.add_argument("dst")
        u.add_argument("port", type=int)
        u.add_argument("--timeout", type=float, default=3.0)
    a = ap.parse_args(argv)
    if a.cmd == "http":
        http_serve(a.bind, a.port, a.size)
        return 0
    if a.cmd == "udp-echo":
        udp_echo(a.port)
        return 0
    if a.cmd == "ping":
        res = ping(a.dst, a.count, a.timeout)
        ok = res["received"] == res["sent"]
    else:
        res = udp_request(a.dst, a.port, a.timeout)
        ok = res["result"] == ("reply" if a.cmd == "udp" else "refused")
    print(json.dumps(res), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
