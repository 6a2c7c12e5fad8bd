"""Signal faults: deliver a real signal to a rank process from outside, the way a kernel OOM-kill, a
scheduler preemption (SIGTERM) or a stuck host (SIGSTOP, Jepsen's "hammer time") would."""

from __future__ import annotations

import time

from chaos.plan import Action


def deliver(process, signal_name: str) -> float | None:
    """Sends `signal_name` to one tracked process (through its pidfd, or after the PID-reuse guard);
    returns the CLOCK_MONOTONIC time of the send, None when the process was already gone."""
    sent_at = time.monotonic()
    return sent_at if process.send(signal_name) else None


def execute(action: Action, context) -> dict:
    if action.signal is None:
        raise ValueError("a signal fault needs action.signal")
    delivered = {}
    for process in context.targets:
        sent_at = deliver(process, action.signal)
        if sent_at is not None:
            delivered[process.pid] = sent_at
    return {"signal": action.signal, "delivered": delivered}
