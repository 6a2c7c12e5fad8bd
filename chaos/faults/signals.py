"""Signal faults: deliver a real signal to a rank process from outside, the way a kernel OOM-kill, a
scheduler preemption (SIGTERM) or a stuck host (SIGSTOP, Jepsen's "hammer time") would."""

from __future__ import annotations

from chaos.plan import Action


def execute(action: Action, context) -> dict:
    """Sends the signal to each target (through its pidfd, or after the PID-reuse guard); `delivered` lists
    the pids that got it (a process already gone got nothing)."""
    if action.signal is None:
        raise ValueError("a signal fault needs action.signal")
    return {"signal": action.signal, "delivered": [p.pid for p in context.targets if p.send(action.signal)]}
