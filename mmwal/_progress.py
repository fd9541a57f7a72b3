"""Progress display for the command line: tqdm when installed, a plain line otherwise.

tqdm is an optional extra (``pip install 'mmwal[progress]'``), never a runtime
dependency: it is imported lazily, and without it a single self-overwriting
line is printed.  Nothing at all is shown when the stream is not a terminal,
so output piped into a file or another program stays clean.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

__all__ = ["Progress", "progress"]


class Progress:
    """A minimal progress display: ``update(n)``, ``set(n)``, ``close()``.

    The built-in fallback redraws one line at most ten times a second.
    """

    def __init__(self, total: int, desc: str, unit: str, stream: TextIO,
                 enabled: bool) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = 0
        self._stream = stream
        self._bar: Any = None
        self._enabled = enabled
        self._last = 0.0
        self._t0 = time.perf_counter()
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, file=stream,
                         leave=False, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        self.set(self.n + n)

    def set(self, n: int) -> None:
        """Move the display to ``n`` done (it never goes backwards)."""
        if n <= self.n:
            return
        step, self.n = n - self.n, n
        if self._bar is not None:
            self._bar.update(step)
        elif self._enabled:
            now = time.perf_counter()
            if now - self._last >= 0.1 or self.n >= self.total:
                self._last = now
                self._draw(now)

    def _draw(self, now: float) -> None:
        rate = self.n / max(now - self._t0, 1e-9)
        pct = 100.0 * self.n / self.total if self.total else 100.0
        self._stream.write(f"\r{self.desc}: {self.n:,}/{self.total:,} {self.unit} "
                           f"({pct:3.0f}%, {rate:,.0f} {self.unit}/s)")
        self._stream.flush()

    def close(self) -> None:
        """Remove the display (the caller prints its own summary line)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._enabled and self._last:
            self._stream.write("\r\033[K")
            self._stream.flush()
        self._enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(total: int, desc: str, unit: str = "docs", *, stream: TextIO | None = None,
             enabled: bool | None = None) -> Progress:
    """A progress display on ``stream`` (stdout), shown only when it is a terminal."""
    stream = sys.stdout if stream is None else stream
    if enabled is None:
        try:
            enabled = stream.isatty()
        except (AttributeError, ValueError):
            enabled = False
    return Progress(total, desc, unit, stream, enabled)
