"""The agent chaos runs on each host of a multi-host job: it starts and owns that host's ranks on the
controller's word (chaos.agent.host), over the wire described in chaos.agent.protocol."""
