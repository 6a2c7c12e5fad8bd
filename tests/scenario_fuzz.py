"""A seeded generator of hostile scenario files, for tests/test_scenario_fuzz.py.

Three families, each what a user (or a bad script) really produces:
- mutations of the shipped scenarios: a value anywhere swapped for a wrong type, a bad number, a huge
  string or a nested structure; a key deleted, misspelt or added; a section replaced by a scalar;
- whole-file hazards written as text or bytes: non-UTF-8, YAML alias bombs, deep nesting, integers past
  Python's 4300-digit limit, complex keys, duplicate keys, tabs, a top level that is not a mapping;
- things that are not scenario files at all: a directory, a FIFO, /dev/zero, a dangling or looping link.

Deterministic for a seed, so a failure names a file that can be regenerated. Not hypothesis: the inputs
worth trying are structural mutations of real scenarios plus byte-level hazards, which a hand-written
generator states in a page, with no new dependency.
"""

from __future__ import annotations

import copy
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = sorted(p for p in (REPO / "scenarios").rglob("*.yaml") if "megatron_lm" not in p.parts)
"""The megatron_lm scenarios need a checkout path from the environment; their loader is fuzzed through the
gpt3-shaped files' `kind:` mutations and its own unit tests."""

HUGE_INT_TEXT = "1" + "0" * 5000
NASTY_VALUES: list[Any] = [
    None, True, False, 0, -1, -(2**63), 2**64, 10**30, 1.5, -0.5, 1e308, float("inf"), float("-inf"),
    float("nan"), "", " ", "x" * 300, "../../../etc/passwd", "SIGKIL", "tiny_cpux", "cuda", "all",
    [], [None], [[1, 2], [3]], {}, {"a": 1}, {"rank": {"rank": 0}}, [{"step": 1}], "\u202e\u0000",
    "9" * 50, "1e9999", ".inf",
]
UNKNOWN_KEYS = ["fualts", "workloads", "signall", "x", "", "__class__", "0", "step ", "Seed"]


@dataclass(frozen=True)
class FuzzCase:
    name: str
    write: Callable[[Path], None]
    """Creates the input at the given path (a file, directory, FIFO or link)."""


def generate(seed: int, count: int) -> list[FuzzCase]:
    """`count` cases: every fixed hazard once, the rest mutations of shipped scenarios."""
    rng = random.Random(seed)
    cases = _fixed_cases()
    bases = [yaml.safe_load(p.read_text()) for p in SCENARIOS]
    i = 0
    while len(cases) < count:
        base = copy.deepcopy(bases[i % len(bases)])
        mutated = _mutate(base, rng, rounds=rng.randint(1, 3))
        cases.append(FuzzCase(f"mutation-{i:04d}", _yaml_writer(mutated)))
        i += 1
    return cases


# ---- mutations -----------------------------------------------------------------------------------------
def _mutate(data: Any, rng: random.Random, rounds: int) -> Any:
    for _ in range(rounds):
        paths = list(_paths(data, ()))
        path = rng.choice(paths)
        move = rng.choice(("replace", "replace", "replace", "delete", "rename", "add"))
        data = _apply(data, path, move, rng)
    return data


def _paths(node: Any, prefix: tuple) -> Any:
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, prefix + (index,))


def _apply(data: Any, path: tuple, move: str, rng: random.Random) -> Any:
    if not path:
        return rng.choice(NASTY_VALUES) if move == "replace" else data
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if move == "replace":
        parent[last] = copy.deepcopy(rng.choice(NASTY_VALUES))
    elif move == "delete":
        del parent[last]
    elif move == "rename" and isinstance(parent, dict):
        parent[rng.choice(UNKNOWN_KEYS)] = parent.pop(last)
    elif move == "add" and isinstance(parent, dict):
        parent[rng.choice(UNKNOWN_KEYS)] = copy.deepcopy(rng.choice(NASTY_VALUES))
    elif isinstance(parent, list):
        parent.append(copy.deepcopy(rng.choice(NASTY_VALUES)))
    return data


def _yaml_writer(data: Any) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return write


def _text_writer(text: str) -> Callable[[Path], None]:
    return lambda path: path.write_text(text, encoding="utf-8")


