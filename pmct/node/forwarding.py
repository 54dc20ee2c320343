"""Roles and the forwarding toggle: promote (passive -> active) and demote, and the state file.

Owns the node's role. The paper's ct_sync had ``/proc/net/ct_sync``: read it to learn the
role, write 1/0 to switch. pmct's equivalent is a small file (default /run/pmct/role) that
holds ``active`` or ``passive``; writing ``1``/``0`` (or ``active``/``passive``) into it asks the
daemon to promote/demote, so any cluster manager (keepalived notify scripts, pacemaker) can
drive pmct with ``echo 1 > /run/pmct/role``.

The switch, in this order so that no moment has two nodes talking or none tracking:

* promote: per-interface IPv4 forwarding on, the layer-2 silence off, verdicts from the
  policy, then gratuitous ARP / unsolicited NA from the cluster MAC (switches and neighbours
  learn the new port; on a hub with a shared MAC it is a harmless refresh).
* demote: verdicts DROP first, then silence on, then forwarding off.

Per-interface forwarding is IPv4's ``net.ipv4.conf.<if>.forwarding`` (checked on the input
interface by ip_route_input_slow()); IPv6 forwarding is global in Linux, so for IPv6 the
NFQUEUE verdict alone is the gate. Tracking never stops: a passive node tracks every packet.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from enum import IntEnum
from typing import Final

from pmct.config import ClusterConfig
from pmct.node.netfilter import Silence
from pmct.node.netlink import Links

__all__ = ["REQUESTS", "Forwarding", "Role", "StateFile"]

log = logging.getLogger("pmct.forwarding")


class Role(IntEnum):
    PASSIVE = 0
    ACTIVE = 1

    @property
    def label(self) -> str:
        return self.name.lower()


# What may be written into the state file to ask for a role.
REQUESTS: Final = {
    "1": Role.ACTIVE,
    "active": Role.ACTIVE,
    "promote": Role.ACTIVE,
    "master": Role.ACTIVE,
    "0": Role.PASSIVE,
    "passive": Role.PASSIVE,
    "demote": Role.PASSIVE,
    "backup": Role.PASSIVE,
}


class StateFile:
    """The role file: the daemon writes its role, others may write a request into it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.written = ""

    def write(self, role: Role, ready: bool = True) -> None:
        """``active`` / ``passive``, and `` not-ready`` after it while the node's ct_sync init
        sync runs (a cluster manager must not promote it; ``pmct status --ready`` says 1)."""
        text = role.label + ("\n" if ready else " not-ready\n")
        # In place (not rename): a writer that opened the file keeps writing the same inode.
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
        self.written = text

    def poll(self) -> Role | None:
        """A role someone asked for since our last write, or None."""
        try:
            with open(self.path) as f:
                text = f.read(64)
        except OSError:
            return None
        if text == self.written:
            return None
        word = text.strip().lower()
        if not word:  # a writer between truncate and write; look again next time
            return None
        role = REQUESTS.get(word)
        if role is None:
            log.warning("state file %s: ignoring %r (write 1/0 or active/passive)", self.path, word)
            self.written = text  # do not warn again until it changes
        return role

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)


class Forwarding:
    """Applies a role to the host: sysctls, silence, announcements, and the verdict switch."""

    def __init__(
        self,
        data_ifaces: Sequence[str],
        cluster: ClusterConfig,
        links: Links,
        silence: Silence,
        set_verdicts: Callable[[Role], None],
    ) -> None:
        self.ifaces = tuple(data_ifaces)
        self.cluster = cluster
        self.links = links
        self.silence = silence
        self.set_verdicts = set_verdicts
        self.role: Role | None = None
        self.announced = 0

    def _sysctl_paths(self) -> list[str]:
        return [f"/proc/sys/net/ipv4/conf/{i}/forwarding" for i in self.ifaces]

    def start(self, role: Role) -> None:
        """First application: the passive silence goes on before anything else is changed."""
        if role is Role.PASSIVE:
            self.set_verdicts(Role.PASSIVE)
            self.silence.enable()
        for p in self._sysctl_paths():
            # recorded once, so exit restores what the host had before pmct
            self.links.set_sysctl(p, "1" if role is Role.ACTIVE else "0")

    def finish_start(self, role: Role) -> None:
        """After the queue and rules are in place."""
        self.set_verdicts(role)
        self.role = role
        if role is Role.ACTIVE:
            self._announce()

    def switch(self, role: Role) -> bool:
        """Promote or demote; False when already in that role."""
        if role == self.role:
            return False
        if role is Role.ACTIVE:
            for p in self._sysctl_paths():
                self.links.write_sysctl(p, "1")
            self.silence.disable()
            self.set_verdicts(Role.ACTIVE)
            self.role = Role.ACTIVE
            self._announce()
            log.info("promoted: active (forwarding, talking on %s)", ",".join(self.ifaces))
        else:
            self.set_verdicts(Role.PASSIVE)
            self.silence.enable()
            for p in self._sysctl_paths():
                self.links.write_sysctl(p, "0")
            self.role = Role.PASSIVE
            log.info("demoted: passive (tracking, silent on %s)", ",".join(self.ifaces))
        return True

    def _announce(self) -> None:
        if not self.cluster.gratuitous_arp:
            return
        for ci in self.cluster.interfaces:
            if not ci.addresses:
                continue
            mac = ci.mac or self.links.mac(ci.name)
            try:
                n = self.links.announce(ci.name, mac, ci.addresses)
                self.announced += n
                log.info("%s: announced %s from %s", ci.name, ", ".join(ci.addresses), mac)
            except OSError as e:
                log.warning("%s: announcement failed: %s", ci.name, e)
