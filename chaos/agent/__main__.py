"""python -m chaos.agent --controller HOST:PORT --attempt A [--node N]

The run token comes from CHAOS_AGENT_TOKEN (the environment, not the command line, which every user of the
host can read); the node from --node or Slurm's SLURM_NODEID. Started by the controller through srun, one
per node; exit 0 after a teardown, 1 when the controller went away or the agent was stopped, 2 on bad use.
"""

from __future__ import annotations

import argparse
import os
import sys

from chaos.agent import protocol
from chaos.agent.host import AgentError, HostAgent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos.agent", description=__doc__.splitlines()[0])
    parser.add_argument("--controller", default=os.environ.get(protocol.ENV_CONTROLLER),
                        help=f"HOST:PORT of the controller (default: ${protocol.ENV_CONTROLLER})")
    parser.add_argument("--attempt", type=int, required=True, help="the attempt this agent serves")
    parser.add_argument("--node", type=int, default=None, help="this host's node index (default: $SLURM_NODEID)")
    args = parser.parse_args(argv)
    token = os.environ.get(protocol.ENV_AGENT_TOKEN)
    node = args.node if args.node is not None else os.environ.get("SLURM_NODEID")
    problems = []
    if not args.controller:
        problems.append(f"no controller address: pass --controller HOST:PORT or set {protocol.ENV_CONTROLLER}")
    if not token:
        problems.append(f"no run token: {protocol.ENV_AGENT_TOKEN} is not set (the controller exports it)")
    if node is None or not str(node).isdigit():
        problems.append(f"no node index: pass --node N or run under srun (SLURM_NODEID), got {node!r}")
    try:
        controller = protocol.split_address(args.controller) if args.controller else None
    except ValueError as error:
        problems.append(f"--controller: {error}")
    if problems:
        print("chaos agent: " + "; ".join(problems), file=sys.stderr)
        return 2
    agent = HostAgent(controller, token, int(node), args.attempt)
    try:
        agent.connect()
        return agent.serve()
    except AgentError as error:
        print(f"chaos agent (node {node}): {error}", file=sys.stderr)
        return 1
    finally:
        agent.close()


if __name__ == "__main__":
    sys.exit(main())
