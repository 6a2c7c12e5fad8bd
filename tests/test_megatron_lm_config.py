"""kind: megatron_lm's configuration (chaos/workloads/megatron_lm/config.py): torch-free, every error names
the file, the field and what was expected."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from chaos.errors import InputError
from chaos.workloads.megatron_lm.config import (
    CHAOS_OWNED_FLAGS,
    CKPT_FORMATS,
    MegatronLMConfig,
)
from chaos.workloads.megatron_lm.flags import parse_flags

SOURCE = "scenarios/megatron.yaml"

# The shape of Megatron-LM's tests/functional_tests/test_cases/gpt/*/model_config.yaml.
MODEL_CONFIG = """\
ENV_VARS:
  CUDA_DEVICE_MAX_CONNECTIONS: 1
  NVTE_ALLOW_NONDETERMINISTIC_ALGO: 0
  CUBLAS_WORKSPACE_CONFIG: :4096:8
MODEL_ARGS:
  --num-layers: 12
  --hidden-size: 512
  --tensorboard-dir: ${TENSORBOARD_PATH}
  --save: ${CHECKPOINT_SAVE_PATH}
  --load: ${CHECKPOINT_LOAD_PATH}
  --data-path: ${DATA_PATH}/my-gpt3_00_text_document
  --vocab-file: ${DATA_PATH}/bpe/vocab.json
  --split: 949,50,1
  --lr: 0.00015
  --bf16: true
  --use-legacy-models: false
  --spec: null
  --log-interval: 1
  --save-interval: 50
  --train-iters: 100
  --ckpt-format: fsdp_dtensor
