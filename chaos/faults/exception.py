"""Raise faults: an exception raised inside a rank at a planned point, the way a rank fails with a Python or
CUDA error ("CUDA error: an illegal memory access was encountered", a NCCL error, an assertion) rather than
being killed from outside. It is what in-process restart layers and torchrun's restarts are built for.

    faults:
      - at: {step: 3, phase: backward}
        target: {rank: 1}
        raise: "RuntimeError: CUDA error: an illegal memory access was encountered"

The value is the exception's message. Nothing is sent from outside: the rank's probe (chaos.probe) holds it
at the point, and the supervisor's release carries the message (`release_message`), on which the probe
raises chaos.probe.InjectedFault(message) in the trainer's own thread. An uncaught error ends the rank
(a traceback, exit 1) and the attempt, and the run resumes like after any crash. Only a rank held at a
phase trigger, in a workload that runs the probe, can raise (`needs_probe`): the scenario reader refuses
a wall-clock trigger or a workload followed from its logs, and the supervisor records a rank it did not
hold as missed.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any

from chaos.errors import show
from chaos.faults.kind import Action, FaultContext, Started

MAX_MESSAGE_CHARS = 300
"""The longest message a raise fault may carry: one line of a traceback, not a document."""

_DESCRIBED_CHARS = 40
"""How much of the message `describe` shows."""


def _control_character(text: str) -> str | None:
    """The first control character (or line/paragraph separator) in text, None if there is none."""
    for char in text:
        if unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            return char
    return None


@dataclass(frozen=True)
class Raise(Action):
    kind = "raise"
    ends_attempt = True
    interrupts = True
    takes_host = False
    needs_probe = True
    sends_signal = None
    message: str
    """The exception's message (one line, at most MAX_MESSAGE_CHARS characters)."""

    @classmethod
    def from_yaml(cls, read: Any, value: Any, where: str) -> "Raise":
        message = read.string(value, where, non_empty=True)
        if len(message) > MAX_MESSAGE_CHARS:
            raise read.error(where, f"expected an exception message of at most {MAX_MESSAGE_CHARS} characters, "
                                    f"got {len(message)}")
        bad = _control_character(message)
        if bad is not None:
            raise read.error(where, f"expected an exception message on one line, without control characters; "
                                    f"got {show(bad)} in {show(message)}")
        return cls(message)

    def to_yaml(self) -> Any:
        return self.message

    def describe(self) -> str:
        message = self.message
        if len(message) > _DESCRIBED_CHARS:
            message = message[:_DESCRIBED_CHARS - 3] + "..."
        return f"raise {message!r}"

    def release_message(self) -> dict | None:
        return {"raise": self.message}

    def start(self, context: FaultContext) -> Started:
        """Sends nothing: the rank raises on its release. The ranks it can still reach are those running."""
        return Started([p.pid for p in context.targets if p.alive()], landed={"message": self.message})
