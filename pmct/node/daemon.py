"""``pmct run``: the node's event loop around the engine (the NFQUEUE loop shell).

What it does, in order (and undoes, in reverse, on exit or SIGTERM):

1. checks: root, the data interfaces exist, no other daemon on the control socket;
2. passive start: the layer-2 silence goes on first, so the node never emits a frame while
   it takes the cluster MAC and addresses;
3. promiscuous mode, cluster MAC and addresses, per-interface forwarding (netlink.py);
4. binds the NFQUEUE (nfqueue.py), then installs raw NOTRACK + NFQUEUE and the REJECT helper
   (netfilter.py) — the queue exists before any packet is sent to it;
5. control socket, state file, optional metrics port; tells systemd READY=1.

Per packet (the hot path, datapath.py, compiled with mypyc): the engine classifies
(``Engine.process_ip``), then an active node asks the policy and applies its verdict, a passive
node drops. Everything the engine cannot parse (ctstate DROPPED) and every internal error gets
the fail mode's verdict (open: accept, closed: drop) and is counted; the daemon never dies on
input.

ct_sync (``[sync]``, syncshell.py) runs in the same loop: its socket is in the select() set, its
one timer bounds the select() timeout, and the packet path polls it every POLL seconds (a
loaded queue may keep the loop from select() for long). The sync interface is never queued
and never silenced. In ``replicate`` mode a passive node does not run the engine on traffic
(``tracks_wire``): its table is the master's stream. A node in initial sync is not ready:
``ping``/``status`` say so, the role file says ``passive not-ready``, and ``promote`` refuses
unless forced.

Housekeeping (``_service``) runs every SERVICE_INTERVAL seconds of packet time *inside* the
packet callback as well as from the idle loop, because netfilterqueue's non-blocking
``run()`` only returns once the queue is empty, which under load may be never: control
requests, the state file, engine expiry, event fan-out and the systemd watchdog are all
serviced from there. One thread: the engine is never touched concurrently.

Rules: this module owns the clock (time.monotonic() is the engine's ``now``) and the order
of operations; decisions live in policy.py, the engine, and forwarding.py.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, Final

from pmct.config import Config
from pmct.conntrack.constants import CTSTATE_NAMES, CtState, Status
from pmct.conntrack.core import Engine, EventType
from pmct.node import fence, metrics
from pmct.node.capture import RingCapture, ring_bytes
from pmct.node.control import ControlError, ControlServer
from pmct.node.datapath import Datapath, NfqCallback
from pmct.node.forwarding import REQUESTS, Forwarding, Role, StateFile
from pmct.node.natshell import NatShell, link_addresses
from pmct.node.netfilter import QueueRules, Silence
from pmct.node.netlink import LinkError, Links
from pmct.node.nfqueue import NetlinkQueue, Queue, read_queue_stats
from pmct.node.policy import CTSTATE_MARK_BITS, Action, describe
from pmct.node.syncshell import SyncShell

__all__ = ["Daemon", "DaemonError", "entry_to_dict", "run"]

log = logging.getLogger("pmct.daemon")

SERVICE_INTERVAL: Final = 0.05  # seconds between housekeeping rounds
STATE_POLL: Final = 0.1
RATE_WINDOW: Final = 5.0  # seconds over which packets/s is computed
ACTIVE_COALESCE: Final = 0.0001  # the active node sleeps this long after a small burst ...
PASSIVE_COALESCE: Final = 0.0005  # ... a passive node this long ...
COALESCE_BELOW: Final = 64  # ... of fewer packets than this (netlink backend)

_DROPPED: Final = int(CtState.DROPPED)
_SEEN_REPLY: Final = int(Status.SEEN_REPLY)
_ASSURED: Final = int(Status.ASSURED)
_EVENT_NAMES: Final = {
    int(EventType.NEW): "NEW",
    int(EventType.UPDATE): "UPDATE",
    int(EventType.DESTROY): "DESTROY",
}
_PROTO_NAMES: Final = {
    1: "icmp",
    6: "tcp",
    17: "udp",
    33: "dccp",
    47: "gre",
    58: "icmpv6",
    132: "sctp",
    136: "udplite",
}


class DaemonError(RuntimeError):
    """The daemon cannot start (the message says why)."""


class _Stop(Exception):
    """Raised from the packet callback to leave netfilterqueue's run() when asked to stop."""


