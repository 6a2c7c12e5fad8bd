"""Rank heartbeats to NVIDIA's ft_launcher, sent the way Megatron-LM does with --enable-ft-package.

Under ft_launcher every worker has a rank monitor (FT_RANK_MONITOR_IPC_SOCKET in its environment). A job
that opts in connects to it once (`init_workload_monitoring`) and sends a heartbeat as it makes progress;
the monitor kills a rank whose heartbeats stop for longer than the launcher's --ft-rank-heartbeat-timeout
(--ft-initial-rank-heartbeat-timeout before the first), and the launcher restarts the workers. A rank that
never connects is watched for death only, as under torchrun. This trainer stands in for a job built for
ft_launcher, so it connects whenever it runs under one; elsewhere nothing of NVRx is imported.

Where the beats go: one after the checkpoint load (what Megatron-LM's first heartbeat follows: the initial
timeout covers imports, building and loading), then one at every step's end.
"""

from __future__ import annotations

import os

ENV_MONITOR_SOCKET = "FT_RANK_MONITOR_IPC_SOCKET"


class Heartbeats:
    def __init__(self) -> None:
        self._client = None
        if os.environ.get(ENV_MONITOR_SOCKET):
            from nvidia_resiliency_ext.fault_tolerance import RankMonitorClient

            client = RankMonitorClient()
            client.init_workload_monitoring()
            self._client = client

    @property
    def enabled(self) -> bool:
        return self._client is not None

    def beat(self) -> None:
        if self._client is not None:
            self._client.send_heartbeat()

    def close(self) -> None:
        """Disconnects from the rank monitor (a clean end: it stops watching this rank)."""
        if self._client is not None:
            client, self._client = self._client, None
            client.shutdown_workload_monitoring()
