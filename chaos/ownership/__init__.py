"""Owning processes: what the supervisor and every host agent share to start, track, signal and tear down the
processes of a run, and nothing else (no run, no attempt, no fault).

processes (pidfds opened and checked when a process is first recorded, signals only through them, teardown),
lifeline (nothing outlives a dead owner: PR_SET_PDEATHSIG, a cgroup per attempt, the watchdog's pipe),
watchdog (the process that kills an attempt's cgroup when its owner's pipe closes without a goodbye), sweep
(the processes that carry the run's token: killed when they are the run's user's, reported when not).

The supervisor and the agent import this package; it imports neither.
"""
