"""The supervisor: the attempt loop that owns every process of a chaos run (nothing else signals them).

    supervise(SupervisorConfig(launch, faults, restart, launcher, run_dir), on_progress) -> SupervisorOutcome

Pure Python: never imports torch (tests/test_supervisor.py checks it in a fresh interpreter). The names are
imported on first use: a warm spare or the zygote (chaos.supervisor.spares) runs as `python -m` under this
package, and must import nothing of the supervisor before the workload's modules.
"""

__all__ = ["SupervisorConfig", "SupervisorOutcome", "supervise"]


def __getattr__(name: str):
    if name in __all__:
        from chaos.supervisor import supervisor

        return getattr(supervisor, name)
    raise AttributeError(f"module 'chaos.supervisor' has no attribute {name!r}")
