"""Repository operations against a pure-Python model (commits, branches, tags, sessions)."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test

from icechunk_dask.testing import VersionControlStateMachine


def examples_for(backend: str) -> settings:
    # longer histories than the profile's default (steps are cheap here); the local backend
    # fsyncs every commit, so it runs a quarter of the profile's examples
    steps = 2 * settings.default.stateful_step_count
    if backend == "local":
        return settings(
            max_examples=max(5, settings.default.max_examples // 4), stateful_step_count=steps
        )
    return settings(stateful_step_count=steps)


class LocalVersionControl(VersionControlStateMachine):
    backend = "local"


@pytest.mark.parametrize(
    "machine", [VersionControlStateMachine, LocalVersionControl], ids=["memory", "local"]
)
def test_repository_agrees_with_model(machine: type[VersionControlStateMachine]) -> None:
    run_state_machine_as_test(machine, settings=examples_for(machine.backend))
