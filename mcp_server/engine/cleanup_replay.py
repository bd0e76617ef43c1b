"""Whether this code runs in a cancelled task's clean-up walk (RecoverNode.on_cancel), and why.

The walk (cancel_cleanup.py) runs the plan again over what the run recorded, as a run resumed
after a crash does, but in *replay*: a node that completed gives its output; a leaf that had not
ended, and a node that never began, fail CANCELLED at once, with no record and no call; a
composite that began is walked into, with no record of its own and no timeout; branches are
walked to their ends (none stops another). A recover node with on_cancel whose body had begun
runs its handler `live()`, as any node runs. A context variable, so that the branches a walk
starts are walks too, and those a live handler starts are live.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field


@dataclass
class CleanUp:
    """The cancel a walk cleans up after."""

    reason: str
    since_ns: int  # when the clean-up began (across the run's lives: Task.cancel_request.time)
    failed: list[str] = field(default_factory=list)  # how handlers failed, for the task's message


_WALK: ContextVar[CleanUp | None] = ContextVar("cancel_clean_up", default=None)


def replaying() -> CleanUp | None:
    """The clean-up this code walks for, or None when it runs as usual (or in a live handler)."""
    return _WALK.get()


@contextmanager
def walking(clean_up: CleanUp | None) -> Iterator[None]:
    """Run the block as a clean-up's walk (`clean_up`) or live (None)."""
    token = _WALK.set(clean_up)
    try:
        yield
    finally:
        _WALK.reset(token)
