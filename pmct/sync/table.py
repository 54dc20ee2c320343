"""The sync layer's view of a connection table: a small adapter Protocol, and two adapters.

Rules:
1. protocol.py touches the table only through ``SyncTable``; it never imports the engine, so
   it can be driven by a plain dict in tests and simulations (``DictTable``).
2. Adapters do no sync logic: no merge rule, no ordering; they store, find and delete.
3. Expectations travel as ``ExpRecord`` values; an adapter stores them in whatever form its
   engine uses.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from pmct.conntrack.conn import Conn
from pmct.conntrack.constants import Status
from pmct.conntrack.expect import expect_from_keys, get_expectfn
from pmct.sync.codec import ExpDelete, ExpRecord
from pmct.sync.records import exp_to_record

__all__ = ["DictTable", "EngineTable", "SyncTable"]


class SyncTable(Protocol):
    def get(self, key: bytes, now: float) -> Conn | None:
        """The live entry indexed under ``key`` (either direction), or None."""

    def insert(self, conn: Conn, now: float) -> bool:
        """Add a new entry (replacing whatever holds its keys); False if the table is full."""

    def delete(self, conn: Conn, now: float) -> None: ...

    def changed(self, conn: Conn, old_expires: float, now: float) -> None:
        """Fields of a stored entry were overwritten in place (re-file its deadline)."""

    def conns(self) -> Iterable[Conn]:
        """Every live entry once."""

    def keys(self) -> list[bytes]:
        """A snapshot of every index key: both directions of each entry, expired ones too,
        in any order. Cheap (one C-level copy of the index), unlike ``conns()``, which
        builds a tuple per key: a master takes this snapshot in one step of its packet loop
        at the start of every walk (2 s for a million entries through ``conns()``, 0.1 s
        this way); the walk skips the reply-direction keys as it goes."""

    def __len__(self) -> int:
        """Number of entries (approximate: may count expired ones not yet removed)."""

    def resolve_helper(self, name: str) -> Any: ...

    def expectations(self, now: float) -> list[ExpRecord]:
        """Every live expectation, timeouts remaining from ``now``."""

    def apply_expect(self, rec: ExpRecord, base: float, *, authoritative: bool) -> bool:
        """Store an expectation; False if it was not stored (merge kept the local one)."""

    def delete_expect(self, rec: ExpDelete) -> bool: ...


ExpKey = tuple[bytes, bytes, bytes]


class DictTable:
    """A plain two-way dict of Conns (tests, simulations, benchmarks). No expiry."""

    def __init__(self) -> None:
        self.index: dict[bytes, Conn] = {}
        self.exps: dict[ExpKey, tuple[ExpRecord, float]] = {}
        self._next_id = 1

    def __len__(self) -> int:
        return sum(1 for _ in self.conns())

    def get(self, key: bytes, now: float = 0.0) -> Conn | None:
        return self.index.get(key)

    def insert(self, conn: Conn, now: float = 0.0) -> bool:
        for k in (conn.key, conn.rkey):
            old = self.index.get(k)
            if old is not None and old is not conn:
                self.delete(old, now)
        conn.id = self._next_id
        self._next_id += 1
        self.index[conn.key] = conn
        self.index[conn.rkey] = conn
        return True

    def delete(self, conn: Conn, now: float = 0.0) -> None:
        for k in (conn.key, conn.rkey):
            if self.index.get(k) is conn:
                del self.index[k]

    def changed(self, conn: Conn, old_expires: float, now: float) -> None:
        pass

    def conns(self) -> Iterator[Conn]:
        for key, conn in list(self.index.items()):
            if conn.key == key:
                yield conn

    def keys(self) -> list[bytes]:
        return list(self.index)

    def resolve_helper(self, name: str) -> Any:
        return name

    def expectations(self, now: float) -> list[ExpRecord]:
        out = []
        for rec, expires in self.exps.values():
            r = ExpRecord(
                rec.proto,
                rec.key,
                rec.mask,
                rec.master,
                max(0, int((expires - now) * 1000)),
                rec.flags,
                rec.cls,
                rec.helper,
            )
            out.append(r)
        return out

    def apply_expect(self, rec: ExpRecord, base: float, *, authoritative: bool) -> bool:
        k = (rec.key, rec.mask, rec.master)
        if not authoritative and k in self.exps:
            return False
        self.exps[k] = (rec, base + rec.timeout_ms / 1000.0)
        return True

    def delete_expect(self, rec: ExpDelete) -> bool:
        return self.exps.pop((rec.key, rec.mask, rec.master), None) is not None

    # --- test helpers
    def add(self, conn: Conn) -> Conn:
        self.insert(conn)
        return conn


class EngineTable:
    """Adapter for pmct.conntrack.core.Engine (its ``table`` is a ConnTable).

    Entries made by sync get ids from the engine's own counter and go through the engine's
    size limit (early drop) like any new entry. The engine's DESTROY events for entries that
    sync deletes are not re-sent: only a master streams, and a master applies nothing.
    """

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.table = engine.table
        # ConnTable.get(key, now) has the adapter's signature and semantics (an expired entry
        # is absent): bind it directly, it is called twice per received record.
        self.get = self.table.get

    def insert(self, conn: Conn, now: float) -> bool:
        table = self.table
        if table.count >= table.max_entries and not table.early_drop(now):
            return False
        conn.id = self.engine._next_id
        self.engine._next_id += 1
        conn.status |= int(Status.CONFIRMED)
        table.insert(conn)
        return True

    def delete(self, conn: Conn, now: float) -> None:
        self.table.delete(conn, "sync")

    def changed(self, conn: Conn, old_expires: float, now: float) -> None:
        if conn.expires < old_expires:
            # The wheel files an entry under its deadline at insert and re-files it when that
            # bucket comes due; an earlier deadline needs an earlier bucket.
            self.table._file(conn)

    def conns(self) -> Iterable[Conn]:
        it: Iterator[Conn] = iter(self.table)
        return it

    def keys(self) -> list[bytes]:
        return list(self.table.index)

    def __len__(self) -> int:
        return int(self.table.count)

    def resolve_helper(self, name: str) -> Any:
        # the engine's helper object (it also routes helper entries off the fast path); the
        # bare name when no helper of that name exists here
        helper = self.engine.resolve_helper(name)
        return name if helper is None else helper

    def expectations(self, now: float) -> list[ExpRecord]:
        return [exp_to_record(e, now) for e in self.engine.expectations(now)]

    def apply_expect(self, rec: ExpRecord, base: float, *, authoritative: bool) -> bool:
        # kernel ctnetlink_create_expect(): the master must exist here (else -ENOENT)
        master = self.table.get(rec.master, base)
        if master is None:
            return False
        exp = expect_from_keys(master, rec.key, rec.mask, klass=rec.cls, flags=rec.flags)
        if exp is None:
            return False
        if rec.nat is not None:  # kernel ctnetlink: CTA_EXPECT_NAT and CTA_EXPECT_FN
            fn = get_expectfn(rec.nat[2])
            if fn is not None:
                exp.dir, exp.saved_port, exp.expectfn = rec.nat[0], rec.nat[1], fn
        helper = master.helper
        policies = getattr(helper, "policies", ())
        policy = policies[exp.klass] if exp.klass < len(policies) else None
        expires = base + rec.timeout_ms / 1000.0
        return bool(
            self.engine.expect.insert_synced(
                exp, expires, policy, base, authoritative=authoritative
            )
        )

    def delete_expect(self, rec: ExpDelete) -> bool:
        master = self.table.get(rec.master, float("-inf"))
        if master is None:
            return False
        exp = expect_from_keys(master, rec.key, rec.mask)
        if exp is None:
            return False
        table = self.engine.expect
        for held in table.of_master(master):
            if held.key == exp.key and held.mask_key == exp.mask_key:
                return bool(table.remove(held))
        return False
