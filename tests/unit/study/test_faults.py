from __future__ import annotations

import pytest

from pmct.errors import ConfigError
from pmct.study.faults import derive_seed, make_loss


def _runs(pattern: list[bool]) -> list[int]:
    out, n = [], 0
    for x in pattern:
        if x:
            n += 1
        elif n:
            out.append(n)
            n = 0
    return out


@pytest.mark.parametrize("p", [0.001, 0.01, 0.05])
def test_random_rate(p: float) -> None:
    m = make_loss("random", p, burst_length=8, seed=1)
    n = 200_000
    lost = sum(m.lost() for _ in range(n))
    assert lost == m.losses and m.trials == n
    assert abs(lost / n - p) < 4 * (p / n) ** 0.5 + 1e-4
    assert sum(_runs([m.lost() for _ in range(n)])) > 0


@pytest.mark.parametrize("p", [0.01, 0.05])
def test_bursty_rate_and_burst_length(p: float) -> None:
    m = make_loss("bursty", p, burst_length=8, seed=2)
    pattern = [m.lost() for _ in range(400_000)]
    rate = sum(pattern) / len(pattern)
    assert abs(rate - p) < 0.25 * p  # stationary rate a / (a + b) = p
    runs = _runs(pattern)
    assert 6.5 < sum(runs) / len(runs) < 9.5  # geometric bursts, mean 1 / b = 8
    rnd = make_loss("random", p, burst_length=8, seed=2)
    rruns = _runs([rnd.lost() for _ in range(400_000)])
    assert sum(rruns) / len(rruns) < 1.2  # the random model has (almost) no bursts


def test_deterministic_and_zero() -> None:
    a = make_loss("bursty", 0.05, burst_length=4, seed=9)
    b = make_loss("bursty", 0.05, burst_length=4, seed=9)
    assert [a.lost() for _ in range(5000)] == [b.lost() for _ in range(5000)]
    z = make_loss("bursty", 0.0, burst_length=4, seed=9)
    assert not any(z.lost() for _ in range(5000))
    assert derive_seed(1, "miss", 0.01) == derive_seed(1, "miss", 0.01)
    assert derive_seed(1, "miss", 0.01) != derive_seed(1, "miss", 0.05)


def test_bad_parameters() -> None:
    with pytest.raises(ConfigError, match="loss model"):
        make_loss("gaussian", 0.1, burst_length=2, seed=1)
    with pytest.raises(ConfigError, match="out of range"):
        make_loss("random", 1.0, burst_length=2, seed=1)
    with pytest.raises(ConfigError, match="burst_length"):
        make_loss("bursty", 0.1, burst_length=0.5, seed=1)
