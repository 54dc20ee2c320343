"""ip_from_frame() against kernel_oracle.py's own extract_ip() on generated frames.

The oracle decides which frames get a row; pmct must find a datagram in exactly those frames,
starting at the same byte. Skipped (with the reason) when the oracle script is not beside the
repository; it needs no root, only the file.
"""

from __future__ import annotations

import importlib.util
import struct
import sys
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pmct.fidelity import find_kernel_oracle
from pmct.wire.link import SUPPORTED_LINKTYPES, ip_from_frame, split_frame


def _load_oracle() -> ModuleType | None:
    path = find_kernel_oracle()
    if path is None:
        return None
    spec = importlib.util.spec_from_file_location("kernel_oracle_for_tests", path)
    if spec is None or spec.loader is None:
        return None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


ORACLE = _load_oracle()
pytestmark = pytest.mark.skipif(ORACLE is None, reason="kernel_oracle.py not found")

ETHERTYPES = [0x0800, 0x86DD, 0x8100, 0x88A8, 0x9100, 0x8864, 0x0806, 0x88CC, 0x0000]
IP_STARTS = [b"", b"\x45", b"\x60", b"\x4f\x00", b"\x55", b"\x00"]


@st.composite
def frames(draw: st.DrawFn) -> tuple[int, bytes]:
    linktype = draw(st.sampled_from(sorted(SUPPORTED_LINKTYPES)))
    if draw(st.booleans()):
        return linktype, draw(st.binary(max_size=80))
    # structured: a link header whose type fields come from a small, meaningful set
    body = b""
    for _ in range(draw(st.integers(0, 3))):  # tags / PPPoE layers
        etype = draw(st.sampled_from(ETHERTYPES))
        if etype == 0x8864:
            ppp = draw(st.sampled_from([0x0021, 0x0057, 0xC021]))
            body += struct.pack("!HBBHHH", 0x8864, 0x11, 0, 1, 0, ppp)
        else:
            body += struct.pack("!HH", etype, draw(st.integers(0, 0xFFFF)))
    body += struct.pack("!H", draw(st.sampled_from(ETHERTYPES)))
    body += draw(st.sampled_from(IP_STARTS)) + draw(st.binary(max_size=30))
    if linktype == 1:
        frame = bytes(12) + body
    elif linktype == 113:
        frame = bytes(14) + body
    elif linktype == 276:
        frame = body[:2] + bytes(18) + body[2:]
    elif linktype in (0, 108):
        fam = draw(st.sampled_from([2, 10, 24, 28, 30, 7]))
        order = "<" if draw(st.booleans()) else ">"
        frame = struct.pack(order + "I", fam) + draw(st.sampled_from(IP_STARTS)) + body
    else:
        frame = draw(st.sampled_from(IP_STARTS)) + body
    cut = draw(st.integers(0, len(frame)))
    return linktype, frame[:cut] if draw(st.booleans()) else frame


@given(frames())
def test_ip_from_frame_agrees_with_the_oracle(case: tuple[int, bytes]) -> None:
    assert ORACLE is not None
    linktype, frame = case
    expected = ORACLE.extract_ip(linktype, frame)
    got = ip_from_frame(frame, linktype)
    if expected is None:
        assert got is None
        assert split_frame(frame, linktype) is None
    else:
        assert got == expected[1]
        assert split_frame(frame, linktype) == (expected[0], expected[1])
