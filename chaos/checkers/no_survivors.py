"""Oracle 8: no process of any attempt outlives it, and hung attempts are noticed in time.

Every teardown must leave no survivors (on a cluster, each host's agent answers for its host; a host whose
agent cannot answer leaves the check undecided), and nothing the job started may have escaped the attempt (the run
token sweep after teardown, chaos.ownership.sweep.sweep_token_holders, finds what did; another user's
process carrying the token is not the job's: a security event, shown in the evidence, never a failure); every process
the supervisor launched must have been seen to exit (rank_exit) or been torn down with its attempt. A hang must be detected within restart.hang_timeout_s
(+ slack) of the last progress any rank recorded, and a SIGSTOP fault (which never exits) must end in a
detected hang.
"""

from __future__ import annotations

from chaos import history as h
from chaos.checkers import views
from chaos.checkers.base import CheckContext, CheckResult
from chaos.safe_files import one_line
from chaos.faults.signals import Signal

NAME = "no_survivors"
HANG_SLACK_S = 5.0
"""The supervisor polls; its detection may trail the timeout by a poll interval plus scheduling noise."""


def check(ctx: CheckContext) -> CheckResult:
    history = ctx.history
    failures: list[str] = []
    unverified: list[str] = []
    """Hosts whose agent could not answer at teardown (its host crashed or is cut off): unknown, not false."""
    teardowns = history.supervisor_events(h.TEARDOWN)
    hellos = history.supervisor_events(h.AGENT_HELLO)
    for hello in hellos:
        for item in hello.get("swept") or []:
            failures.append(
                f"attempt {hello.get('attempt')}: the agent on {one_line(hello.get('host'))} found process "
                f"{one_line(item.get('pid'))} ({one_line(item.get('command'))}) of an earlier attempt still running there before it started anything "
                f"(killed{'; it survived SIGKILL' if item.get('alive_after_sigkill') else ''})")
    torn_down = {int(r["attempt"]) for r in teardowns if r.get("attempt") is not None}
    for record in teardowns:
        if record.get("survivors"):
            failures.append(f"attempt {record.get('attempt')}: teardown left survivors {record['survivors']}")
        for host in record.get("hosts") or []:  # hosts: cluster, each host's agent answered for its own
            if not host.get("lost"):
                continue
            # a later attempt's agent on that host swept it before starting anything (its finds fail below)
            if not [hello for hello in hellos if hello.get("host") == host.get("host")
                    and int(hello.get("attempt", 0)) > int(record.get("attempt", 0))]:
                unverified.append(f"attempt {record.get('attempt')}: node {host.get('node')}'s agent "
                                  f"({host.get('host')}) was lost at teardown ({host['lost']}) and no later agent "
                                  "ran there: nothing on that host could be verified gone")
        for item in record.get("leaked") or []:
            failures.append(
                f"attempt {record.get('attempt')}: process {one_line(item.get('pid'))} ({one_line(item.get('command'))}) "
                "escaped the "
                "attempt's process tree, process groups and cgroup, found only by the run token in its "
                "environment (then killed): the job detaches processes that outlive it under any other launcher")

    exited_pids = {r.get("pid") for r in history.supervisor_events(h.RANK_EXIT)}
    unaccounted = []
    for start in history.supervisor_events(h.ATTEMPT_START):
        attempt = int(start["attempt"])
        for process in start.get("processes") or []:
            pid = process.get("pid") if isinstance(process, dict) else process
            if pid not in exited_pids and attempt not in torn_down:
                unaccounted.append({"attempt": attempt, "pid": pid})
    for item in unaccounted:
        failures.append(f"attempt {item['attempt']}: process {item['pid']} neither exited nor was torn down")

    hangs = []
    for record in history.supervisor_events(h.HANG_DETECTED):
        attempt = int(record["attempt"])
        latency = views.hang_latency(history, record)
        limit = ctx.restart.hang_timeout_s + HANG_SLACK_S
        hangs.append({"attempt": attempt, "idle_s": record.get("idle_s"), "detected_after_s": latency,
                      "limit_s": limit})
        if latency is not None and latency > limit:
            failures.append(f"attempt {attempt}: hang detected {latency:.1f} s after the last progress "
                            f"(hang_timeout_s={ctx.restart.hang_timeout_s} + {HANG_SLACK_S} s slack)")
    hung_attempts = {h_["attempt"] for h_ in hangs}
    outcomes = views.attempt_outcomes(history)
    for attempt, outcome in outcomes.items():
        if outcome == "hung" and attempt not in hung_attempts:
            failures.append(f"attempt {attempt} ended hung without a hang_detected record")
    landings = views.landings(history)
    for fault in ctx.plan:
        if not (isinstance(fault.action, Signal) and fault.action.signal == "SIGSTOP"):
            continue  # a pause sends its SIGCONT itself
        # One landing record per stopped rank: report each attempt once, not once per rank.
        stopped_attempts = sorted({int(landing["attempt"]) for landing in landings.get(fault.id, [])})
        for attempt in stopped_attempts:
            if attempt not in hung_attempts and outcomes.get(attempt) != "complete":
                failures.append(f"{fault.id}: SIGSTOP in attempt {attempt} but no hang was detected")
    evidence = {"teardowns": [{k: r.get(k) for k in ("attempt", "duration_s", "survivors", "sigterm", "sigkill",
                                                      "leaked", "hosts") if k in r}
                              for r in teardowns],
                "unaccounted": unaccounted, "hangs": hangs}
    # Another user's processes that carried the run's token (chaos.ownership.sweep.Stranger): seen and
    # reported, never signalled, and not the job's doing, so never a failure of this check.
    strangers = [{key: record.get(key) for key in ("attempt", "node", "pid", "uid", "command", "why") if key in record}
                 for record in history.supervisor_events(h.SECURITY_EVENT)]
    if strangers:
        evidence["strangers_not_the_jobs"] = strangers
    seen = (f"; {len(strangers)} process(es) of other users carrying the run's token seen (security events, "
            "not signalled, not the job's)") if strangers else ""
    if failures:
        return CheckResult(NAME, "fail", "; ".join(failures + unverified), evidence)
    if unverified:
        return CheckResult(NAME, "error", "; ".join(unverified), evidence)
    return CheckResult(NAME, "pass", f"no survivors after {len(teardowns)} teardown(s); "
                                     f"{len(hangs)} hang(s) detected in time{seen}", evidence)

