"""Progress bars per stage; ``quiet`` silences them."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


class Progress:
    """Creates one tqdm bar per stage unless quiet."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    def __call__(self, items: Iterable[T], stage: str, total: int | None = None) -> Iterator[T]:
        """Iterate ``items`` while showing a bar labelled ``stage``."""
        return iter(tqdm(items, desc=stage, total=total, disable=self.quiet, unit="it",
                         leave=False, dynamic_ncols=True))

    def note(self, message: str) -> None:
        """Print a one-line status message unless quiet."""
        if not self.quiet:
            tqdm.write(message)
