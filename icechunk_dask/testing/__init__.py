"""Reusable test tools: Hypothesis strategies, a repository model and state machines.

Needs the ``test`` extra (Hypothesis). Typical use in a test module::

    from hypothesis.stateful import run_state_machine_as_test
    from icechunk_dask.testing import SerialParallelStateMachine

    def test_forks_equal_serial_writes():
        run_state_machine_as_test(SerialParallelStateMachine)

and in ``conftest.py``::

    from icechunk_dask.testing import register_profiles

    register_profiles()
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

from icechunk_dask.testing.models import CommitModel, RepositoryModel, WorkingCopy
from icechunk_dask.testing.stateful import (
    CommittingZarrHierarchyStateMachine,
    RepositoryMachine,
    SerialParallelStateMachine,
    VersionControlStateMachine,
    read_store,
)

__all__ = [
    "PROFILES",
    "CommitModel",
    "CommittingZarrHierarchyStateMachine",
    "RepositoryMachine",
    "RepositoryModel",
    "SerialParallelStateMachine",
    "VersionControlStateMachine",
    "WorkingCopy",
    "read_store",
    "register_profiles",
]

#: Examples per property (``max_examples``) and steps per state-machine example, by profile.
PROFILES: dict[str, dict[str, int]] = {
    "dev": {"max_examples": 25, "stateful_step_count": 25},
    "ci": {"max_examples": 300, "stateful_step_count": 25},
    "long": {"max_examples": 5000, "stateful_step_count": 60},
}


def register_profiles(*, load: bool = True) -> str:
    """Register the ``"dev"``, ``"ci"`` and ``"long"`` Hypothesis profiles.

    ``"ci"`` is derandomised (the same examples on every run, no example
    database) so that CI results are reproducible; ``"long"`` is for a human
    with time to spare. The profile named by the environment variable
    ``HYPOTHESIS_PROFILE`` is loaded; without it, ``"ci"`` when ``CI`` is set
    and ``"dev"`` otherwise.

    Parameters
    ----------
    load : bool, optional
        Also load the selected profile (default ``True``).

    Returns
    -------
    str
        The name of the selected profile.
    """
    common = {
        "deadline": None,
        "print_blob": True,
        "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    }
    for name, counts in PROFILES.items():
        extra = {"derandomize": True, "database": None} if name == "ci" else {}
        settings.register_profile(name, **common, **counts, **extra)  # type: ignore[arg-type]
    chosen = os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
    if load:
        settings.load_profile(chosen)
    return chosen
