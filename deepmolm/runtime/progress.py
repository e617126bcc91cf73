"""Progress reporting that library code can call without knowing about terminals."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

Advance = Callable[[int], None]


def _ignore(_: int) -> None:
    return None


@contextmanager
def progress_bar(description: str, total: int | None, *, enabled: bool = True) -> Iterator[Advance]:
    """Yield `advance(n)`; draws a rich bar on stderr when enabled, does nothing otherwise."""
    if not enabled:
        yield _ignore
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
