#!/usr/bin/env python3
"""GPU evidence for the strong verdict on an unmodified Megatron-LM job (one GPU, MEGATRON_LM set):

    MEGATRON_LM=~/Megatron-LM python3 scripts/gpu_megatron_verdicts.py fsdp_dtensor,no_load_rng moe --out DIR

Each argument is a chain of cases run one after the other; chains run side by side (one GPU holds them all:
the verdicts do not depend on it, the timings do, so report timings from a chain that ran alone). Cases:

  fsdp_dtensor   the shipped one-GPU scenario (Megatron-FSDP, fsdp_dtensor), golden recorded here: must pass
  no_load_rng    its job with --no-load-rng (a restart that does not restore the RNG) against that golden,
                 first fault only: must fail, trajectory and checkpoint_state naming what differs
  torch_dist     the torch_dist variant (DDP, plain optimizer), golden recorded here: must pass
  distopt        torch_dist + --use-distributed-optimizer against torch_dist's golden, one fault: the
                 restart cannot load its checkpoint (docs/findings/): must fail
  distopt_alone  the same against Megatron's own golden file of the upstream test (no recording: quicker)
  moe            a job that is not reproducible (MoE, no deterministic mode), calibrated golden: must pass
  moe_golden     only record the moe job's golden (two runs): how reproducible is it?

Writes DIR/summary.txt and DIR/evidence.tar.gz (each run's report.json, summary, golden sidecar); the run
directories (large checkpoints) stay under --work.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SCENARIOS = REPO / "scenarios" / "megatron_lm"
CASES = {
    "fsdp_dtensor": ("gpt3_mcore_tp1_zp_z3_resume_fsdp_dtensor_1gpu.yaml", "pass"),
    "no_load_rng": ("gpt3_mcore_tp1_zp_z3_resume_fsdp_dtensor_1gpu.yaml", "fail"),
    "torch_dist": ("gpt3_mcore_tp1_torch_dist_1gpu.yaml", "pass"),
    "distopt": ("gpt3_mcore_tp1_torch_dist_1gpu.yaml", "fail"),
    "distopt_alone": ("gpt3_mcore_tp1_torch_dist_1gpu.yaml", "fail"),
    "moe": ("gpt3_moe_tp1_nondeterministic_1gpu.yaml", "pass"),
    "moe_golden": ("gpt3_moe_tp1_nondeterministic_1gpu.yaml", None),
}
GOLDEN_OF = {"no_load_rng": "fsdp_dtensor", "distopt": "torch_dist"}
FIRST_FAULT_ONLY = {"no_load_rng", "distopt", "distopt_alone"}
EXTRA_ARGS = {"no_load_rng": ["--no-load-rng"], "distopt": ["--use-distributed-optimizer"],
              "distopt_alone": ["--use-distributed-optimizer"]}
UPSTREAM_GOLDEN = REPO / "tests" / "fixtures" / "megatron_lm" / "golden_values_dev_dgx_h100.json"


def scenario_for(case: str):
    from chaos.scenario import load_scenario

    file, _ = CASES[case]
    overrides: dict = {}
    if case in FIRST_FAULT_ONLY:
        overrides["faults"] = [{"at": {"step": 10, "delay_s": 0.5}, "target": {"rank": 0}, "signal": "SIGKILL"}]
        overrides["restart.max_restarts"] = 1
    scenario = load_scenario(SCENARIOS / file, overrides)
    if case in EXTRA_ARGS:
        mapping = dict(scenario.workload_mapping)
        mapping["args"] = list(mapping["args"]) + EXTRA_ARGS[case]
        scenario = load_scenario(SCENARIOS / file, {**overrides, "workload.args": mapping["args"]})
    return scenario


def run_case(case: str, work: Path, log) -> dict:
    from chaos.runner import record_golden, rule_for, run_scenario, state_rule_note

    scenario = scenario_for(case)
    started = time.monotonic()
    if case == "moe_golden":
        golden = record_golden(scenario, work / "goldens" / f"{case}.json", work / f"{case}-golden-run",
                               say=lambda text: log(f"  {text}"))
        result = {"case": case, "rule": rule_for(scenario, golden).why, "state_rule": state_rule_note(golden),
                  "calibration": golden.calibration.to_dict() if golden.calibration else None}
    else:
        golden_path = str(UPSTREAM_GOLDEN) if case == "distopt_alone" else None
        if case in GOLDEN_OF:
            golden_path = json.loads((work / f"{GOLDEN_OF[case]}.golden").read_text())["path"]
        outcome = run_scenario(scenario, out_dir=work / case, golden_path=Path(golden_path) if golden_path else None,
                               golden_cache=work / "goldens", say=lambda text: log(f"  {text}"))
        if outcome.golden is not None:
            (work / f"{case}.golden").write_text(json.dumps({"path": str(outcome.golden.path)}))
        report = outcome.report
        result = {"case": case, "verdict": outcome.verdict, "expected": CASES[case][1],
                  "rule": report.get("golden", {}).get("rule"), "state_rule": report.get("golden", {}).get("state_rule"),
                  "checks": {c["name"]: [c["status"], c["detail"]] for c in report["checks"]},
                  "timings": report.get("timings"), "restarts": report.get("restarts")}
    result["wall_s"] = round(time.monotonic() - started, 1)
    return result


def chain(cases: list[str], work: Path, out: Path) -> int:
    log_path = out / f"chain-{'-'.join(cases)}.log"

    def log(text: str) -> None:
        with open(log_path, "a") as handle:
            handle.write(text + "\n")
        print(text, flush=True)

    status = 0
    for case in cases:
        log(f"== {case}")
        try:
            result = run_case(case, work, log)
        except Exception as error:  # noqa: BLE001 - the evidence says what broke, the other cases go on
            result = {"case": case, "error": f"{type(error).__name__}: {error}"}
        (work / f"{case}.result.json").write_text(json.dumps(result, indent=1, default=str))
        log(json.dumps(result, indent=1, default=str)[:6000])
        expected = CASES[case][1]
        if expected and result.get("verdict") != expected:
            status = 1
    return status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("chains", nargs="+", help="comma-separated cases; chains run side by side")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-verdicts")))
    parser.add_argument("--work", type=Path, default=Path("/tmp/chaos-gpu-verdicts"))
    parser.add_argument("--chain", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.chain:
        return chain(args.chains[0].split(","), args.work, args.out)
    for chain_text in args.chains:
        for case in chain_text.split(","):
            if case not in CASES:
                parser.error(f"unknown case {case!r}; expected one of {list(CASES)}")
    children = [subprocess.Popen([sys.executable, __file__, "--chain", c, "--out", str(args.out), "--work",
                                  str(args.work)]) for c in args.chains]
    status = max(child.wait() for child in children)
    lines = []
    for result_path in sorted(args.work.glob("*.result.json")):
        result = json.loads(result_path.read_text())
        head = f"{result['case']}: verdict {result.get('verdict', '-')} (expected {CASES[result['case']][1]}), " \
               f"{result.get('wall_s')} s"
        lines += [head, f"  rule: {result.get('rule')}", f"  state: {result.get('state_rule')}"]
        if result.get("error"):
            lines.append(f"  ERROR {result['error']}")
        for name, (status_text, detail) in (result.get("checks") or {}).items():
            lines.append(f"  {name}: {status_text}: {detail[:400]}")
        if result.get("calibration"):
            lines.append(f"  calibration: {json.dumps(result['calibration'])[:800]}")
        if result.get("timings"):
            lines.append(f"  timings: {json.dumps(result['timings'], default=str)[:800]}")
    (args.out / "summary.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    with tarfile.open(args.out / "evidence.tar.gz", "w:gz") as tar:
        for path in sorted(args.work.rglob("*")):
            small = path.is_file() and path.stat().st_size < 4 << 20
            if small and (path.name in ("report.json", "summary.txt", "supervisor.jsonl", "golden.json")
                          or path.name.endswith((".meta.json", ".result.json")) or
                          (path.suffix == ".json" and path.parent.name == "goldens")):
                tar.add(path, arcname=str(path.relative_to(args.work)))
    return status


if __name__ == "__main__":
    sys.exit(main())