def _bytes_writer(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


# ---- whole-file hazards ----------------------------------------------------------------------------------
VALID = "workload: {preset: tiny_cpu, train_iters: 8}\nfaults:\n  - at: {step: 3, phase: forward}\n    target: {rank: 1}\n    signal: SIGKILL\n"


def _alias_bomb(levels: int, width: int) -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for level in range(1, levels):
        refs = ", ".join(f"*a{level - 1}" for _ in range(width))
        lines.append(f"a{level}: &a{level} [{refs}]")
    return "\n".join(lines)


def _fixed_cases() -> list[FuzzCase]:
    bomb = _alias_bomb(9, 9)
    texts = {
        "empty": "",
        "comment-only": "# nothing\n",
        "top-list": "- workload: {preset: tiny_cpu}\n",
        "top-scalar": "42\n",
        "top-string": "hello\n",
        "null-workload": "workload:\n",
        "false-workload": "workload: false\n",
        "empty-faults-map": "workload: {preset: tiny_cpu}\nfaults: {}\n",
        "alias-bomb-top": bomb + "\n",
        "alias-bomb-in-seed": bomb + "\nseed: *a8\nworkload: {preset: tiny_cpu}\n",
        "alias-bomb-in-preset": "x: &b [1, 1, 1, 1, 1, 1, 1, 1, 1]\ny: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
                                "z: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\nw: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
                                "workload: {preset: *e}\n",
        "alias-bomb-in-faults": "a: &a [x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
                                "c: &c [*b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c]\n"
                                "workload: {preset: tiny_cpu}\nfaults: *d\n",
        "deep-list": "workload: " + "[" * 600 + "]" * 600 + "\n",
        "deep-map": "workload: " + "{a: " * 600 + "1" + "}" * 600 + "\n",
        "deep-block": "".join("  " * i + f"k{i}:\n" for i in range(400)) + "  " * 400 + "v\n",
        "huge-int-seed": f"seed: {HUGE_INT_TEXT}\nworkload: {{preset: tiny_cpu}}\n",
        "huge-int-step": VALID.replace("step: 3", f"step: {HUGE_INT_TEXT}"),
        "huge-int-train-iters": f"workload: {{preset: tiny_cpu, train_iters: {HUGE_INT_TEXT}}}\n",
        "huge-int-max-restarts": f"workload: {{preset: tiny_cpu}}\nrestart: {{max_restarts: {HUGE_INT_TEXT}}}\n",
        "inf-mtbf": "workload: {preset: tiny_cpu}\nfaults:\n  - random: {mtbf_s: .inf}\n",
        "nan-mtbf": "workload: {preset: tiny_cpu}\nfaults:\n  - random: {mtbf_s: .nan}\n",
        "tiny-mtbf-many-restarts": "workload: {preset: tiny_cpu}\nrestart: {max_restarts: 10000000}\n"
                                   "faults:\n  - random: {mtbf_s: 0.001}\n",
        "many-restarts": "workload: {preset: tiny_cpu}\nrestart: {max_restarts: 10000000}\n",
        "inf-grace": "workload: {preset: tiny_cpu}\nrestart: {teardown_grace_s: .inf}\n",
        "inf-after-s": VALID.replace("{step: 3, phase: forward}", "{after_s: .inf}"),
        "inf-tolerance": "workload: {preset: tiny_cpu}\ntolerance: {lm loss: .inf}\n",
        "list-key": "workload: {preset: tiny_cpu}\n? [a, b]\n: 1\n",
        "map-key": "workload: {preset: tiny_cpu}\n? {a: 1}\n: 1\n",
        "list-key-in-workload": "workload: {[1, 2]: 3}\n",
        "list-preset": "workload: {preset: [tiny_cpu]}\n",
        "map-preset": "workload: {preset: {tiny_cpu: 1}}\n",
        "map-kind": "workload: {kind: {gpt3: 1}}\n",
        "list-kind": "workload: {kind: [gpt3]}\n",
        "int-key": "workload: {preset: tiny_cpu, 3: 4}\n",
        "null-key": "workload: {preset: tiny_cpu}\n~: 1\n",
        "bool-key": "workload: {preset: tiny_cpu}\ntrue: 1\n",
        "duplicate-key": "workload: {preset: tiny_cpu}\nworkload: {preset: tiny_cpu}\n",
        "tab-indent": "workload:\n\tpreset: tiny_cpu\n",
        "unclosed": "workload: {preset: tiny_cpu\n",
        "golden-300": "workload: {preset: tiny_cpu}\ngolden: " + "g" * 300 + ".json\n",
        "golden-5000": "workload: {preset: tiny_cpu}\ngolden: " + "g/" * 2500 + "x.json\n",
        "golden-nul": "workload: {preset: tiny_cpu}\ngolden: \"a\\0b.json\"\n",
        "golden-dir": "workload: {preset: tiny_cpu}\ngolden: /\n",
        "data-path-nul": "workload: {preset: tiny_cpu, data_path: \"x\\0y\"}\n",
        "data-path-missing": "workload: {preset: tiny_cpu, data_path: /nonexistent/chaos-fuzz/data}\n",
        "binary-tag": "workload: !!binary aGVsbG8=\n",
        "python-tag": "workload: !!python/object:os.system {}\n",
        "timestamp-seed": "seed: 2001-12-14\nworkload: {preset: tiny_cpu}\n",
        "set-type": "workload: !!set {preset: null}\n",
        "omap": "workload: !!omap [{preset: tiny_cpu}]\n",
        "hidden-dropout-1.5": "workload: {preset: tiny_cpu, hidden_dropout: 1.5}\n",
        "attention-dropout-neg": "workload: {preset: tiny_cpu, attention_dropout: -0.1}\n",
        "lr-negative": "workload: {preset: tiny_cpu, lr: -1}\n",
        "lr-nan": "workload: {preset: tiny_cpu, lr: .nan}\n",
        "lr-inf": "workload: {preset: tiny_cpu, lr: .inf}\n",
        "seed-negative": "workload: {preset: tiny_cpu, seed: -1}\n",
        "seed-huge": "workload: {preset: tiny_cpu, seed: 18446744073709551616}\n",
        "beta-2": "workload: {preset: tiny_cpu, adam_beta1: 2}\n",
        "eps-zero": "workload: {preset: tiny_cpu, adam_eps: 0}\n",
        "min-lr-above-lr": "workload: {preset: tiny_cpu, lr: 1.0e-4, min_lr: 1.0}\n",
        "warmup-not-below-decay": "workload: {preset: tiny_cpu, train_iters: 2}\n",  # warmup 2, decay 2
        "cuda-on-cpu": "workload: {preset: tiny_cpu, device: cuda}\n",
        "train-iters-1e6": "workload: {preset: tiny_cpu, train_iters: 1000000000000}\n",
        "world-size-huge": "workload: {preset: tiny_cpu, world_size: 100000, tensor_parallel: 2}\n",
        "long-line": "workload: {preset: tiny_cpu}\ndescription: " + "d" * 200_000 + "\n",
        "bidi-name": "name: \"\u202eevil\"\nworkload: {preset: tiny_cpu}\n",
        "slash-name": "name: ../../escape\nworkload: {preset: tiny_cpu}\n",
        "nul-name": "name: \"a\\0b\"\nworkload: {preset: tiny_cpu}\n",
        "empty-name": "name: ''\nworkload: {preset: tiny_cpu}\n",
        "document-stream": "workload: {preset: tiny_cpu}\n---\nworkload: {preset: tiny_cpu}\n",
    }
    cases = [FuzzCase(name, _text_writer(text)) for name, text in texts.items()]
    raw = {
        "latin1": "workload: {preset: tiny_cpu}\nname: caf\xe9\n".encode("latin-1"),
        "utf16": VALID.encode("utf-16"),
        "nul-bytes": b"workload: {preset: tiny_cpu}\n\x00\x00\x00",
        "random-bytes": bytes(random.Random(3).randrange(256) for _ in range(4096)),
        "bom-utf8": b"\xef\xbb\xbf" + VALID.encode(),
        "lone-surrogate": b"name: \xed\xa0\x80\nworkload: {preset: tiny_cpu}\n",
        "control-chars": b"workload: {preset: tiny_cpu}\nname: a\x07\x1bb\n",
    }
    cases += [FuzzCase(name, _bytes_writer(data)) for name, data in raw.items()]
    cases += [
        FuzzCase("directory", lambda path: path.mkdir()),
        FuzzCase("fifo", lambda path: os.mkfifo(path)),
        FuzzCase("dev-zero", lambda path: path.symlink_to("/dev/zero")),
        FuzzCase("dev-null", lambda path: path.symlink_to("/dev/null")),
        FuzzCase("dangling-link", lambda path: path.symlink_to(path.with_name("nowhere.yaml"))),
        FuzzCase("link-loop", lambda path: path.symlink_to(path)),
        FuzzCase("missing", lambda path: None),
        FuzzCase("huge-file", lambda path: path.write_bytes(b"# " + b"x" * (9 * 1024 * 1024) + b"\n" + VALID.encode())),
    ]
    return cases
