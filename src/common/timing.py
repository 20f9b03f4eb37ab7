"""Wall seconds per named step of a unit of work, for its progress line."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class StepTimer:
    """``with steps("merge"): ...`` adds the block's wall seconds to the step; ``str()``
    lists the steps in first-use order: ``merge 7.4s, quarantine 0.9s``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[step] = self.seconds.get(step, 0.0) + time.perf_counter() - started

    def __str__(self) -> str:
        return ", ".join(f"{step} {seconds:.1f}s" for step, seconds in self.seconds.items())
