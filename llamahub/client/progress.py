"""A progress bar for bytes that many threads advance at once."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any


class ByteBar:
    """A thread-safe byte counter shown as one tqdm bar on stderr (nothing when disabled)."""

    def __init__(self, total: int, enabled: bool, desc: str) -> None:
        self.total, self.enabled, self.desc = total, enabled, desc
        self._tqdm: Any = None
        self._lock = threading.Lock()

    def __enter__(self) -> Callable[[int], None]:
        if self.enabled:
            from tqdm import tqdm

            self._tqdm = tqdm(total=self.total or None, unit="B", unit_scale=True, unit_divisor=1024,
                              file=sys.stderr, desc=self.desc, leave=True)
        return self.advance

    def advance(self, n: int) -> None:
        if self._tqdm is not None and n:
            with self._lock:
                self._tqdm.update(n)

    def __exit__(self, *exc: object) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
