"""The supervisor: the attempt loop that owns every process of a chaos run (nothing else signals them).

    supervise(SupervisorConfig(launch, faults, restart, launcher, run_dir), on_progress) -> SupervisorOutcome

Pure Python: never imports torch (tests/test_supervisor.py checks it in a fresh interpreter).
"""

from chaos.supervisor.supervisor import SupervisorConfig, SupervisorOutcome, supervise

__all__ = ["SupervisorConfig", "SupervisorOutcome", "supervise"]
