"""Where a scenario's nodes live, beyond this host's loopback: simulated hosts (netns: network, hostname and mount
namespaces per node on a bridge, each with its node-local disk), a private Slurm cluster on them (slurm, and
slurm_task: what runs as each Slurm task), an existing Slurm cluster (slurm_cluster: srun of the agents), and
the supervisor's end of the host agents (agents: the listener, a link per agent, RemoteProcess)."""
