"""Durable records of Dask write jobs: results that cannot be lost, and resumable jobs.

A write job (``store_sessions``/``to_zarr``) has an id. Its objects, none of
which is visible in any snapshot::

    jobs/<job>/result        the merged change record of the whole job, stored by the
                             last task of the graph (lazy jobs: compute=False)
    jobs/<job>/tasks/<n>     the change record of write task n (resumable jobs)
    jobs/<job>/plan          what the job writes (resumable jobs): a fingerprint that a
                             resumed run must match

A session remembers the lazy jobs built from it; ``commit`` merges the stored
result of each one that was computed (so ``dask.compute(lazy)`` then
``commit()`` commits the data), and refuses, naming the job, if a result never
arrived. A resumed job skips the tasks whose record is stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

from icechunk_dask._assets import AssetManager
from icechunk_dask._changeset import ChangeSet
from icechunk_dask._exceptions import InvalidInputError, NotFoundError
from icechunk_dask.format import validate_ref_name

__all__ = [
    "check_plan",
    "delete_jobs",
    "done_tasks",
    "load_result",
    "load_task_records",
    "plan_fingerprint",
    "store_result",
    "store_task_record",
    "validate_job_name",
]


def _prefix(job: str) -> str:
    return f"jobs/{job}/"


def validate_job_name(name: object) -> str:
    """Return ``name`` if it can name a resumable job (the rules of branch names).

    Raises
    ------
    InvalidInputError
        If it cannot.
    """
    if not isinstance(name, str):
        raise InvalidInputError(
            f"resume= takes a job name (str), e.g. resume='ingest-2026-11', got {name!r}"
        )
    return validate_ref_name(name, "job")


async def store_task_record(assets: AssetManager, job: str, task: int, record: ChangeSet) -> None:
    """Store the record of task ``task`` (a retry or a duplicate simply overwrites it)."""
    await assets.storage.put(f"{_prefix(job)}tasks/{task}", record.to_bytes())


async def store_result(assets: AssetManager, job: str, record: ChangeSet) -> None:
    """Store a job's merged record."""
    await assets.storage.put(f"{_prefix(job)}result", record.to_bytes())


async def load_result(assets: AssetManager, job: str) -> ChangeSet | None:
    """A job's stored result, ``None`` if it never arrived."""
    try:
        data = await assets.storage.get(f"{_prefix(job)}result")
    except NotFoundError:
        return None
    return ChangeSet.from_bytes(data)


async def done_tasks(assets: AssetManager, job: str) -> set[int]:
    """The tasks of a job whose record is stored."""
    head = f"{_prefix(job)}tasks/"
    return {
        int(k[len(head) :]) for k in await assets.storage.list(head) if k[len(head) :].isdigit()
    }


async def load_task_records(assets: AssetManager, job: str, tasks: list[int]) -> list[ChangeSet]:
    """The stored records of ``tasks``."""
    head = f"{_prefix(job)}tasks/"
    blobs = await asyncio.gather(*(assets.storage.get(f"{head}{t}") for t in tasks))
    return [ChangeSet.from_bytes(b) for b in blobs]


def plan_fingerprint(description: dict[str, Any]) -> str:
    """A stable hash of what a job writes (targets, regions, block layout)."""
    text = json.dumps(description, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


async def check_plan(assets: AssetManager, job: str, fingerprint: str) -> None:
    """Record the plan of a new resumable job, or check that a resumed one matches it.

    Raises
    ------
    InvalidInputError
        If a job of that name exists with another plan.
    """
    key = f"{_prefix(job)}plan"
    if await assets.storage.put_if_absent(key, fingerprint.encode()):
        return
    stored = (await assets.storage.get(key)).decode()
    if stored != fingerprint:
        raise InvalidInputError(
            f"a job named {job!r} already exists in this repository and wrote something else "
            "(other arrays, regions or chunks); nothing was written. Resume it with the same "
            "call, or choose another name for a new job"
        )


async def delete_jobs(assets: AssetManager, jobs: set[str]) -> None:
    """Delete every object of ``jobs`` (after their changes were committed)."""
    for job in jobs:
        await assets.storage.delete(await assets.storage.list(_prefix(job)))
