"""What a failover costs, measured on the two engines' tables at the failover instant.

- **State agreement**: of the master's live entries, the share the standby holds (same tuple,
  same orientation) with the same state: TCP state, and the SEEN_REPLY / ASSURED status bits
  that decide ``ct state established`` and early drop. ``held`` counts presence alone.
- **Session survival**: of the master's open TCP sessions (state ESTABLISHED) that send again
  after the failover, the share whose next ``probe_packets`` packets the new master's strict
  ruleset accepts (``ct state established,related accept``; anything else is dropped). The
  verdict is the engine's own: copies of the entries are put in a fresh probe engine and the
  real next packets of each session are run through it. The same is done with the master's
  entries, and only sessions the master itself would have accepted are counted (baseline): a
  session whose next packet comes after its entry expired is not the standby's fault.

  DEVIATION(study): a real ruleset with ``ct state new`` accepted for SYNs would also let a
  session that lost its entry reopen; the study's ruleset is strict, because an established
  session's mid-stream packet picked up as NEW (``nf_conntrack_tcp_loose``) is exactly the
  packet a stateful firewall is there to drop.

The probe never touches the simulated engines (copies only), so a study can probe at several
failover points of one run.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Final

from pmct.conntrack.conn import Conn
from pmct.conntrack.constants import CtState, Status, TcpState
from pmct.conntrack.core import Engine
from pmct.conntrack.keys import IPPROTO_TCP
from pmct.conntrack.settings import Settings
from pmct.study.traffic import Traffic, canonical_key

__all__ = [
    "Agreement",
    "Survival",
    "agreement",
    "clone_conn",
    "open_sessions",
    "survival",
]

_STATUS_MASK: Final = int(Status.SEEN_REPLY | Status.ASSURED)
_ESTABLISHED: Final = int(TcpState.ESTABLISHED)
_CT_ESTABLISHED: Final = int(CtState.ESTABLISHED)
_FIELDS: Final = (
    "status", "expires", "state", "stream_ts", "td_scale0", "td_scale1", "tflags0", "tflags1",
    "last_dir", "last_index", "last_wscale", "last_flags", "retrans",
)  # fmt: skip


def clone_conn(c: Conn) -> Conn:
    """An independent copy of an entry (its own TCP window and extra dict)."""
    n = Conn(c.id, c.key, c.rkey, c.l3, c.proto)
    for name in _FIELDS:
        with contextlib.suppress(AttributeError):  # TCP slots are unset on other protocols
            setattr(n, name, getattr(c, name))
    with contextlib.suppress(AttributeError):
        n.tw = c.tw.copy()
    n.extra = dict(c.extra) if c.extra else None
    return n


@dataclass(frozen=True, slots=True)
class Agreement:
    entries: int  # the master's live entries
    held: int  # ... that the standby has, same tuple and orientation
    agree: int  # ... with the same state and status bits

    @property
    def share(self) -> float:
        return self.agree / self.entries if self.entries else 1.0

    @property
    def held_share(self) -> float:
        return self.held / self.entries if self.entries else 1.0


def agreement(master: Any, standby: Any, now: float) -> Agreement:
    """Compare two ConnTables (iterable of Conn, ``get(key, now)``) at ``now``."""
    entries = held = agree = 0
    get = standby.get
    for c in master:
        if c.expires <= now:
            continue
        entries += 1
        s = get(c.key, now)
        if s is None or s.key != c.key:
            continue
        held += 1
        if s.state == c.state and (s.status & _STATUS_MASK) == (c.status & _STATUS_MASK):
            agree += 1
    return Agreement(entries, held, agree)


def open_sessions(master: Any, now: float) -> list[Conn]:
    """The master's live TCP entries in ESTABLISHED (an open session)."""
    return [
        c for c in master if c.proto == IPPROTO_TCP and c.state == _ESTABLISHED and c.expires > now
    ]


@dataclass(frozen=True, slots=True)
class Survival:
    open: int  # the master's open TCP sessions at the failover
    probed: int  # ... that send again after it
    baseline: int  # ... whose next packets the master itself accepts
    survived: int  # ... that the standby (new master) accepts too

    @property
    def share(self) -> float:
        return self.survived / self.baseline if self.baseline else 1.0


def survival(
    traffic: Traffic,
    cursor: int,
    master: Any,
    standby: Any,
    now: float,
    *,
    probe_packets: int,
    settings: Settings | None = None,
) -> Survival:
    """Judge the next packets (index >= ``cursor``) of every open session on copies."""
    sessions = open_sessions(master, now)
    pm, ps = Engine(settings), Engine(settings)
    owner: dict[int, int] = {}  # packet index -> session number
    for n, c in enumerate(sessions):
        idx = traffic.next_packets(canonical_key(c.key), cursor, probe_packets)
        if not idx:
            continue
        for i in idx:
            owner[i] = n
        pm.table.insert(clone_conn(c))
        s = standby.get(c.key, now)
        if s is not None:
            ps.table.insert(clone_conn(s))
    ok_m: dict[int, bool] = {}
    ok_s: dict[int, bool] = {}
    for i in sorted(owner):
        n = owner[i]
        t, data = traffic.times[i], traffic.packets[i]
        ok_m[n] = ok_m.get(n, True) and pm.process_ip(data, t)[0] == _CT_ESTABLISHED
        ok_s[n] = ok_s.get(n, True) and ps.process_ip(data, t)[0] == _CT_ESTABLISHED
    baseline = [n for n, ok in ok_m.items() if ok]
    survived = sum(1 for n in baseline if ok_s[n])
    return Survival(len(sessions), len(ok_m), len(baseline), survived)
