"""Where a run's time went: seconds per stage, read back from Prefect's task runs.

Used by ``mixtune demo`` to print each stage's time and by
``benchmarks/demo_bench.py``. A cached stage counts its (near-zero) run time.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterStartTime


def stage_name(task_run_name: str) -> str:
    """``download medquad`` or ``download-0ed`` -> ``download``; ``mix-manifest-1a2`` -> ``mix-manifest``."""
    head = task_run_name.split(" ", 1)[0]
    stem, _, suffix = head.rpartition("-")
    return stem if stem and suffix.isalnum() and len(suffix) <= 4 and " " not in task_run_name else head


async def _stage_seconds(since: datetime, settle_s: float) -> dict[str, float]:
    task_filter = TaskRunFilter(start_time=TaskRunFilterStartTime(after_=since))
    async with get_client() as client:
        deadline = time.monotonic() + settle_s
        while True:  # Prefect records states from events, asynchronously: wait until every run is final
            runs = await client.read_task_runs(task_run_filter=task_filter)
            if all(r.state is not None and r.state.is_final() for r in runs) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
    seconds: dict[str, float] = {}
    for run in runs:
        if run.state is not None and run.state.state_details.child_flow_run_id is not None:
            continue  # the stand-in task run of a subflow: its stages are counted themselves
        stage = stage_name(run.name)
        seconds[stage] = seconds.get(stage, 0.0) + run.total_run_time.total_seconds()
    return dict(sorted(seconds.items(), key=lambda item: -item[1]))


def stage_seconds(since: datetime, settle_s: float = 10.0) -> dict[str, float]:
    """Run seconds per stage of the task runs started after ``since`` (a timezone-aware datetime)."""
    return asyncio.run(_stage_seconds(since, settle_s))
