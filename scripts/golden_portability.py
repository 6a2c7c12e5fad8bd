#!/usr/bin/env python
"""Does a committed CPU golden hold on this machine? Records the scenario's golden here (one uninterrupted
run in a scratch directory, as `chaos golden record` does) and compares it with a committed golden bitwise:
every lm loss (and grad norm, learning rate, consumed samples), every batch's data hash, and the hash of the
final model + optimizer state. Prints both environments, so the comparison says which CPUs, torch and Python
it spans. Exit 0 = bitwise equal.

    python scripts/golden_portability.py [SCENARIO] [--golden goldens/x.json] [--out DIR]
        [--pins "ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=COMPATIBLE CHAOS_CPU_ONEDNN=off"] [--variant "NAME:K=V K=V" ...]

--pins replaces the gpt3 workload's CPU pins for the recording (default: the shipped ones); each --variant
records once more with other pins, to find out what a machine needs for the goldens to travel. Recording
needs the scenario's ranks (4 for the flagship) and takes about half a minute.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chaos import golden as golden_module  # noqa: E402
from chaos import runner  # noqa: E402
from chaos.scenario import load_scenario  # noqa: E402
from chaos.workloads.gpt3 import workload as gpt3_workload  # noqa: E402

FLAGSHIP = ROOT / "scenarios" / "gpt3_mcore_tp2_zero3_resume_fsdp_dtensor.yaml"
ENV_KEYS = ("cpu_model", "torch", "python", "megatron-core", "cpu_numerics")


@dataclasses.dataclass(frozen=True)
class Outcome:
    name: str
    pins: dict[str, str]
    steps_equal: int
    steps: int
    data_equal: bool
    state_equal: bool
    first_difference: str | None

    @property
    def bitwise(self) -> bool:
        return self.first_difference is None


def parse_pins(text: str) -> dict[str, str]:
    pins = {}
    for item in text.split():
        key, sep, value = item.partition("=")
        if not sep or not key:
            sys.exit(f"golden_portability: --pins/--variant: expected 'K=V K=V ...', got {item!r}")
        pins[key.strip()] = value.strip()
    return pins


def committed_golden_for(scenario) -> Path:
    """The committed golden recorded for this workload (whatever machine recorded it)."""
    fingerprint = golden_module.workload_fingerprint(scenario.workload)
    for path in sorted((ROOT / "goldens").glob("*.json")):
        if path.name.endswith(".meta.json") or not golden_module.meta_path(path).is_file():
            continue
        if golden_module.read_meta(golden_module.meta_path(path)).workload_fingerprint == fingerprint:
            return path
    sys.exit(f"golden_portability: no committed golden in goldens/ for {scenario.source}; pass --golden")


def compare(name: str, pins: dict[str, str], committed: golden_module.Golden, here: golden_module.Golden) -> Outcome:
    want, got = committed.metrics.get("lm loss", {}), here.metrics.get("lm loss", {})
    first = None
    equal = 0
    for step in sorted(set(want) | set(got)):
        a, b = want.get(step), got.get(step)
        if a is not None and b is not None and a.hex() == b.hex():
            equal += 1
        elif first is None:
            first = f"lm loss step {step}: committed {a!r}, here {b!r}"
    for metric in sorted(set(committed.metrics) - {"lm loss"}):  # grad norm, learning rate, ...
        theirs, ours = committed.metrics[metric], here.metrics.get(metric, {})
        differing = [step for step in sorted(theirs) if ours.get(step) is None or theirs[step].hex() != ours[step].hex()]
        if differing and first is None:
            first = f"{metric} differs at steps {differing[:6]}"
    data_equal = committed.data_hashes == here.data_hashes
    state_equal = committed.meta.final_state_hash == here.meta.final_state_hash
    if first is None and not data_equal:
        first = "data hashes differ"
    if first is None and not state_equal:
        first = f"final state hash: committed {committed.meta.final_state_hash}, here {here.meta.final_state_hash}"
    return Outcome(name, pins, equal, len(set(want) | set(got)), data_equal, state_equal, first)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", type=Path, default=FLAGSHIP)
    parser.add_argument("--golden", type=Path, help="committed golden (default: the one in goldens/ for the workload)")
    parser.add_argument("--out", type=Path, help="scratch directory (default: a temporary one)")
    parser.add_argument("--pins", help="CPU pins for the main recording (default: the workload's)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:K=V K=V",
                        help="also record with these pins (repeatable)")
    args = parser.parse_args()

    scenario = load_scenario(args.scenario)
    if scenario.workload.kind != "gpt3" or scenario.facts.device != "cpu":
        sys.exit("golden_portability: the scenario must be a kind: gpt3 workload on CPU")
    golden_path = args.golden or committed_golden_for(scenario)
    committed = golden_module.read_golden(golden_path)
    shipped = dict(gpt3_workload.CPU_PINS)
    recordings = [("shipped" if args.pins is None else "pins", parse_pins(args.pins) if args.pins else shipped)]
    for variant in args.variant:
        name, _, text = variant.partition(":")
        recordings.append((name, parse_pins(text)))

    scratch = args.out or Path(tempfile.mkdtemp(prefix="chaos-portability-"))
    outcomes, environments = [], {}
    for name, pins in recordings:
        gpt3_workload.CPU_PINS = pins  # read at launch: the ranks' environment and the golden's fingerprint
        recorded = runner.record_golden(scenario, scratch / f"{name}.json", scratch / f"run-{name}")
        environments[name] = recorded.meta.environment
        outcomes.append(compare(name, pins, committed, recorded))
    gpt3_workload.CPU_PINS = shipped

    print(f"committed golden: {golden_path}")
    for key in ENV_KEYS:
        print(f"  {key:14} committed: {committed.meta.environment.get(key)!s:40} here: {environments[recordings[0][0]].get(key)}")
    print(f"\n{'recording':12} {'lm loss equal':>14}  data  state  pins")
    for o in outcomes:
        print(f"{o.name:12} {o.steps_equal:>7}/{o.steps:<6}  {'yes' if o.data_equal else 'NO':5} "
              f"{'yes' if o.state_equal else 'NO':6} {' '.join(f'{k}={v}' for k, v in o.pins.items()) or '(none)'}")
        if o.first_difference:
            print(f"{'':12} first difference: {o.first_difference}")
    print(f"\nscratch: {scratch}")
    verdict = outcomes[0].bitwise
    print("BITWISE EQUAL" if verdict else "DIFFERENT", "(the main recording)")
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
