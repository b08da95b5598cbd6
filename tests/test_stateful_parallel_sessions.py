"""Serial vs parallel: the same writes directly and through forks give identical branches."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test

from icechunk_dask.testing import SerialParallelStateMachine


def examples_for(backend: str) -> settings:
    # the local backend fsyncs every commit: a quarter of the profile's examples
    if backend == "local":
        return settings(max_examples=max(5, settings.default.max_examples // 4))
    return settings()


class LocalSerialParallel(SerialParallelStateMachine):
    backend = "local"


@pytest.mark.parametrize(
    "machine", [SerialParallelStateMachine, LocalSerialParallel], ids=["memory", "local"]
)
def test_forks_merged_in_any_order_equal_serial_writes(
    machine: type[SerialParallelStateMachine],
) -> None:
    run_state_machine_as_test(machine, settings=examples_for(machine.backend))
