"""Warm spares: interpreters that have imported what a workload's ranks import, ready to become a rank at a
restart. pool (the supervisor's side: spawn, keep, hand out, send the order) and spare (the spare process
itself, `python -m chaos.supervisor.spares.spare MODULE...`, standard library only).

Empty on purpose: the spare process imports this package before the workload's modules."""
