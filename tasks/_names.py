"""Run names that say what a run does: ``download medquad``, ``train d75-math2``, ``mix-run d75-math2``.

Prefect's default names are random words for flow runs and ``<task>-<3 hex>``
for task runs; in the UI a sweep then reads as a wall of ``train-0ed``. A name
is ``<task or flow name> <what it works on>``, so the first word still names
the stage. Naming never fails a run: when the parameters cannot be read
(a deployment passing a config Prefect has not validated yet, say), the name
falls back to the task or flow name alone.
"""

from __future__ import annotations

from typing import Any, Callable

MAX_CHARS = 120  # long enough for a sweep's mix list, short enough for the UI's run list


def field(value: Any, name: str) -> Any:
    """``value.name`` for a model, ``value[name]`` for the same thing still a dict (deployment parameters)."""
    return value[name] if isinstance(value, dict) else getattr(value, name)


def _short(text: str) -> str:
    return text if len(text) <= MAX_CHARS else text[:MAX_CHARS - 3] + "..."


def task_run_namer(task: str, what: Callable[[dict[str, Any]], str]) -> Callable[..., str]:
    """A ``task_run_name`` callable: Prefect passes the task's parameters to a ``parameters`` argument."""

    def name(parameters: dict[str, Any]) -> str:
        try:
            return _short(f"{task} {what(parameters)}")
        except Exception:  # a name is a label; never fail a stage over it
            return task

    return name


def flow_run_namer(flow: str, what: Callable[[dict[str, Any]], str]) -> Callable[[], str]:
    """A ``flow_run_name`` callable: Prefect calls it without arguments, inside the run's context."""

    def name() -> str:
        from prefect.runtime import flow_run

        try:
            return _short(f"{flow} {what(flow_run.parameters)}")
        except Exception:  # a name is a label; never fail a flow over it
            return flow

    return name