def entry_to_dict(conn: Any, now: float) -> dict[str, Any]:
    """One connection as plain data (``pmct conntrack -L --json``; tests compare tables)."""
    from pmct.replay import l4state_text

    o, r = conn.orig, conn.reply
    d: dict[str, Any] = {
        "proto": _PROTO_NAMES.get(conn.proto, str(conn.proto)),
        "orig": [o.src_text(), o.dst_text(), o.sport, o.dport],
        "reply": [r.src_text(), r.dst_text(), r.sport, r.dport],
        "state": l4state_text(conn) if conn.proto in (6, 132) else "",
        "status": int(conn.status) & ~int(Status.CONFIRMED),
        "timeout": max(0, int(conn.expires - now + 1e-6)),
        "mark": conn.mark,
    }
    return d


def _state_label(conn: Any) -> str:
    if conn.proto in (6, 132):
        from pmct.replay import l4state_text

        return l4state_text(conn)
    st = conn.status
    if st & _ASSURED:
        return "ASSURED"
    return "REPLIED" if st & _SEEN_REPLY else "UNREPLIED"


class _Systemd:
    """sd_notify(3) without libsystemd: READY=1, STATUS=, WATCHDOG=1."""

    def __init__(self) -> None:
        addr = os.environ.get("NOTIFY_SOCKET", "")
        self.sock: socket.socket | None = None
        if addr:
            if addr[0] == "@":
                addr = "\0" + addr[1:]
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                self.sock.connect(addr)
            except OSError as e:
                log.warning("NOTIFY_SOCKET %s: %s", addr, e)
                self.sock = None
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        self.watchdog = (
            int(usec) / 2e6 if usec.isdigit() and (not pid or pid == str(os.getpid())) else 0.0
        )
        self.next_ping = 0.0

    def notify(self, msg: str) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.send(msg.encode())

    def tick(self, now: float) -> None:
        if self.watchdog and now >= self.next_ping:
            self.next_ping = now + self.watchdog
            self.notify("WATCHDOG=1")


