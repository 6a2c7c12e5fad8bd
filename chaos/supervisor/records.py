"""Supervisor records beyond chaos.history's list (same file, supervisor.jsonl, same shape)."""

CORRUPTED = "corrupted"            # fault_id, attempt, path, mode, iteration, ...
HOSTS = "hosts"                    # kind (netns), interface, addresses: [node 0's, ...]
SLURM = "slurm"                    # conf, nodes: the private Slurm cluster (launcher: slurm)
SLURMD_RESTARTED = "slurmd_restarted"  # attempt, nodes: lost nodes' slurmd started again before the attempt
OBSERVED = "observed"              # attempt, phase, step, index, path, tracker: a checkpoint-directory event
                                   # seen by the black-box follower (log-observed workloads)
OBSERVER = "observer"              # attempt, watch_mode, fallback_reason: how the checkpoint directory is watched
LIFELINE = "lifeline"              # cgroup (path or None), reason, fallback: how nothing outlives the supervisor
AGENT_EXIT = "agent_exit"          # attempt, node, pid, returncode, signal
RANK_REJECTED = "rank_rejected"    # attempt, rank, pid, reason   (a hello we could not verify)
CLUSTER = "cluster"                # controller, agents, control: where an existing cluster's nodes reach chaos
AGENT_REFUSED = "agent_refused"    # attempt, reason: a connection to the agent listener that was not let in
AGENT_LOST = "agent_lost"          # attempt, node, host, reason: an agent's link broke during the attempt
