"""zarr's own hierarchy state machine on a session store, committing as it goes."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test

from icechunk_dask.testing import CommittingZarrHierarchyStateMachine


def examples_for(backend: str) -> settings:
    # the local backend fsyncs every commit: a quarter of the profile's examples
    if backend == "local":
        return settings(max_examples=max(5, settings.default.max_examples // 4))
    return settings()


class LocalCommittingZarrHierarchy(CommittingZarrHierarchyStateMachine):
    backend = "local"


# zarr's machine draws dtypes (e.g. fixed-width bytes) that zarr itself flags as unstable.
@pytest.mark.filterwarnings("ignore::zarr.errors.UnstableSpecificationWarning")
@pytest.mark.parametrize(
    "machine",
    [CommittingZarrHierarchyStateMachine, LocalCommittingZarrHierarchy],
    ids=["memory", "local"],
)
def test_zarr_hierarchy_with_commits(machine: type[CommittingZarrHierarchyStateMachine]) -> None:
    run_state_machine_as_test(machine, settings=examples_for(machine.backend))
