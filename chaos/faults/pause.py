"""Pause faults (Jepsen's pause nemesis): SIGSTOP now, SIGCONT `duration_s` later, to a rank or to every
rank of a node, the way a host stalls (a hypervisor steal, a swap storm, a frozen NFS mount) and comes back.

The stop is delivered here; the returned `undo` sends the SIGCONT, which the supervisor calls from its
loop when the duration is over, so the wait never blocks it. A pause is not excused from hang detection: to
the other ranks a paused one looks exactly like a hung one. Shorter than hang_timeout_s the job must ride
it out (the `stalls` check); longer, the supervisor's hang detection tears the attempt down (a stopped
process is SIGKILLed at once) and the run resumes like after any hang.
"""

from __future__ import annotations

from chaos.plan import Action


def execute(action: Action, context) -> dict:
    if action.duration_s is None or action.duration_s <= 0:
        raise ValueError("a pause fault needs action.duration_s > 0")
    paused = [p for p in context.targets if p.send("SIGSTOP")]

    def undo(ran_its_course: bool) -> dict:
        # cut short, the attempt is over: the teardown has killed the stopped processes, nothing to continue
        return {"resumed": resume(paused) if ran_its_course else []}

    return {"signal": "SIGSTOP", "delivered": [p.pid for p in paused], "duration_s": action.duration_s, "undo": undo}


def resume(processes) -> list[int]:
    """SIGCONT to each paused process still there; the pids that got it."""
    return [p.pid for p in processes if p.send("SIGCONT")]
