"""One rank's history file, followed by the supervisor every tick: whether it grew (progress, hang
detection), the latest step and phase (where a wall-clock fault lands), busy spells and the train_end reason.

The file is written by the rank, so it is read as untrusted: opened without following a link or blocking on
a FIFO, at most 64 blocks a tick, and an unterminated line kept only up to a cap.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import BinaryIO

from chaos import history, safe_files


class HistoryTail:
    """Follows one rank's history file incrementally: progress (it grew), the latest step and phase, and
    the train_end reason."""

    PARTIAL_LINE_LIMIT = 1 << 20
    """Bytes of an unterminated line kept between polls: a rank writing hundreds of MiB without a newline
    must not make every tick copy them (no record of the probe's comes near this)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO | None = None  # opened once the rank has created it, then kept (polled every tick)
        self._lines = safe_files.LineSplitter(self.PARTIAL_LINE_LIMIT)
        self.step: int | None = None
        self.phase: str | None = None
        self.train_end: str | None = None
        self.busy: str | None = None
        """What the rank said it is busy with (probe.busy), until busy_end."""
        self.working = False
        """The rank is past its start (a busy_end or a step seen): its imports are over."""

    def poll(self) -> bool:
        if self._file is None:
            try:  # never through a link, never blocking on a FIFO planted under the history's name
                self._file = open(safe_files.open_regular(self.path), "rb")
            except OSError:
                return False
        grew = False
        # From where the last poll stopped, a block at a time, up to what is written now; at most 64 blocks a
        # tick, so a rank writing without pause cannot keep the supervisor here (the next tick goes on).
        for _ in range(64):
            data = self._file.read(self.PARTIAL_LINE_LIMIT)
            if not data:
                break
            grew = True
            for line, cut in self._lines.feed(data):
                if not cut:
                    self._take(line)
        return grew

    def _take(self, line: bytes) -> None:
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            return
        if not isinstance(record, dict):
            return
        if record.get("step") is not None:
            self.step = record["step"]
            self.working = True
        if record.get("event") == history.POINT:
            self.phase = record.get("phase")
        elif record.get("event") == history.LEAVE:
            self.phase = None
        elif record.get("event") == history.TRAIN_END:
            self.train_end = record.get("reason")
        elif record.get("event") == history.BUSY:
            self.busy = record.get("what") or "busy"
        elif record.get("event") == history.BUSY_END:
            self.busy = None
            self.working = True

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
