"""The TCP transition table and flag tables (pmct/conntrack/proto/tcp_table.py).

Each sampled cell below carries the kernel's reason for it (nf_conntrack_proto_tcp.c, the
comments under tcp_conntracks[][][]), so a wrong edit of the table fails with an explanation.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pmct.conntrack.constants import TcpState
from pmct.conntrack.proto import tcp_table as T
from pmct.conntrack.proto.tcp_table import (
    TCP_ACK_SET,
    TCP_CONNTRACKS,
    TCP_FIN_SET,
    TCP_NONE_SET,
    TCP_RST_SET,
    TCP_SYN_SET,
    TCP_SYNACK_SET,
    get_conntrack_index,
    valid_flags,
)

FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80

NO, SS, SR, ES, FW, CW, LA, TW, CL, S2 = range(10)
IV = int(TcpState.MAX)
IG = int(TcpState.IGNORE)
ORIG, REPLY = 0, 1
COLUMNS = ("sNO", "sSS", "sSR", "sES", "sFW", "sCW", "sLA", "sTW", "sCL", "sS2")


def test_shape_and_values() -> None:
    assert len(TCP_CONNTRACKS) == 2
    for rows in TCP_CONNTRACKS:
        assert len(rows) == 6
        for row in rows:
            assert len(row) == len(COLUMNS) == int(TcpState.MAX)
            for cell in row:
                assert type(cell) is int  # plain ints on the hot path, no enum members
                # a real state (never NONE: nothing leads back to it), or sIV / sIG
                assert cell in range(SS, S2 + 1) or cell in (IV, IG)


def test_pseudo_states_are_the_kernels() -> None:
    assert (T.sIV, T.sIG) == (10, 11)
    assert [T.sNO, T.sSS, T.sSR, T.sES, T.sFW, T.sCW, T.sLA, T.sTW, T.sCL, T.sS2] == list(range(10))


# (dir, flag class, old state, new state, the kernel's reason)
CELLS = [
    (ORIG, TCP_SYN_SET, NO, SS, "a SYN initialises a new connection"),
    (ORIG, TCP_SYN_SET, SS, SS, "retransmitted SYN"),
    (ORIG, TCP_SYN_SET, S2, S2, "late retransmitted SYN in simultaneous open"),
    (ORIG, TCP_SYN_SET, ES, IG, "SYN in window outside SYN_SENT: receiver resets, or we are stale"),
    (ORIG, TCP_SYN_SET, TW, SS, "reopened connection (RFC 1122)"),
    (ORIG, TCP_SYN_SET, CL, SS, "reopen after a reset"),
    (ORIG, TCP_SYNACK_SET, NO, IV, "too late and no reason to do anything"),
    (ORIG, TCP_SYNACK_SET, SS, IV, "the client cannot send SYN and then SYN/ACK"),
    (ORIG, TCP_SYNACK_SET, S2, SR, "SYN/ACK to the reply side's SYN in simultaneous open"),
    (ORIG, TCP_SYNACK_SET, SR, SR, "late retransmitted SYN/ACK in simultaneous open"),
    (ORIG, TCP_SYNACK_SET, ES, IV, "invalid SYN/ACK sent by the client"),
    (ORIG, TCP_FIN_SET, SS, IV, "no FIN before the SYN/ACK came back"),
    (ORIG, TCP_FIN_SET, SR, FW, "close started"),
    (ORIG, TCP_FIN_SET, ES, FW, "close started"),
    (ORIG, TCP_FIN_SET, FW, LA, "FIN seen in both directions (or retransmitted)"),
    (ORIG, TCP_FIN_SET, LA, LA, "retransmitted FIN"),
    (ORIG, TCP_ACK_SET, NO, ES, "assumed: pickup of a connection in the middle"),
    (ORIG, TCP_ACK_SET, SS, IV, "ACK before any SYN/ACK was seen"),
    (ORIG, TCP_ACK_SET, SR, ES, "the handshake's third packet"),
    (ORIG, TCP_ACK_SET, FW, CW, "normal close request answered by ACK"),
    (ORIG, TCP_ACK_SET, LA, TW, "last ACK detected"),
    (ORIG, TCP_RST_SET, NO, IV, "a RST cannot start a connection"),
    (ORIG, TCP_RST_SET, ES, CL, "reset"),
    (REPLY, TCP_SYN_SET, NO, IV, "never reached"),
    (REPLY, TCP_SYN_SET, SS, S2, "simultaneous open"),
    (REPLY, TCP_SYN_SET, SR, IV, "invalid SYN sent by the server"),
    (REPLY, TCP_SYN_SET, TW, SS, "reopened, the server may have switched role"),
    (REPLY, TCP_SYN_SET, CL, IV, "no reopen from the reply side after a reset"),
    (REPLY, TCP_SYNACK_SET, SS, SR, "standard open"),
    (REPLY, TCP_SYNACK_SET, S2, SR, "simultaneous open"),
    (REPLY, TCP_SYNACK_SET, SR, IG, "retransmitted SYN/ACK: ignore it"),
    (REPLY, TCP_SYNACK_SET, ES, IG, "late retransmitted SYN/ACK?"),
    (REPLY, TCP_SYNACK_SET, FW, IG, "might answer an ignored SYN"),
    (REPLY, TCP_FIN_SET, SS, IV, "server cannot send FIN before answering the SYN"),
    (REPLY, TCP_FIN_SET, CW, LA, "FIN seen in both directions"),
    (REPLY, TCP_ACK_SET, SS, IG, "might be a half-open connection"),
    (REPLY, TCP_ACK_SET, S2, IG, "might be a half-open connection"),
    (REPLY, TCP_ACK_SET, SR, SR, "might answer a late resent SYN"),
    (REPLY, TCP_ACK_SET, LA, TW, "last ACK detected"),
    (REPLY, TCP_RST_SET, SS, CL, "reset answering the SYN"),
]


@pytest.mark.parametrize(
    ("d", "index", "old", "new", "why"),
    CELLS,
    ids=[
        f"{'orig' if c[0] == ORIG else 'reply'}-{T.FLAG_INDEX_NAMES[c[1]]}-{COLUMNS[c[2]]}"
        for c in CELLS
    ],
)
def test_cell(d: int, index: int, old: int, new: int, why: str) -> None:
    assert TCP_CONNTRACKS[d][index][old] == new, why


@pytest.mark.parametrize("d", [ORIG, REPLY])
def test_whole_rows(d: int) -> None:
    rows = TCP_CONNTRACKS[d]
    # a RST closes everything that exists; from NONE it is invalid
    assert rows[TCP_RST_SET] == (IV, CL, CL, CL, CL, CL, CL, CL, CL, CL)
    # a segment without SYN, FIN, ACK or RST is never valid
    assert rows[TCP_NONE_SET] == (IV,) * 10
    # FIN moves the same way in both directions
    assert rows[TCP_FIN_SET] == (IV, IV, FW, FW, LA, LA, LA, TW, CL, IV)
    # a table lookup from NONE only happens in the original direction (tcp_new()):
    # only SYN and a bare ACK (pickup) can start a connection
    starts = [rows[i][NO] for i in range(6)]
    assert starts == ([SS, IV, IV, ES, IV, IV] if d == ORIG else [IV] * 6)


def test_full_original_rows() -> None:
    o = TCP_CONNTRACKS[ORIG]
    assert o[TCP_SYN_SET] == (SS, SS, IG, IG, IG, IG, IG, SS, SS, S2)
    assert o[TCP_SYNACK_SET] == (IV, IV, SR, IV, IV, IV, IV, IV, IV, SR)
    assert o[TCP_ACK_SET] == (ES, IV, ES, ES, CW, CW, TW, TW, CL, IV)


def test_full_reply_rows() -> None:
    r = TCP_CONNTRACKS[REPLY]
    assert r[TCP_SYN_SET] == (IV, S2, IV, IV, IV, IV, IV, SS, IV, S2)
    assert r[TCP_SYNACK_SET] == (IV, SR, IG, IG, IG, IG, IG, IG, IG, SR)
    assert r[TCP_ACK_SET] == (IV, IG, SR, ES, CW, CW, TW, TW, CL, IG)


# ------------------------------------------------------------------ get_conntrack_index


@pytest.mark.parametrize(
    ("flags", "index"),
    [
        (SYN, TCP_SYN_SET),
        (SYN | ACK, TCP_SYNACK_SET),
        (SYN | ACK | PSH | ECE | CWR, TCP_SYNACK_SET),
        (FIN | ACK, TCP_FIN_SET),
        (FIN, TCP_FIN_SET),
        (ACK, TCP_ACK_SET),
        (ACK | PSH | URG, TCP_ACK_SET),
        (RST, TCP_RST_SET),
        (RST | ACK, TCP_RST_SET),
        (RST | SYN | FIN | ACK, TCP_RST_SET),  # RST wins over everything
        (SYN | FIN, TCP_SYN_SET),  # SYN before FIN
        (PSH, TCP_NONE_SET),
        (0, TCP_NONE_SET),
    ],
)
def test_get_conntrack_index(flags: int, index: int) -> None:
    assert get_conntrack_index(flags) == index


@given(st.integers(0, 255))
def test_get_conntrack_index_precedence(flags: int) -> None:
    """kernel get_conntrack_index(): RST, then SYN (+ACK?), then FIN, then ACK, else NONE."""
    if flags & RST:
        want = TCP_RST_SET
    elif flags & SYN:
        want = TCP_SYNACK_SET if flags & ACK else TCP_SYN_SET
    elif flags & FIN:
        want = TCP_FIN_SET
    elif flags & ACK:
        want = TCP_ACK_SET
    else:
        want = TCP_NONE_SET
    assert get_conntrack_index(flags) == want


# ------------------------------------------------------------------------ tcp_valid_flags

VALID = {
    SYN,
    SYN | URG,
    SYN | ACK,
    RST,
    RST | ACK,
    FIN | ACK,
    FIN | ACK | URG,
    ACK,
    ACK | URG,
}


def test_valid_combinations_are_the_kernels() -> None:
    assert set(T.TCP_VALID_FLAGS) == VALID


@pytest.mark.parametrize(
    "flags",
    [0, FIN, SYN | FIN, SYN | RST, RST | FIN, SYN | FIN | ACK, URG, PSH, FIN | URG, RST | URG],
)
def test_invalid_combinations(flags: int) -> None:
    assert not valid_flags(flags)


@given(st.integers(0, 255))
def test_psh_ece_cwr_never_matter(flags: int) -> None:
    assert valid_flags(flags) == ((flags & ~(PSH | ECE | CWR)) in VALID)
