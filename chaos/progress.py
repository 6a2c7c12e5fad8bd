"""A live progress line for a terminal (attempt, step, faults landed, restarts, elapsed); silent when
stdout is not a TTY, so CI logs and pipes stay clean."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressLine:
    def __init__(self, stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.started = time.monotonic()
        self._last_width = 0
        self._last_draw = 0.0

    def __call__(self, update: dict) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last_draw < 0.1 and not update.get("force"):
            return
        self._last_draw = now
        # The supervisor sends step=None for an attempt that has not completed a step yet.
        step = update.get("step")
        # When the supervisor sends elapsed_s it times the supervised run itself; else this line's own clock.
        elapsed = update.get("elapsed_s")
        if elapsed is None:
            elapsed = now - self.started
        text = (f"attempt {update.get('attempt', '?')} | step {'-' if step is None else step}"
                f" | faults landed {update.get('faults_landed', 0)} | restarts {update.get('restarts', 0)}"
                f" | {elapsed:6.1f}s")
        padding = max(0, self._last_width - len(text))
        self.stream.write("\r" + text + " " * padding)
        self.stream.flush()
        self._last_width = len(text)

    def close(self) -> None:
        if self.enabled and self._last_width:
            self.stream.write("\r" + " " * self._last_width + "\r")
            self.stream.flush()