TEST_TYPE: regular
"""


@pytest.fixture
def checkout(tmp_path, monkeypatch) -> Path:
    """A fake Megatron-LM checkout: pretrain_gpt.py and a megatron/ package folder."""
    monkeypatch.delenv("MEGATRON_LM", raising=False)
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "Megatron-LM"
    (root / "megatron").mkdir(parents=True)
    (root / "pretrain_gpt.py").write_text("")
    return root


@pytest.fixture
def scenario_dir(tmp_path) -> Path:
    folder = tmp_path / "scenarios"
    folder.mkdir()
    (folder / "model_config.yaml").write_text(MODEL_CONFIG)
    return folder


def build(mapping: dict, base_dir: Path | None = None) -> MegatronLMConfig:
    return MegatronLMConfig.from_mapping({"kind": "megatron_lm", **mapping}, SOURCE, "workload", base_dir)


def error(mapping: dict, base_dir: Path | None = None) -> InputError:
    with pytest.raises(InputError) as info:
        build(mapping, base_dir)
    assert str(info.value).startswith(f"{SOURCE}: {info.value.field}: ")
    return info.value


def minimal(checkout: Path, **extra) -> dict:
    return {"megatron_lm": str(checkout), "args": ["--num-layers", 2, "--train-iters", 8, "--save-interval", 4],
            **extra}


FROM_VARS = {"TENSORBOARD_PATH": "/tb", "DATA_PATH": "/data"}


# ---- flag parsing --------------------------------------------------------------------------------------
def test_parse_flags_follows_megatron_argparse():
    assert parse_flags(["--data-path", "0.5", "a", "0.5", "b", "--bf16", "--seed=-1", "--min-lr", "-1e-5",
                        "--x=1", "2"]) == [
        ("--data-path", ("0.5", "a", "0.5", "b")), ("--bf16", ()), ("--seed", ("-1",)), ("--min-lr", ("-1e-5",)),
        ("--x", ("1", "2")),
    ]


# ---- the basics ----------------------------------------------------------------------------------------
def test_minimal_config(checkout):
    config = build(minimal(checkout, nproc_per_node=2, nodes=3))
    assert config.script == str((checkout / "pretrain_gpt.py").resolve())
    assert config.megatron_lm == str(checkout.resolve())
    assert config.python == sys.executable
    assert (config.world_size, config.device, config.ckpt_format) == (6, "cuda", "torch_dist")
    assert config.user_args == ("--num-layers", "2", "--train-iters", "8", "--save-interval", "4")
    assert (config.train_iters, config.save_interval, config.exit_on_sigterm) == (8, 4, True)
    assert config.env == ()


def test_megatron_lm_defaults_to_the_environment(checkout, monkeypatch):
    monkeypatch.setenv("MEGATRON_LM", str(checkout))
    config = build({"args": ["--train-iters", 8, "--save-interval", 4]})
    assert config.megatron_lm == str(checkout.resolve())
    assert config.script == str((checkout / "pretrain_gpt.py").resolve())


def test_script_next_to_the_scenario_needs_no_checkout(tmp_path, monkeypatch):
    monkeypatch.delenv("MEGATRON_LM", raising=False)
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "train_tiny.py").write_text("")
    config = build({"script": "train_tiny.py", "train_iters": 4, "save_interval": 2, "device": "cpu"}, folder)
    assert config.script == str((folder / "train_tiny.py").resolve())
    assert config.megatron_lm is None  # no megatron/ above the script


def test_script_inside_a_checkout_finds_it(checkout):
    (checkout / "examples").mkdir()
    (checkout / "examples" / "run.py").write_text("")
    config = build({"script": str(checkout / "examples" / "run.py"), "train_iters": 4, "save_interval": 2})
    assert config.megatron_lm == str(checkout.resolve())


# ---- launch args: chaos owns some flags -----------------------------------------------------------------
def test_launch_args_replace_the_owned_flags(checkout, tmp_path):
    config = build({"megatron_lm": str(checkout), "train_iters": 30, "save_interval": 10,
                    "args": ["--save", "/mine/ckpt", "--num-layers", 2, "--load=/pretrained", "--log-interval", 10,
                             "--train-iters", 500, "--bf16", "--save-interval", "1000", "--data-path", 0.5, "a"]})
    run = tmp_path / "run" / "checkpoints"
    assert config.launch_args(run) == [
        "--num-layers", "2", "--bf16", "--data-path", "0.5", "a",
        "--save", str(run), "--load", str(run), "--train-iters", "30", "--save-interval", "10",
        "--log-interval", "1", "--exit-signal-handler",
    ]
    notes = "\n".join(config.owned_flag_notes())
    assert "--save /mine/ckpt replaced by the run directory's checkpoints" in notes
    assert "--load /pretrained replaced by the run directory's checkpoints" in notes
    assert "--log-interval 10 replaced by 1 (chaos reads every iteration)" in notes
    assert "--train-iters 500 replaced by 30 (workload.train_iters)" in notes
    assert "--save-interval 1000 replaced by 10 (workload.save_interval)" in notes
    assert "--exit-signal-handler added" in notes


def test_exit_signal_handler_added_or_removed(checkout, tmp_path):
    kept = build(minimal(checkout, args=["--train-iters", 8, "--save-interval", 4, "--exit-signal-handler"]))
    assert kept.launch_args(tmp_path).count("--exit-signal-handler") == 1
    assert not any("exit-signal-handler" in note for note in kept.owned_flag_notes())
    removed = build(minimal(checkout, exit_on_sigterm=False,
                            args=["--train-iters", 8, "--exit-signal-handler", "--save-interval", 4]))
    assert "--exit-signal-handler" not in removed.launch_args(tmp_path)
    assert any(note.startswith("--exit-signal-handler removed") for note in removed.owned_flag_notes())
    absent = build(minimal(checkout, exit_on_sigterm=False))
    assert "--exit-signal-handler" not in absent.launch_args(tmp_path)


def test_owned_flags_read_from_the_args(checkout, tmp_path):
    config = build(minimal(checkout))
    assert (config.train_iters, config.save_interval) == (8, 4)
    args = config.launch_args(tmp_path)
    assert args.count("--train-iters") == 1 and args[args.index("--train-iters") + 1] == "8"
    assert not any("train-iters" in note for note in config.owned_flag_notes())  # unchanged: nothing rewritten
    assert set(CHAOS_OWNED_FLAGS) <= set(args)


# ---- args_from (Megatron-LM's functional test format) ---------------------------------------------------
def test_args_from_expands_model_args_and_env_vars(checkout, scenario_dir, tmp_path):
    config = build({"megatron_lm": str(checkout), "args_from": "model_config.yaml", "vars": FROM_VARS,
                    "env": {"NCCL_ALGO": "Ring", "CUDA_DEVICE_MAX_CONNECTIONS": 8}}, scenario_dir)
    assert config.user_args == (
        "--num-layers", "12", "--hidden-size", "512", "--tensorboard-dir", "/tb",
        "--save", "${CHECKPOINT_SAVE_PATH}", "--load", "${CHECKPOINT_LOAD_PATH}",   # chaos-owned: never resolved
        "--data-path", "/data/my-gpt3_00_text_document", "--vocab-file", "/data/bpe/vocab.json",
        "--split", "949,50,1", "--lr", "0.00015", "--bf16",                        # true -> bare; false/null -> out
        "--log-interval", "1", "--save-interval", "50", "--train-iters", "100", "--ckpt-format", "fsdp_dtensor",
    )
    assert (config.train_iters, config.save_interval, config.ckpt_format) == (100, 50, "fsdp_dtensor")
    assert config.env == (("CUBLAS_WORKSPACE_CONFIG", ":4096:8"), ("CUDA_DEVICE_MAX_CONNECTIONS", "8"),
                          ("NCCL_ALGO", "Ring"), ("NVTE_ALLOW_NONDETERMINISTIC_ALGO", "0"))
    launch = config.launch_args(tmp_path)
    assert "${CHECKPOINT_SAVE_PATH}" not in launch and launch.count("--save") == 1


def test_args_win_over_args_from_and_args_remove_drops(checkout, scenario_dir):
    config = build({"megatron_lm": str(checkout), "args_from": "model_config.yaml", "vars": FROM_VARS,
                    "args_remove": ["--data-path", "--vocab-file"],
                    "args": ["--num-layers", 2, "--mock-data", "--tensorboard-dir", "/elsewhere"],
                    "train_iters": 20}, scenario_dir)
    flags = dict(config.flags())
    assert "--data-path" not in flags and "--vocab-file" not in flags
    assert config.flags()[-3:] == [("--num-layers", ("2",)), ("--mock-data", ()),
                                   ("--tensorboard-dir", ("/elsewhere",))]
    assert [f for f, _ in config.flags()].count("--num-layers") == 1
    assert config.train_iters == 20


def test_args_override_needs_no_variable(checkout, scenario_dir, monkeypatch):
    monkeypatch.delenv("TENSORBOARD_PATH", raising=False)
    monkeypatch.delenv("DATA_PATH", raising=False)
    config = build({"megatron_lm": str(checkout), "args_from": "model_config.yaml",
                    "args_remove": ["--data-path", "--vocab-file"], "args": ["--tensorboard-dir", "/tb2"]},
                   scenario_dir)
    assert dict(config.flags())["--tensorboard-dir"] == ("/tb2",)


def test_variables_from_the_environment(checkout, scenario_dir, monkeypatch):
    monkeypatch.setenv("TENSORBOARD_PATH", "/env-tb")
    monkeypatch.setenv("DATA_PATH", "/env-data")
    monkeypatch.setenv("MY_SEED", "77")
    config = build({"megatron_lm": str(checkout), "args_from": "model_config.yaml",
                    "vars": {"DATA_PATH": "/vars-data"}, "args": ["--seed", "${MY_SEED}"],
                    "env": {"OUT": "${DATA_PATH}/x"}}, scenario_dir)
    flags = dict(config.flags())
    assert flags["--tensorboard-dir"] == ("/env-tb",)
    assert flags["--data-path"] == ("/vars-data/my-gpt3_00_text_document",)  # vars before the environment
    assert flags["--seed"] == ("77",)
    assert dict(config.env)["OUT"] == "/vars-data/x"


def test_model_args_strings_split_and_lists(checkout, tmp_path):
    path = tmp_path / "blend.yaml"
    path.write_text("MODEL_ARGS:\n  --data-path: 0.5 a 0.5 b\n  --seq: [1, x]\n  --train-iters: 4\n"
                    "  --save-interval: 2\n")
    config = build({"megatron_lm": str(checkout), "args_from": str(path)})
    assert config.flags()[:2] == [("--data-path", ("0.5", "a", "0.5", "b")), ("--seq", ("1", "x"))]


# ---- round trip and fingerprint -------------------------------------------------------------------------
def test_to_mapping_round_trips(checkout, scenario_dir, tmp_path):
    config = build({"megatron_lm": str(checkout), "args_from": "model_config.yaml", "vars": FROM_VARS,
                    "args": ["--num-layers", 2], "env": {"A": "b"}, "nproc_per_node": 2, "nodes": 2,
                    "device": "cpu", "exit_on_sigterm": False, "save_interval": 7}, scenario_dir)
    mapping = config.to_mapping()
    assert "args_from" not in mapping and isinstance(mapping["args"], list)
    assert Path(mapping["script"]).is_absolute() and Path(mapping["megatron_lm"]).is_absolute()
    again = MegatronLMConfig.from_mapping(yaml.safe_load(yaml.safe_dump(mapping)), "workload.yaml", "workload",
                                          tmp_path / "elsewhere")
    assert again == config
    config.write_yaml(tmp_path / "run" / "workload.yaml")
    assert MegatronLMConfig.read_yaml(tmp_path / "run" / "workload.yaml") == config


def test_fingerprint(checkout):
    base = build(minimal(checkout, args=["--num-layers", 2, "--train-iters", 8, "--save-interval", 4,
                                         "--save", "/a", "--tensorboard-dir", "/tb", "--data-cache-path=/c"]))
    fingerprint = base.fingerprint_mapping()
    assert fingerprint["args"] == ["--num-layers", "2"]
    assert fingerprint["script"] == "pretrain_gpt.py"
    assert (fingerprint["world_size"], fingerprint["nodes"], fingerprint["train_iters"]) == (1, 1, 8)
    same = [
        minimal(checkout, args=["--num-layers", 2, "--train-iters", 8, "--save-interval", 2]),
        minimal(checkout, args=["--num-layers", 2, "--train-iters", 8, "--save-interval", 4, "--save", "/b",
                                "--load", "/c", "--log-interval", 100, "--tensorboard-dir", "/x"]),
        minimal(checkout, exit_on_sigterm=False),
        minimal(checkout, save_interval=3),
    ]
    for mapping in same:
        assert build(mapping).fingerprint_mapping() == fingerprint, mapping
    different = [
        minimal(checkout, args=["--num-layers", 4, "--train-iters", 8, "--save-interval", 4]),
        minimal(checkout, train_iters=9),
        minimal(checkout, nproc_per_node=2),
        minimal(checkout, env={"NCCL_ALGO": "Tree"}),
    ]
    for mapping in different:
        assert build(mapping).fingerprint_mapping() != fingerprint, mapping


# ---- errors name the file, the field and what was expected -----------------------------------------------
def test_unknown_key_did_you_mean(checkout):
    err = error(minimal(checkout, save_intervall=3))
    assert err.field == "workload.save_intervall"
    assert "did you mean save_interval?" in err.message


@pytest.mark.parametrize("key, value, expected", [
    ("nproc_per_node", 0, "must be >= 1, got 0"),
    ("nodes", "2", "expected an integer >= 1, got '2'"),
    ("train_iters", 0, "must be >= 1, got 0"),
    ("save_interval", -1, "must be >= 1, got -1"),
    ("exit_on_sigterm", "yes", "expected true or false"),
    ("device", "cdua", "expected one of ['cuda', 'cpu'], got 'cdua' (did you mean cuda?)"),
    ("args", "--bf16 --num-layers 2", "expected a list of flags and values"),
    ("env", ["A=1"], "expected a mapping of NAME: value"),
    ("vars", {"A": [1]}, "expected a string or a number"),
])
def test_type_and_range_errors(checkout, key, value, expected):
    err = error(minimal(checkout, **{key: value}))
    assert err.field.startswith(f"workload.{key}")
    assert expected in err.message


def test_args_item_errors(checkout):
    err = error(minimal(checkout, args=["--train-iters", 8, "--bf16", True]))
    assert err.field == "workload.args[3]" and "expected a string or a number" in err.message
    err = error(minimal(checkout, args=["8", "--train-iters", 8]))
    assert err.field == "workload.args[0]" and "expected a flag (--name) before the value '8'" in err.message


def test_missing_script_says_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.delenv("MEGATRON_LM", raising=False)
    monkeypatch.chdir(tmp_path)
    err = error({"train_iters": 4, "save_interval": 2}, tmp_path / "scenarios")
    assert err.field == "workload.script"
    assert str(tmp_path / "scenarios" / "pretrain_gpt.py") in err.message
    assert str(tmp_path / "pretrain_gpt.py") in err.message
    assert "set workload.megatron_lm (or $MEGATRON_LM)" in err.message
    err = error({"megatron_lm": "nowhere", "train_iters": 4, "save_interval": 2}, tmp_path)
    assert err.field == "workload.megatron_lm" and "expected your Megatron-LM checkout" in err.message


def test_missing_train_iters_and_save_interval(checkout):
    err = error({"megatron_lm": str(checkout), "args": ["--save-interval", 4]})
    assert err.field == "workload.train_iters"
    assert "set workload.train_iters or pass --train-iters" in err.message
    err = error({"megatron_lm": str(checkout), "args": ["--train-iters", 4]})
    assert err.field == "workload.save_interval"
    err = error({"megatron_lm": str(checkout), "args": ["--train-iters", "many", "--save-interval", 4]})
    assert err.field == "workload.args[0]" and "--train-iters expects one integer >= 1, got many" in err.message


def test_unresolved_variable(checkout, scenario_dir, monkeypatch):
    monkeypatch.delenv("TENSORBOARD_PATH", raising=False)
    monkeypatch.delenv("DATA_PATH", raising=False)
    err = error(minimal(checkout, args=["--train-iters", 8, "--save-interval", 4, "--data-path", "${DATA_PTH}"],
                        vars={"DATA_PATH": "/d"}))
    assert err.field == "workload.args[5]"
    assert ("${DATA_PTH} is not set: give it in workload.vars or the environment (did you mean DATA_PATH?)"
            in err.message)
    err = error({"megatron_lm": str(checkout), "args_from": "model_config.yaml", "vars": {"DATA_PATH": "/d"}},
                scenario_dir)
    assert err.field == "workload.args_from"
    assert f"in {scenario_dir / 'model_config.yaml'}, MODEL_ARGS['--tensorboard-dir']" in err.message
    assert "${TENSORBOARD_PATH} is not set" in err.message
    err = error(minimal(checkout, env={"X": "${NOPE}"}))
    assert err.field == "workload.env.X" and "${NOPE} is not set" in err.message


def test_args_from_errors(checkout, tmp_path):
    err = error(minimal(checkout, args_from="missing.yaml"), tmp_path)
    assert err.field == "workload.args_from"
    assert str(tmp_path / "missing.yaml") in err.message and "expected a Megatron-LM functional test" in err.message
    bad = tmp_path / "bad.yaml"
    for text, expected in [
        ("model_args: {--a: 1}\n", "expected a MODEL_ARGS mapping ({--flag: value}); found the keys ['model_args'] "
                                   "(did you mean MODEL_ARGS instead of model_args?)"),
        ("MODEL_ARGS: [--a, 1]\n", "MODEL_ARGS: expected a mapping of --flag: value"),
        ("MODEL_ARGS: {num-layers: 2}\n", "MODEL_ARGS['num-layers']: expected a flag starting with --"),
        ("MODEL_ARGS: {--a: {b: 1}}\n", "MODEL_ARGS['--a']: expected true, false, null, a string"),
        ("MODEL_ARGS: {--a: 1}\nENV_VARS: [A]\n", "ENV_VARS: expected a mapping of NAME: value"),
        ("MODEL_ARGS: {--a: 1\n", "line 2, column 1: not YAML"),
    ]:
        bad.write_text(text)
        err = error(minimal(checkout, args_from=str(bad)))
        assert err.field == "workload.args_from"
        assert err.message.startswith(f"in {bad.resolve()}")
        assert expected in err.message, err.message


def test_args_remove_errors(checkout, scenario_dir):
    err = error(minimal(checkout, args_remove=["--data-path"]))
    assert err.field == "workload.args_remove" and "there is no args_from" in err.message
    err = error({"megatron_lm": str(checkout), "args_from": "model_config.yaml", "vars": FROM_VARS,
                 "args_remove": ["--data-path", "--vocab-fil"]}, scenario_dir)
    assert err.field == "workload.args_remove[1]"
    assert "--vocab-fil is not in args_from's MODEL_ARGS (did you mean --vocab-file?)" in err.message


def test_ckpt_format(checkout):
    for fmt in CKPT_FORMATS:
        assert build(minimal(checkout, args=["--train-iters", 8, "--save-interval", 4, "--ckpt-format", fmt])
                     ).ckpt_format == fmt
    err = error(minimal(checkout, args=["--train-iters", 8, "--save-interval", 4, "--ckpt-format", "torch_dsit"]))
    assert err.field == "workload.args[4]"
    assert "--ckpt-format expects one of ['torch_dist', 'fsdp_dtensor', 'torch_dcp', 'torch'], got 'torch_dsit' " \
           "(did you mean torch_dist?)" in err.message
    err = error(minimal(checkout, ckpt_format="torch"))
    assert err.field == "workload.ckpt_format" and "is read from --ckpt-format in the args (torch_dist)" in err.message


def test_train_samples_is_refused(checkout):
    err = error(minimal(checkout, args=["--train-samples", 100, "--train-iters", 8, "--save-interval", 4]))
    assert err.field == "workload.args[0]" and "chaos counts iterations" in err.message


def test_never_imports_torch():
    import subprocess

    code = ("import sys, chaos.workloads.megatron_lm.config; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
