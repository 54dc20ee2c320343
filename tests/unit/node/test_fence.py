"""fence.py without a kernel: the file the daemon leaves behind, and the error without one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pmct.node import fence
from pmct.node.netfilter import SILENCE_TABLE, Silence


def test_fence_file_is_the_passive_silence_after_a_reset(tmp_path: Path) -> None:
    path = fence.write(str(tmp_path), ["lan0", "wan0"])
    assert path == str(tmp_path / fence.FENCE_FILE)
    text = Path(path).read_text()
    body = "".join(line + "\n" for line in text.splitlines() if not line.startswith("#"))
    s = Silence(["lan0", "wan0"])
    assert body == s._reset() + s.script()
    # the reset comes first, so applying it twice (or over a running silence) is harmless
    assert text.index(f"delete table netdev {SILENCE_TABLE}") < text.index("hook egress")
    assert [p.name for p in tmp_path.iterdir()] == [fence.FENCE_FILE]  # no temp file left


def test_remove_is_idempotent(tmp_path: Path) -> None:
    fence.write(str(tmp_path), ["eth0"])
    fence.remove(str(tmp_path))
    fence.remove(str(tmp_path))
    assert not os.listdir(tmp_path)


def test_fence_without_a_file_names_the_reason(tmp_path: Path) -> None:
    with pytest.raises(fence.FenceError, match="does not exist"):
        fence.fence(str(tmp_path))
