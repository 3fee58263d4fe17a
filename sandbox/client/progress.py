"""Progress bars on stderr, shown only on a terminal (never in --json output)."""

from __future__ import annotations

import sys
import time


class Bar:
    def __init__(self, label: str, total: int, *, enabled: bool | None = None) -> None:
        self.label = label
        self.total = max(total, 1)
        self.done = 0
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._start = time.monotonic()
        self._shown = 0.0

    def advance(self, amount: int) -> None:
        self.done += amount
        now = time.monotonic()
        if self.enabled and (now - self._shown > 0.1 or self.done >= self.total):
            self._shown = now
            fraction = min(self.done / self.total, 1.0)
            rate = self.done / max(now - self._start, 1e-6) / 1e6
            filled = int(fraction * 30)
            sys.stderr.write(
                f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] "
                f"{fraction * 100:5.1f}% {rate:7.1f} MB/s"
            )
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


def status_line(text: str, *, enabled: bool | None = None) -> None:
    if sys.stderr.isatty() if enabled is None else enabled:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
