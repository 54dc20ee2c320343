"""Small studies for the unit tests: a few dozen flows over a few seconds."""

from __future__ import annotations

from typing import Any

import pytest

from pmct.study.spec import StudySpec, parse_study
from pmct.study.traffic import Traffic, generate

SMALL: dict[str, Any] = {
    "study": {"name": "small", "seed": 3},
    "traffic": {"generate": {"flows": 80, "duration": 8.0, "long_share": 0.2}},
    "faults": {
        "miss_rate": [0.0, 0.05],
        "miss_model": ["random", "bursty"],
        "sync_loss": [0.0, 0.1],
        "restart_at": ["never", 3.0],
        "restart_downtime": 0.5,
        "failover_at": [2.5, 6.0],
    },
    "metrics": {"sample_interval": 0.1, "recover_window": 3.0},
}


@pytest.fixture(scope="session")
def small_spec() -> StudySpec:
    return parse_study(SMALL)


@pytest.fixture(scope="session")
def small_traffic(small_spec: StudySpec) -> Traffic:
    return generate(small_spec.traffic.generate, small_spec.seed)
