"""Sync modes: registry, what each mode does with records and local changes."""

from __future__ import annotations

import pytest

from pmct.errors import ConfigError
from pmct.sync.modes import MODE_NAMES, MODES, ConcurrentMode, ReplicateMode, make_mode
from pmct.sync.records import delete_record
from pmct.sync.sim import sample_conn
from pmct.sync.table import DictTable


def test_registry_and_wire_values() -> None:
    assert set(MODES) == set(MODE_NAMES) == {"concurrent", "replicate"}
    for i, name in enumerate(MODE_NAMES):  # index = the announce's mode byte
        assert make_mode(name).wire == i and make_mode(name).name == name
    with pytest.raises(ConfigError):
        make_mode("alarm")


def test_mode_properties_differ_as_documented() -> None:
    c, r = ConcurrentMode(), ReplicateMode()
    assert (c.standby_tracks_wire, r.standby_tracks_wire) == (True, False)
    assert (c.streams_changes, r.streams_changes) == (False, True)
    assert (c.purge_after_walk, r.purge_after_walk) == (False, True)
    assert (c.authoritative, r.authoritative) == (False, True)


def test_concurrent_ignores_deletes_replicate_applies_them() -> None:
    t = DictTable()
    conn = t.add(sample_conn(1))
    assert ConcurrentMode().apply_delete(t, delete_record(conn.key), 0.0) == "delete_ignored"
    assert t.get(conn.key) is conn
    assert ReplicateMode().apply_delete(t, delete_record(conn.key), 0.0) == "deleted"
    assert t.get(conn.key) is None


def test_refresh_when_the_standby_copy_has_less_than_half_left() -> None:
    m = ReplicateMode()
    c = sample_conn(1, expires=130.0)
    assert not m.refresh_due(c, 100.0)  # never sent by this master: a walk or event sends it
    m.note_sent(c.key, 130.0)  # the standby's copy expires at 130
    assert not m.refresh_due(c, 100.0)
    c.expires = 180.0  # traffic: the master's deadline moved; standby 30 s left, master 80 s
    assert m.refresh_due(c, 100.0)
    c.expires = 159.0  # 30 s left vs 59 s: not yet
    assert not m.refresh_due(c, 100.0)
    m.note_deleted(c.key)
    assert not m.refresh_due(c, 100.0)
    assert not ConcurrentMode().refresh_due(c, 100.0)
