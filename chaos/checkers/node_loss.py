"""Oracle 11: a node loss is survived, and nothing on the lost node's disk is relied on afterwards.

A node loss (hosts: netns) kills every process of a node at once and empties its node-local disk. For each
one this check demands:
  - the node died whole: no process of it outlived the SIGKILL (the supervisor's `survivors`);
  - the job came back: a later attempt trained;
  - that attempt's ranks agree on where they resumed, and none resumed from a checkpoint that had files on
    the lost disk (those files are gone: such a checkpoint cannot be whole);
  - no committed checkpoint was lost with the node: a job that keeps its checkpoints (or part of them) on
    node-local storage without a copy elsewhere loses its progress to any node loss. That is a finding about
    the job, with the lost iterations and files in the evidence.
The files on the lost disk are taken as the only copy: a job that replicates node-local checkpoints to
other nodes is judged as if it did not (what a replica holds is not recorded yet).
"""

from __future__ import annotations

from chaos import history as h
from chaos.checkers import views
from chaos.checkers.base import CheckContext, CheckResult

NAME = "node_loss"


def check(ctx: CheckContext) -> CheckResult:
    planned = [fault for fault in ctx.plan if fault.action.kind == "node_loss"]
    if not planned:
        return CheckResult(NAME, "skip", "no node loss was planned")
    history = ctx.history
    losses = {str(r.get("fault_id")): r for r in history.supervisor_events(h.NODE_LOST)}
    rows, failures = [], []
    for fault in planned:
        record = losses.get(fault.id)
        row = {"fault_id": fault.id, "node": fault.target.node}
        rows.append(row)
        if record is None:
            row["landed"] = False  # faults_landed says why
            continue
        index = int(record["attempt"])
        killed = sorted(set(record.get("delivered") or []) | set(record.get("killed") or []))
        row.update(attempt=index, killed=killed, survivors=record.get("survivors"),
                   lost_files=record.get("files"), lost_bytes=record.get("bytes"),
                   lost_iterations=record.get("iterations"), lost_listed=record.get("listed"))
        if record.get("survivors"):
            failures.append(f"{fault.id}: processes {record['survivors']} of node {record.get('node')} outlived "
                            f"the node loss")
        committed = views.committed_checkpoints(history, before_attempt=index + 1)
        lost_committed = sorted(set(record.get("iterations") or []) & set(committed))
        if lost_committed:
            failures.append(f"{fault.id}: committed checkpoint(s) {lost_committed} had files on node "
                            f"{record.get('node')}'s local disk only and were lost with it ({record.get('files')} "
                            f"files, {record.get('bytes')} bytes): checkpoints on node-local storage need a copy "
                            f"that survives the node")
        resumed = next((a for a in history.attempts if a.index > index and views.step_range(a)[0] is not None), None)
        if resumed is None:
            failures.append(f"{fault.id}: no attempt trained after the loss of node {record.get('node')} "
                            f"in attempt {index}")
            continue
        per_rank = views.loaded_iterations(resumed)
        lost = views.lost_iterations(history, views.attempt_start_mono(history, resumed.index))
        row.update(resumed_attempt=resumed.index, resumed_from=per_rank)
        if len(set(per_rank.values())) > 1:
            failures.append(f"{fault.id}: after the loss of node {record.get('node')}, attempt {resumed.index}'s "
                            f"ranks resumed from different iterations {per_rank}")
        from_lost = sorted({i for i in per_rank.values() if i in lost})
        if from_lost:
            failures.append(f"{fault.id}: attempt {resumed.index} resumed from {from_lost}, whose files on node "
                            f"{record.get('node')}'s disk were lost with it")
    evidence = {"losses": rows}
    if failures:
        return CheckResult(NAME, "fail", "; ".join(failures), evidence)
    summary = ", ".join(f"node {r['node']} in attempt {r['attempt']} (resumed in {r['resumed_attempt']})"
                        for r in rows if "resumed_attempt" in r)
    if not summary:
        return CheckResult(NAME, "skip", "no node loss landed (faults_landed says why)", evidence)
    return CheckResult(NAME, "pass", f"every node loss was survived without the lost disk: {summary}", evidence)
