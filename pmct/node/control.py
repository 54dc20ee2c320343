"""The control socket: a root-only unix stream socket speaking one JSON object per line.

Owns the socket file. The daemon's loop calls ``ControlServer.service()``; the CLI uses
``request()`` and ``subscribe()``.

Protocol (schema shared by both sides, version 1):

* request:  ``{"cmd": NAME, ...arguments}`` + newline
* response: ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": TEXT}`` + newline
* ``{"cmd": "events"}`` answers ``{"ok": true, "result": "subscribed"}`` and then streams one
  ``{"event": "NEW"|"UPDATE"|"DESTROY", "line": TEXT}`` per table change until the client
  hangs up.

Commands (the daemon's handler decides what they do): ping, status, conntrack, stats,
promote, demote, events.

Rules:
1. Root only: the socket file is created mode 0600 (umask during bind, so there is no window)
   and every peer's SO_PEERCRED uid is checked; anything else is closed at once.
2. The server never blocks the packet loop: sockets are non-blocking, output is buffered per
   client, a client that does not read (more than MAX_OUT bytes pending) is dropped, and a
   request line longer than MAX_LINE is an error.
3. A bad request is answered with an error; it never raises out of service().
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import socket
import struct
from collections.abc import Callable, Iterator
from typing import Any, Final

__all__ = [
    "PROTOCOL_VERSION",
    "ControlError",
    "ControlServer",
    "request",
    "subscribe",
]

log = logging.getLogger("pmct.control")

PROTOCOL_VERSION: Final = 1
MAX_LINE: Final = 64 * 1024
MAX_OUT: Final = 64 * 1024 * 1024
_UCRED: Final = struct.Struct("3i")  # pid, uid, gid

Handler = Callable[[dict[str, Any]], Any]


class ControlError(RuntimeError):
    """No daemon to talk to, or it answered with an error."""


class _Client:
    __slots__ = ("inbuf", "outbuf", "sock", "subscribed")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.subscribed = False


def _encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n"


class ControlServer:
    """Non-blocking server; ``handler(request) -> result`` may raise ValueError for bad input."""

    def __init__(self, path: str, handler: Handler, *, allowed_uid: int = 0) -> None:
        self.path = path
        self.handler = handler
        self.allowed_uid = allowed_uid
        self.clients: dict[int, _Client] = {}
        self._busy()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self.sock.listen(16)
        self.sock.setblocking(False)

    def _busy(self) -> None:
        """Refuse to steal the socket of a daemon that is still running."""
        if not os.path.exists(self.path):
            return
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(0.5)
            probe.connect(self.path)
        except OSError:
            return  # stale file of a dead daemon
        finally:
            probe.close()
        raise ControlError(f"another pmct daemon is listening on {self.path}")

    # ------------------------------------------------------------------ loop integration

    def read_fds(self) -> list[int]:
        return [self.sock.fileno(), *self.clients]

    def write_fds(self) -> list[int]:
        return [fd for fd, c in self.clients.items() if c.outbuf]

    def service(self, timeout: float = 0.0) -> None:
        """Accept, read, answer and flush whatever is ready (waits at most ``timeout``)."""
        try:
            r, w, _ = select.select(self.read_fds(), self.write_fds(), [], timeout)
        except InterruptedError:
            return
        for fd in r:
            if fd == self.sock.fileno():
                self._accept()
            else:
                self._read(fd)
        for fd in w:
            c = self.clients.get(fd)
            if c is not None:
                self._flush(c)

    def publish(self, obj: Any) -> None:
        """Send to every ``events`` subscriber."""
        data = None
        for c in list(self.clients.values()):
            if c.subscribed:
                data = data or _encode(obj)
                c.outbuf += data
                self._flush(c)

    @property
    def subscribers(self) -> int:
        return sum(1 for c in self.clients.values() if c.subscribed)

    def close(self) -> None:
        for fd in list(self.clients):
            self._drop(fd)
        self.sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    # ------------------------------------------------------------------ internals

    def _accept(self) -> None:
        while True:
            try:
                s, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            try:
                cred = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
                _, uid, _ = _UCRED.unpack(cred)
            except OSError:
                uid = -1
            if uid != self.allowed_uid:
                log.warning("control: refused a client with uid %d", uid)
                s.close()
                continue
            s.setblocking(False)
            self.clients[s.fileno()] = _Client(s)

    def _read(self, fd: int) -> None:
        c = self.clients.get(fd)
        if c is None:
            return
        try:
            data = c.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(fd)
            return
        c.inbuf += data
        while b"\n" in c.inbuf:
            line, _, rest = bytes(c.inbuf).partition(b"\n")
            c.inbuf = bytearray(rest)
            c.outbuf += _encode(self._answer(c, line))
        if len(c.inbuf) > MAX_LINE:
            c.inbuf.clear()
            c.outbuf += _encode({"ok": False, "error": "request too long"})
        self._flush(c)

    def _answer(self, c: _Client, line: bytes) -> dict[str, Any]:
        try:
            req = json.loads(line)
            if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                raise ValueError('a request is a JSON object with a "cmd" string')
        except ValueError as e:
            return {"ok": False, "error": f"bad request: {e}"}
        if req["cmd"] == "events":
            c.subscribed = True
            return {"ok": True, "result": "subscribed"}
        try:
            return {"ok": True, "result": self.handler(req)}
        except ValueError as e:
            return {"ok": False, "error": str(e)}
        except Exception as e:  # a bug in a handler must not take the daemon down
            log.exception("control: %s failed", req.get("cmd"))
            return {"ok": False, "error": f"internal error: {type(e).__name__}: {e}"}

    def _flush(self, c: _Client) -> None:
        while c.outbuf:
            try:
                n = c.sock.send(c.outbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(c.sock.fileno())
                return
            del c.outbuf[:n]
        if len(c.outbuf) > MAX_OUT:
            log.warning("control: dropping a client that does not read")
            self._drop(c.sock.fileno())

    def _drop(self, fd: int) -> None:
        c = self.clients.pop(fd, None)
        if c is not None:
            c.sock.close()


# ---------------------------------------------------------------------------- client side


def _connect(path: str, timeout: float) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
    except FileNotFoundError:
        s.close()
        raise ControlError(f"no pmct daemon: {path} does not exist") from None
    except PermissionError:
        s.close()
        raise ControlError(f"{path}: permission denied (the control socket is root only)") from None
    except OSError as e:
        s.close()
        raise ControlError(f"no pmct daemon on {path}: {e.strerror}") from None
    return s


def _lines(s: socket.socket) -> Iterator[bytes]:
    buf = b""
    while True:
        chunk = s.recv(1 << 20)
        if not chunk:
            if buf:
                yield buf
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line


def request(path: str, cmd: str, *, timeout: float = 10.0, **args: Any) -> Any:
    """Send one command and return its result; raises ControlError."""
    with _connect(path, timeout) as s:
        try:
            s.sendall(_encode({"cmd": cmd, **args}))
            for line in _lines(s):
                resp = json.loads(line)
                if not resp.get("ok"):
                    raise ControlError(str(resp.get("error")))
                return resp.get("result")
        except (OSError, ValueError) as e:
            raise ControlError(f"{path}: {e}") from None
    raise ControlError(f"{path}: the daemon closed the connection without an answer")


def subscribe(path: str) -> Iterator[dict[str, Any]]:
    """Yield table-change events until the daemon goes away."""
    with _connect(path, 10.0) as s:
        s.sendall(_encode({"cmd": "events"}))
        s.settimeout(None)
        first = True
        for line in _lines(s):
            obj = json.loads(line)
            if first:
                first = False
                if not obj.get("ok"):
                    raise ControlError(str(obj.get("error")))
                continue
            yield obj