class _MetricsHttp:
    """GET anything -> the Prometheus text; one request per connection, never blocks."""

    def __init__(self, addr: tuple[str, int], render: Callable[[], str]) -> None:
        fam = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(addr)
        self.sock.listen(8)
        self.sock.setblocking(False)
        self.render = render
        self.clients: dict[int, tuple[socket.socket, bytearray, float]] = {}

    def fds(self) -> list[int]:
        return [self.sock.fileno(), *self.clients]

    def service(self, readable: set[int], now: float) -> None:
        if self.sock.fileno() in readable:
            with contextlib.suppress(OSError):
                s, _ = self.sock.accept()
                s.setblocking(False)
                self.clients[s.fileno()] = (s, bytearray(), now)
        for fd, (s, buf, since) in list(self.clients.items()):
            if fd in readable:
                try:
                    data = s.recv(8192)
                except OSError:
                    data = b""
                buf += data
                if not data or b"\r\n\r\n" in buf or b"\n\n" in buf:
                    self._answer(fd, s, bool(data))
                    continue
            if now - since > 5.0:
                self._close(fd)

    def _answer(self, fd: int, s: socket.socket, ok: bool) -> None:
        if ok:
            body = self.render().encode()
            head = (
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            with contextlib.suppress(OSError):
                s.setblocking(True)
                s.settimeout(1.0)
                s.sendall(head + body)
        self._close(fd)

    def _close(self, fd: int) -> None:
        entry = self.clients.pop(fd, None)
        if entry is not None:
            entry[0].close()

    def close(self) -> None:
        for fd in list(self.clients):
            self._close(fd)
        self.sock.close()


class Daemon:
    """One node. ``run()`` blocks until SIGTERM/SIGINT and returns an exit status."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.engine = Engine(cfg.conntrack, events=True, helpers=cfg.helpers.mapping())
        self.ruleset = cfg.policy.ruleset()
        self.role = Role.ACTIVE if cfg.node.role == "active" else Role.PASSIVE
        self.t0 = time.monotonic()
        self.actions = [0, 0, 0]  # by Action value: drop, accept, reject
        self.errors = {"callback": 0, "unparsed": 0}
        pol = cfg.policy
        # The per-packet path (datapath.py, compiled): active, packets, tracks_wire, sync_due,
        # watch_events and _next_service below are properties that live in it.
        self.dp = Datapath(
            self.engine,
            self.ruleset.decide,
            {},
            ctstate_bits=CTSTATE_MARK_BITS,
            mark_on=pol.ctstate_mark,
            mark_mask=pol.ctstate_mark_mask,
            reject_mark=pol.reject_mark,
            fail_open=cfg.queue.fail_open,
            errors=self.errors,
            actions=self.actions,
            sync_service=self._sync_service,
            fan_out=self._fan_out_events,
        )
        self.active = False  # what the packet callback reads; set through _set_verdicts
        self.packets = 0
        self.role_changes = 0
        self.ready = False
        self.watch_events = False  # someone runs `pmct conntrack -E`
        self._stop_requested = False
        self._next_service = 0.0
        self._next_state_poll = 0.0
        self._next_expire = 0.0
        self._last_error_log = 0.0
        self._rate: collections.deque[tuple[float, int]] = collections.deque(maxlen=64)
        self.links: Links | None = None
        self.queue: Queue | NetlinkQueue | None = None
        self.ifnames: dict[int, str] = self.dp.names  # ifindex -> name, kept current by Links
        self.rules: QueueRules | None = None
        self.ring_mode = cfg.queue.passive_capture == "ring"
        self.silence = Silence(
            cfg.interfaces.data, ingress_drop=self.ring_mode, ipv6=cfg.queue.ipv6
        )
        self.capture: RingCapture | None = None  # the passive node's ring (capture.py)
        self.capture_closed: dict[str, Any] = {}  # the counters of rings closed before
        self.control: ControlServer | None = None
        self.http: _MetricsHttp | None = None
        self.state_file = StateFile(cfg.node.state_file)
        self.forwarding: Forwarding | None = None
        self.systemd = _Systemd()
        self.sync: SyncShell | None = None  # ct_sync, when [sync] enabled
        self.fence_file: str | None = None  # RUN_DIR/fence.nft while we run (fence.py)
        self.nat: NatShell | None = None  # NAT (natshell.py), when [nat] has rules
        self.tracks_wire = True  # False: a replicate-mode standby (its table is the stream)
        self.sync_due = float("inf")  # the packet path services ct_sync from this time on
        self._wakeup_r = -1
        self._wakeup_w = -1

    # State the packet path reads lives in the Datapath (a C struct field when compiled).

    @property
    def active(self) -> bool:
        return self.dp.active

    @active.setter
    def active(self, v: bool) -> None:
        self.dp.active = v

    @property
    def packets(self) -> int:
        return self.dp.packets

    @packets.setter
    def packets(self, v: int) -> None:
        self.dp.packets = v

    @property
    def tracks_wire(self) -> bool:
        return self.dp.tracks_wire

    @tracks_wire.setter
    def tracks_wire(self, v: bool) -> None:
        self.dp.tracks_wire = v

    @property
    def sync_due(self) -> float:
        return self.dp.sync_due

    @sync_due.setter
    def sync_due(self, v: float) -> None:
        self.dp.sync_due = v

    @property
    def watch_events(self) -> bool:
        return self.dp.watch_events

    @watch_events.setter
    def watch_events(self, v: bool) -> None:
        self.dp.watch_events = v

    @property
    def _next_service(self) -> float:
        return self.dp.next_service

    @_next_service.setter
    def _next_service(self, v: float) -> None:
        self.dp.next_service = v

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> int:
        self._install_signals()
        try:
            self.setup()
        except (DaemonError, LinkError, ControlError, OSError, RuntimeError) as e:
            log.error("cannot start: %s", e)
            self.teardown()
            return 1
        try:
            self.loop()
        finally:
            self.teardown()
        return 0

    def setup(self) -> None:
        cfg = self.cfg
        if os.geteuid() != 0:
            raise DaemonError("pmct run needs root (NFQUEUE, iptables, nft, netlink)")
        if not cfg.interfaces.data:
            raise DaemonError("interfaces.data is empty: nothing to queue")
        os.makedirs(cfg.node.run_dir, mode=0o755, exist_ok=True)
        # The control socket first: it refuses to start next to a running daemon.
        self.control = ControlServer(cfg.node.control_socket, self.handle)
        # Before anything can forward: how to silence this node if the daemon dies (fence.py).
        self.fence_file = fence.write(cfg.node.run_dir, cfg.interfaces.data)
        self.links = links = Links(self.ifnames)
        for name in (*cfg.interfaces.data, *([cfg.interfaces.sync] if cfg.interfaces.sync else [])):
            links.index(name)  # raises LinkError naming a missing interface
        self.forwarding = Forwarding(
            cfg.interfaces.data, cfg.cluster, links, self.silence, self._set_verdicts
        )
        self.forwarding.start(self.role)
        for name in cfg.interfaces.data:
            if cfg.cluster.promisc:
                links.set_promisc(name)
        for ci in cfg.cluster.interfaces:
            if ci.mac:
                links.set_mac(ci.name, ci.mac)
            for a in ci.addresses:
                links.add_address(ci.name, a)
        if cfg.nat.enabled:  # before the queue: every entry gets its binding from the start
            self.nat = NatShell(cfg.nat, cfg.cluster, lambda name: link_addresses(links, name))
            self.nat.attach(self.engine)  # active and passive alike: the same bindings
            NatShell.kernel_settings(links, cfg.interfaces.data)
            self.dp.nat = self.nat.packet  # used by the active node only (datapath.py)
        if cfg.sync.enabled:  # before the queue: a replicate standby never tracks the wire
            self.sync = SyncShell(
                cfg.sync,
                cfg.interfaces.sync,
                self.engine,
                master=self.role is Role.ACTIVE,
                run_dir=cfg.node.run_dir,
                now=time.monotonic(),
                on_role=self._on_sync_role,
                on_ready=self._on_sync_ready,
            )
            self.tracks_wire = self.sync.tracks_wire
        q = cfg.queue
        if q.backend == "netlink":
            self.queue = NetlinkQueue(
                q.num,
                self._make_handler(),
                self._on_packet_error,
                max_len=q.max_len,
                rcvbuf=q.rcvbuf,
                fail_open=q.fail_open,
                gso=q.gso,
                verdict_thread=q.verdict_thread,
            )
        else:
            self.queue = Queue(
                q.num,
                self._make_callback(),
                max_len=q.max_len,
                rcvbuf=q.rcvbuf,
                fail_open=q.fail_open,
            )
        self._set_verdicts(Role.ACTIVE if self.active else Role.PASSIVE)  # sync the batch verdict
        self.rules = QueueRules(
            cfg.interfaces.data,
            q.num,
            bypass=q.fail_open,
            ipv6=q.ipv6,
            reject_mark=cfg.policy.reject_mark,
        )
        self.rules.install()
        self.forwarding.finish_start(self.role)
        self.state_file.write(self.role, self.sync_ready(time.monotonic()))
        addr = cfg.metrics.address()
        if addr is not None:
            self.http = _MetricsHttp(addr, lambda: metrics.render_prometheus(self.status()))
            log.info("metrics on http://%s:%d/metrics", *addr)
        self.ready = True
        log.info(
            "%s ready: %s on %s, queue %d fail-%s, control %s, state file %s",
            cfg.node.name,
            self.role.label,
            ",".join(cfg.interfaces.data),
            q.num,
            q.fail,
            cfg.node.control_socket,
            cfg.node.state_file,
        )
        self.systemd.notify(f"READY=1\nSTATUS={self.role.label}")

    def teardown(self) -> None:
        """Undo everything setup() did, whatever point it reached; never raises."""
        self.ready = False
        self.systemd.notify("STOPPING=1")
        steps: list[tuple[str, Callable[[], None]]] = []
        if self.links is not None:
            steps.append(("interfaces", self.links.undo_all))
        if self.rules is not None:
            steps.append(("queue rules", self.rules.remove))
        if self.queue is not None:
            steps.append(("queue", self.queue.close))
        if self.capture is not None:
            steps.append(("ring", self.capture.close))
        steps.append(("silence", self.silence.disable))
        if self.sync is not None:
            steps.append(("sync socket", self.sync.close))
        if self.http is not None:
            steps.append(("metrics", self.http.close))
        if self.control is not None:
            steps.append(("control socket", self.control.close))
        steps.append(("state file", self.state_file.remove))
        if self.fence_file is not None:  # a clean exit leaves nothing that forwards
            steps.append(("fence file", lambda: fence.remove(self.cfg.node.run_dir)))
        if self.links is not None:
            steps.append(("netlink", self.links.close))
        for what, step in steps:
            try:
                step()
            except Exception as e:
                log.warning("teardown: %s: %s", what, e)
        self.links = self.queue = self.rules = self.control = self.http = None
        self.capture = None
        self.sync = None
        self.sync_due = float("inf")
        log.info("stopped; everything pmct installed is removed")

    def _install_signals(self) -> None:
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self._wakeup_r, self._wakeup_w = r, w
        signal.set_wakeup_fd(w)

        def stop(signum: int, _frame: Any) -> None:
            self._stop_requested = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, lambda *_: log.info("SIGHUP ignored: restart to reload"))

    # ------------------------------------------------------------------ loop

    def loop(self) -> None:
        assert self.queue is not None and self.control is not None
        qfd = self.queue.fd
        while not self._stop_requested:
            now = time.monotonic()
            timeout = max(0.0, min(self._next_service - now, SERVICE_INTERVAL))
            rfds = [qfd, self._wakeup_r, *self.control.read_fds()]
            if self.http is not None:
                rfds += self.http.fds()
            capture = self.capture
            if capture is not None:
                rfds.append(capture.fd)
            if self.sync is not None:
                rfds.append(self.sync.fileno())
                timeout = max(0.0, min(timeout, self.sync_due - now))
            try:
                r, w, _ = select.select(rfds, self.control.write_fds(), [], timeout)
            except InterruptedError:
                continue
            if self._wakeup_r in r:
                with contextlib.suppress(OSError):
                    os.read(self._wakeup_r, 512)
            drained: int | None = None
            if qfd in r:
                try:
                    drained = self.queue.drain()
                except _Stop:
                    break
                except OSError as e:  # recv failed: log, keep going
                    log.warning("queue recv: %s", e)
            if capture is not None and capture.fd in r:
                capture.drain(self.dp)
            if self.sync is not None:
                self._sync_service(time.monotonic())
            now = time.monotonic()
            # Housekeeping when it is due or another fd is ready, not after every burst: a
            # wake-up for a few packets must stay cheap (docs/performance.md, node section).
            if (
                now >= self._next_service
                or w
                or len(r) > (qfd in r) + (capture is not None and capture.fd in r)
            ):
                try:
                    self._service(now, set(r))
                except _Stop:
                    break
            if (
                drained is not None
                and 0 < drained < COALESCE_BELOW
                and (self.sync is None or self.sync.fileno() not in r)
            ):
                # Interrupt moderation, as a NIC's rx-usecs: a wake-up costs ~10 µs (select,
                # the empty recv that ends the burst, the batch verdict, the context switch),
                # so after a small burst let packets gather for a moment. The active node
                # waits briefly (it adds that latency to the packets that arrive meanwhile);
                # a passive node only drops and waits longer. Not while ct_sync datagrams
                # arrive: its ACKs keep an initial sync moving.
                time.sleep(ACTIVE_COALESCE if self.active else PASSIVE_COALESCE)

    def _set_verdicts(self, role: Role) -> None:
        if self.ring_mode and role is Role.ACTIVE:
            self._switch_capture(role)  # the ring's last packets are tracked as a passive's
        self.active = role is Role.ACTIVE
        if isinstance(self.queue, NetlinkQueue):  # what most packets of a burst get
            self.queue.batch_verdict = 1 if self.active else 0
        if self.ring_mode and role is Role.PASSIVE:
            self._switch_capture(role)

    def _switch_capture(self, role: Role) -> None:
        """Open the passive ring before the ingress drop goes on; close it after it is gone.

        Forwarding calls this before ``silence.enable()`` on a demotion and after
        ``silence.disable()`` on a promotion, so the engine sees every packet: in the moment
        between, a packet may come both ways (tracked twice, as a retransmission), never
        neither way.
        """
        if self.links is None:  # not set up (a unit test of the packet path): no ring
            return
        if role is Role.PASSIVE and self.capture is None:
            idx = [self.links.index(name) for name in self.cfg.interfaces.data]
            self.capture = RingCapture(
                idx,
                ipv6=self.cfg.queue.ipv6,
                size=self.cfg.queue.ring_size,
                on_error=self._on_packet_error,
            )
        elif role is Role.ACTIVE and self.capture is not None:
            capture, self.capture = self.capture, None
            capture.close(self.dp, since=time.monotonic())
            self.capture_closed = _add_counts(self.capture_closed, capture.stats())

    def _make_handler(self) -> Callable[[bytes, int, int], tuple[int, int, bytes | None]]:
        """The per-packet decision: ``(payload, indev, mark) -> (verdict, mark, payload)``.

        datapath.py's ``Datapath.handle`` (compiled); it counts the packet and its action. It
        may raise only on a bug; the backends turn that into the fail-mode verdict.
        """
        dp = self.dp
        dp.oif = (
            self.links.route_oif if (self.links is not None and self.ruleset.needs_oif) else None
        )
        return dp.handle

    def _make_callback(self) -> Callable[[Any], None]:
        """netfilterqueue's per-packet callback around ``Datapath.handle``."""
        self._make_handler()
        need_mark = (
            self.cfg.policy.ctstate_mark
            or any(r.action is Action.REJECT for r in self.ruleset.rules)
            or self.ruleset.default is Action.REJECT
        )
        return NfqCallback(
            self.dp, self._on_packet_error, lambda now: self._service(now, None), need_mark
        )

    def _on_packet_error(self) -> int:
        """Count an internal error; the fail-mode verdict (a passive node always drops)."""
        self.errors["callback"] += 1
        now = time.monotonic()
        if now - self._last_error_log > 10.0:
            self._last_error_log = now
            log.error("packet handling failed (fail mode verdict):\n%s", traceback.format_exc())
        v = 1 if self.cfg.queue.fail_open and self.active else 0
        self.actions[v] += 1
        return v

    def _service(self, now: float, readable: set[int] | None) -> None:
        """Housekeeping; raises _Stop when a stop was requested."""
        self._next_service = now + SERVICE_INTERVAL
        try:
            if self.control is not None:
                self.control.service(0.0)
            if self.http is not None:
                if readable is None:
                    r, _, _ = select.select(self.http.fds(), [], [], 0)
                    readable = set(r)
                self.http.service(readable, now)
            if now >= self._next_state_poll:
                self._next_state_poll = now + STATE_POLL
                want = self.state_file.poll()
                why = self.promotion_refused(now) if want is Role.ACTIVE else None
                if why is not None and self.role is not Role.ACTIVE:
                    log.warning("state file asks for active: refused, %s", why)
                    self.state_file.write(self.role, False)
                elif want is not None:
                    self.set_role(want, source="state file")
            if now >= self._next_expire:
                self._next_expire = now + 1.0
                self.engine.expire(now)
                self._rate.append((now, self.packets))
            self._fan_out_events(now)
            self.systemd.tick(now)
        except Exception:  # housekeeping must not stop the packet loop
            log.exception("housekeeping failed")
        if self._stop_requested:
            raise _Stop

    def _sync_service(self, now: float) -> None:
        """ct_sync's turn: engine events in, socket, timer, datagrams out (syncshell.py)."""
        sync = self.sync
        if sync is None:
            return
        try:
            self._fan_out_events(now)
            sync.service(now)
        except Exception:  # a bug in the sync path must not stop the packet loop
            self.errors["sync"] = self.errors.get("sync", 0) + 1
            if now - self._last_error_log > 10.0:
                self._last_error_log = now
                log.exception("ct_sync service failed")
        t = sync.deadline()
        self.sync_due = sync.next_poll if t is None else min(t, sync.next_poll)

    def _on_sync_role(self, master: bool, reason: str) -> None:
        """The sync core changed role by itself (split brain, docs/protocol.md §6)."""
        self.set_role(Role.ACTIVE if master else Role.PASSIVE, source=f"ct_sync {reason}")

    def _on_sync_ready(self, ready: bool) -> None:
        self.state_file.write(self.role, ready)
        self.systemd.notify(f"STATUS={self.role.label}{'' if ready else ' not-ready'}")

    def sync_ready(self, now: float) -> bool:
        """False while ct_sync's initial sync runs (the readiness gate)."""
        return self.sync is None or self.sync.ready(now)

    def promotion_refused(self, now: float) -> str | None:
        """Why this node must not be promoted now (None: it may)."""
        sync = self.sync
        if sync is None or sync.ready(now):
            return None
        p = sync.core.progress(now=now)
        return (
            f"not ready: ct_sync initial sync {p.state.lower()}, {p.done} of {p.total} "
            f"entries ({p.percent:.0f} %, {p.rate:.0f}/s) from master {p.master}"
        )

    def _fan_out_events(self, now: float) -> None:
        events = self.engine.drain_events()
        if events and self.sync is not None:
            self.sync.engine_events(events, now)
        self.watch_events = self.control is not None and self.control.subscribers > 0
        if self.sync is None and (self.engine.events is not None) != self.watch_events:
            # Without ct_sync only `conntrack -E` reads events: record them only while someone
            # watches, since recording them keeps every packet off the engine's fast path.
            self.engine.events = [] if self.watch_events else None
        if not events or not self.watch_events:
            return
        assert self.control is not None
        from pmct.replay import format_conntrack_line

        for etype, conn in events:
            name = _EVENT_NAMES.get(int(etype), str(etype))
            line = f"{'[' + name + ']':>9} {format_conntrack_line(conn, now)}"
            self.control.publish({"event": name, "line": line})

    # ------------------------------------------------------------------ roles

    def set_role(self, role: Role, *, source: str) -> bool:
        assert self.forwarding is not None
        changed = self.forwarding.switch(role)
        if changed:
            self.role = role
            self.role_changes += 1
            log.info("role -> %s (%s)", role.label, source)
            self.systemd.notify(f"STATUS={role.label}")
        sync = self.sync
        now = time.monotonic()
        if sync is not None:  # ct_sync follows the forwarding role (MASTER_ANNOUNCE on promote)
            if self.role is Role.ACTIVE:
                sync.promote(now)
            else:
                sync.demote(now)
            self.tracks_wire = sync.tracks_wire
        self.state_file.write(self.role, self.sync_ready(now))
        return changed

    # ------------------------------------------------------------------ control

    def handle(self, req: dict[str, Any]) -> Any:
        cmd = req["cmd"]
        now = time.monotonic()
        if cmd == "ping":
            return {
                "ready": self.ready and self.sync_ready(now),
                "role": self.role.label,
                "pid": os.getpid(),
            }
        if cmd == "status":
            return self.status()
        if cmd in ("promote", "demote", "role"):
            if cmd == "role":
                want = REQUESTS.get(str(req.get("role", "")).lower())
                if want is None:
                    raise ValueError("role must be active or passive")
                role = want
            else:
                role = Role.ACTIVE if cmd == "promote" else Role.PASSIVE
            why = self.promotion_refused(now) if role is Role.ACTIVE else None
            if why is not None and self.role is not Role.ACTIVE:
                if not req.get("force"):
                    log.warning("promote refused: %s", why)
                    return {"role": self.role.label, "changed": False, "refused": why}
                log.warning("promote FORCED although %s", why)
            changed = self.set_role(role, source="control socket")
            return {"role": self.role.label, "changed": changed}
        if cmd == "conntrack":
            from pmct.replay import format_conntrack_line

            conns = sorted(self.engine.table, key=lambda c: c.id)
            return {
                "lines": [format_conntrack_line(c, now) for c in conns],
                "entries": [entry_to_dict(c, now) for c in conns],
            }
        if cmd == "expect":  # conntrack -L expect (pmct/node/helpers.py)
            from pmct.node.helpers import expect_listing

            return expect_listing(self.engine, now)
        if cmd == "stats":
            return metrics.render_stats(self.status())
        raise ValueError(f"unknown command {cmd!r}")

    def _ring_status(self) -> dict[str, Any]:
        now = self.capture.stats() if self.capture is not None else {}
        total = _add_counts(self.capture_closed, now)
        total["open"] = self.capture is not None
        total["size"] = ring_bytes(self.cfg.queue.ring_size)  # what each ring really has
        return total

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        cfg = self.cfg
        by: dict[str, dict[str, int]] = {}
        for c in self.engine.table:
            p = _PROTO_NAMES.get(c.proto, str(c.proto))
            label = _state_label(c)
            d = by.setdefault(p, {})
            d[label] = d.get(label, 0) + 1
        qs = read_queue_stats(cfg.queue.num)
        rate = 0.0
        if self._rate:
            t_old, n_old = self._rate[0]
            for t, n in self._rate:
                if now - t <= RATE_WINDOW:
                    t_old, n_old = t, n
                    break
            if now - t_old > 0.2:
                rate = (self.packets - n_old) / (now - t_old)
        verdicts = self.engine.verdicts
        return {
            "version": 1,
            "node": cfg.node.name,
            "role": self.role.label,
            "ready": self.ready and self.sync_ready(now),
            "pid": os.getpid(),
            "uptime": round(now - self.t0, 3),
            "config": cfg.source,
            "interfaces": {"data": list(cfg.interfaces.data), "sync": cfg.interfaces.sync},
            "queue": {
                "num": cfg.queue.num,
                "backend": cfg.queue.backend,
                "fail": cfg.queue.fail,
                "queued": qs.id_sequence if qs else None,
                "waiting": qs.waiting if qs else None,
                "queue_dropped": qs.queue_dropped if qs else None,
                "user_dropped": qs.user_dropped if qs else None,
                "passive_capture": cfg.queue.passive_capture,
                # the passive node's packet ring (capture.py): frames tracked and missed
                **({"ring": self._ring_status()} if self.ring_mode else {}),
                # netlink backend: packets per wake-up, batch and single verdicts
                **(
                    {"drain": self.queue.stats.as_dict()}
                    if isinstance(self.queue, NetlinkQueue)
                    else {}
                ),
            },
            "packets": {"total": self.packets, "per_second": round(rate, 1)},
            "ctstates": {CTSTATE_NAMES[i]: verdicts[i] for i in range(len(verdicts))},
            "verdicts": {
                "accept": self.actions[1],
                "drop": self.actions[0],
                "reject": self.actions[2],
            },
            "errors": dict(self.errors),
            "invalid": dict(self.engine.invalid_reasons),
            "conntrack": {
                "entries": len(self.engine.table),
                "limit": cfg.conntrack.max_entries,
                "by_proto_state": by,
                "stats": dict(self.engine.stats),
            },
            "rules": [
                {"rule": describe(r), "hits": h}
                for r, h in zip(self.ruleset.rules, self.ruleset.hits, strict=False)
            ],
            "default": {"action": self.ruleset.default.name.lower(), "hits": self.ruleset.hits[-1]},
            "role_changes": self.role_changes,
            "event_subscribers": self.control.subscribers if self.control is not None else 0,
            "announcements": self.forwarding.announced if self.forwarding else 0,
            "sync": self.sync.status(now) if self.sync is not None else {"state": "not configured"},
            "nat": dict(self.nat.status()) if self.nat is not None else {"state": "not configured"},
        }


def _add_counts(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Counters of two rings added up (a node opens a new ring at each demotion)."""
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, int):
            out[k] = out.get(k, 0) + v
    return out


def setup_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stdout,
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )


def run(cfg: Config) -> int:
    """``pmct run``: set up, loop until SIGTERM/SIGINT, tear down; the exit status."""
    setup_logging(cfg.node.log_level)
    return Daemon(cfg).run()
