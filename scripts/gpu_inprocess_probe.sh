#!/usr/bin/env bash
# Evidence, on one GPU, of how NVIDIA's resiliency extension's in-process restart (nvidia-resiliency-ext
# 0.7.0, inprocess.Wrapper) behaves with UNMODIFIED Megatron-LM `pretrain_gpt.py --inprocess-restart`.
# Not part of chaos: a probe whose logs say what chaos would have to follow under `restart: {by: job}`.
#
# Prepare on the CPU machine, from the project root (both paths are under the ignored /.whl/):
#   mkdir -p .whl/nvrx .whl/megatron-lm
#   .venv/bin/pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_39_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl/nvrx \
#     nvidia-resiliency-ext==0.7.0 defusedxml==0.7.1
#   cp MEGATRON_LM_TARBALL .whl/megatron-lm/   # a source tarball of Megatron-LM (tested: main d98e8a64dd)
# On the device machine (run tool, one GPU): carry [".whl/nvrx", ".whl/megatron-lm"], command
#   bash scripts/gpu_inprocess_probe.sh
# The image already has everything else nvidia_resiliency_ext.inprocess and .fault_tolerance import
# (torch, numpy, packaging, psutil, pyyaml, httpx, grpcio, protobuf, nvidia-ml-py): only defusedxml is missing.
#
# The job is the one-GPU megatron_lm scenario's (scenarios/megatron_lm/gpt3_mcore_tp1_zp_z3_resume_fsdp_dtensor_1gpu.yaml:
# Megatron-FSDP, fsdp_dtensor checkpoints, bf16, deterministic mode) with what chaos adds (--save/--load, --log-interval 1,
# --exit-signal-handler), 12 iterations, a save every 4, under `torchrun --nproc-per-node 1`, plus --inprocess-restart.
# An exception is raised once in the rank by a sitecustomize hook on PYTHONPATH (written to /tmp below; chaos's
# `raise` fault cannot reach a megatron_lm job yet): it wraps megatron.training.training.train_step and raises
# RuntimeError while iteration IPR_RAISE_AT+1 runs (after iteration IPR_RAISE_AT is logged and checkpoint 4 committed).
#   A  unmodified Megatron-LM + in-process restart + the raise
#   B  the same with IPR_FIX_ARGS=1: the hook re-parses Megatron's arguments when pretrain() is re-entered with
#      its global args destroyed (diagnostic only: shows the rest of the restart path); B2 the torch_dist/DDP
#      variant if B does not finish
#   C  cold restart for comparison: a new process from checkpoint 4 of A (or B) (same flags, no raise)
# Logs (each line prefixed with the wall time it was read, time.time()) and a summary go to ${OUT:-/tmp/ipr-out}.
# Seen 2026-12-06 on one H100 (logs: runs/gpu-inprocess-probe-h100/, ignored): A re-enters pretrain() in the same
# pid and fails at once with "AssertionError: args is not initialized." on every re-entry, unbounded (11 entries
# in 17 s); B reloads checkpoint 4 and trains 5-12 equal to C, 5.9 s from the raise to iteration 5 (C: 24.6 s).
set -uo pipefail
out=${OUT:-/tmp/ipr-out}; mkdir -p "$out"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
export NVTE_ALLOW_NONDETERMINISTIC_ALGO=0 NCCL_ALGO=Ring CUBLAS_WORKSPACE_CONFIG=:4096:8
export TORCH_CPP_LOG_LEVEL=error LOGLEVEL=INFO
budget=${IPR_BUDGET_S:-500}
root=$(pwd)
site=/tmp/ipr-site hook=/tmp/ipr-hook mlm=/tmp/ipr-mlm work=/tmp/ipr-work
rm -rf "$site" "$hook" "$work"; mkdir -p "$site" "$hook" "$work" "$mlm"

{
  echo "== device"; nvidia-smi -L; ldd --version | head -1; python3 --version
  echo "== install"
  if ! python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$root"/.whl/nvrx/*.whl; then
    echo "pip install failed; unzipping the wheels instead"
    for w in "$root"/.whl/nvrx/*.whl; do python3 -m zipfile -e "$w" "$site"; done
  fi
  [ -d "$mlm/Megatron-LM" ] || tar -xzf "$root"/.whl/megatron-lm/megatron-lm-*.tar.gz -C "$mlm"
  echo "== pip list (what nvrx needs)"
  python3 -m pip list 2>/dev/null | grep -iE "^(torch|numpy|packaging|psutil|pyyaml|httpx|httpcore|anyio|h11|idna|grpcio|grpcio-tools|protobuf|nvidia-ml-py|pynvml|defusedxml|fastapi|pydantic|pydantic-settings|uvicorn|slowapi) "
  echo "== imports"
  PYTHONPATH=$site python3 -W ignore -c "
import time; t = time.time()
import nvidia_resiliency_ext.inprocess as ip, nvidia_resiliency_ext.fault_tolerance.launcher
from typing import Optional, Any
from nvidia_resiliency_ext.inprocess.param_utils import check_type
print('nvrx imports ok in %.1f s' % (time.time() - t))
print('CallWrapper injected into an Optional[Any] parameter (Megatron pretrain inprocess_call_wrapper):', check_type(Optional[Any], ip.CallWrapper))
"
} > "$out/setup.txt" 2>&1
cat "$out/setup.txt"

# The fault hook: a sitecustomize that patches megatron.training.training right after it is imported.
cat > "$hook/sitecustomize.py" <<'PY'
import functools, importlib.abc, importlib.util, inspect, os, sys, threading, time

_RAISE_AT = int(os.environ.get("IPR_RAISE_AT", "-1"))
_FIX_ARGS = os.environ.get("IPR_FIX_ARGS") == "1"
_state = {"raised": False, "entries": 0}


def _log(msg):
    sys.stderr.write(f"[ipr-probe] t={time.time():.3f} pid={os.getpid()} {msg}\n")
    sys.stderr.flush()


def _patch(mod):
    orig_train_step, orig_pretrain, orig_load = mod.train_step, mod.pretrain, mod.load_checkpoint

    @functools.wraps(orig_train_step)
    def train_step(*a, **k):
        from megatron.training.global_vars import get_args
        it = get_args().curr_iteration
        if not _state["raised"] and it == _RAISE_AT:
            _state["raised"] = True
            _log(f"RAISE RuntimeError in train_step (iteration {it + 1} running, {it} logged)")
            raise RuntimeError(f"ipr-probe: injected fault in iteration {it + 1}")
        return orig_train_step(*a, **k)

    @functools.wraps(orig_pretrain)
    def pretrain(*a, **k):
        _state["entries"] += 1
        n = _state["entries"]
        bound = inspect.signature(orig_pretrain).bind(*a, **k)
        cw = bound.arguments.get("inprocess_call_wrapper")
        import torch
        try:
            import psutil
            children = len(psutil.Process().children(recursive=True))
        except Exception:
            children = "?"
        _log(f"ENTER pretrain #{n} inprocess_call_wrapper={type(cw).__name__ if cw is not None else None} "
             f"wrapper_iteration={getattr(cw, 'iteration', None)} RANK={os.environ.get('RANK')} "
             f"WORLD_SIZE={os.environ.get('WORLD_SIZE')} TORCHELASTIC_RESTART_COUNT={os.environ.get('TORCHELASTIC_RESTART_COUNT')} "
             f"cuda_allocated_MiB={torch.cuda.memory_allocated() / 2**20:.0f} threads={threading.active_count()} "
             f"child_processes={children} dist_initialized={torch.distributed.is_initialized()}")
        if _FIX_ARGS and n > 1:
            from megatron.training import global_vars
            if global_vars._GLOBAL_ARGS is None:
                from megatron.training.arguments import parse_and_validate_args
                parse_and_validate_args(args_defaults={"tokenizer_type": "GPT2BPETokenizer"})
                _log("FIX re-parsed Megatron's arguments (destroyed by the in-process finalize)")
        try:
            result = orig_pretrain(*a, **k)
        except BaseException as e:
            _log(f"EXIT pretrain #{n} raising {type(e).__name__}: {str(e)[:200]}")
            raise
        _log(f"EXIT pretrain #{n} returned")
        return result

    @functools.wraps(orig_load)
    def load_checkpoint(*a, **k):
        _log("LOAD begin")
        result = orig_load(*a, **k)
        _log(f"LOAD end -> {result!r:.80}")
        return result

    mod.train_step, mod.pretrain, mod.load_checkpoint = train_step, pretrain, load_checkpoint
    _log(f"patched megatron.training.training (raise at curr_iteration {_RAISE_AT}, fix args {_FIX_ARGS})")


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "megatron.training.training":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


sys.meta_path.insert(0, _Finder())
PY

common=(--num-layers 12 --hidden-size 512 --num-attention-heads 8 --log-params-norm --log-num-zeros-in-grad
  --micro-batch-size 4 --global-batch-size 32 --seq-length 1024 --max-position-embeddings 1024
  --timing-log-level 0 --lr-decay-iters 320000 --mock-data --tokenizer-type NullTokenizer --vocab-size 50257
  --distributed-backend nccl --lr 0.00015 --lr-decay-style cosine --min-lr 1.0e-5 --weight-decay 1e-2
  --clip-grad 1.0 --lr-warmup-fraction .01 --eval-interval 1000 --eval-iters 10 --transformer-impl local
  --no-persist-layer-norm --no-masked-softmax-fusion --tensor-model-parallel-size 1 --calculate-per-token-loss
  --deterministic-mode --no-gradient-accumulation-fusion --attention-softmax-in-fp32
  --use-checkpoint-opt_param-scheduler --use-mcore-models --bf16
  --train-iters 12 --save-interval 4 --log-interval 1 --exit-signal-handler --inprocess-restart)
fsdp=(--use-megatron-fsdp --data-parallel-sharding-strategy optim_grads_params --use-distributed-optimizer
  --megatron-fsdp-main-params-dtype fp32 --megatron-fsdp-main-grads-dtype fp32 --megatron-fsdp-grad-comm-dtype fp32
  --ckpt-format fsdp_dtensor)
ddp=(--ckpt-format torch_dist)

# run_job NAME TIMEOUT_S PORT CKPT_DIR FLAVOUR [ENV=VALUE...]: torchrun in the background, its output stamped
# with the wall time; stopped at the timeout or once pretrain() was entered 4 times (a restart loop).
run_job() {
  local name=$1 limit=$2 port=$3 ckpt=$4 flavour=$5; shift 5
  local log="$out/$name.log" extra
  if [ "$flavour" = fsdp ]; then extra=("${fsdp[@]}"); else extra=("${ddp[@]}"); fi
  local t0; t0=$(python3 -c 'import time; print(f"{time.time():.3f}")')
  echo "$t0 [ipr-run] start $name flavour=$flavour port=$port ckpt=$ckpt env=$*" > "$log"
  ( cd "$mlm/Megatron-LM" && exec env "$@" PYTHONPATH="$hook:$site:$mlm/Megatron-LM" \
      torchrun --nnodes 1 --nproc-per-node 1 --master-addr 127.0.0.1 --master-port "$port" \
      pretrain_gpt.py "${common[@]}" "${extra[@]}" --save "$ckpt" --load "$ckpt" ) \
    > >(python3 -u -c 'import sys, time
for line in sys.stdin.buffer:
    sys.stdout.buffer.write(b"%.3f " % time.time() + line); sys.stdout.flush()' >> "$log") 2>&1 &
  local pid=$! start=$SECONDS why=exited
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    if [ $((SECONDS - start)) -ge "$limit" ]; then why="timeout ${limit}s"; break; fi
    if [ "$(grep -c 'ENTER pretrain' "$log")" -ge 4 ]; then why="restart loop (pretrain entered 4 times)"; sleep 3; break; fi
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 10); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done; kill -KILL "$pid" 2>/dev/null
    for p in $(grep -o 'pid=[0-9]*' "$log" | sort -u | cut -d= -f2); do kill -KILL "$p" 2>/dev/null; done
  fi
  wait "$pid"; local rc=$?
  sleep 1
  echo "$(python3 -c 'import time; print(f"{time.time():.3f}")') [ipr-run] end $name rc=$rc why=$why after $((SECONDS - start))s" >> "$log"
  echo "== $name: rc=$rc ($why, $((SECONDS - start)) s)"
}

finished() { grep -q "after training is done" "$out/$1.log"; }

run_job A 100 29500 "$work/A" fsdp IPR_RAISE_AT=6
src=A
if ! finished A && [ $((budget - SECONDS)) -gt 190 ]; then
  run_job B 170 29510 "$work/B" fsdp IPR_RAISE_AT=6 IPR_FIX_ARGS=1
  [ -d "$work/B/iter_0000004" ] && src=B
fi
if [ -d "$work/$src/iter_0000004" ] && [ $((budget - SECONDS)) -gt 110 ]; then
  mkdir -p "$work/C"; cp -r "$work/$src/iter_0000004" "$work/C/"; echo 4 > "$work/C/latest_checkpointed_iteration.txt"
  run_job C 90 29530 "$work/C" fsdp IPR_FIX_ARGS=1
fi
if [ -f "$out/B.log" ] && ! finished B && [ $((budget - SECONDS)) -gt 190 ]; then
  run_job B2 170 29520 "$work/B2" ddp IPR_RAISE_AT=6 IPR_FIX_ARGS=1
fi

echo "== processes left"; ps -eo pid,ppid,sid,etimes,args | grep -E "python|torchrun" | grep -v grep | cut -c1-200 | tee "$out/ps.txt"
for p in $(cat "$out"/*.log | grep -o 'pid=[0-9]*' | sort -u | cut -d= -f2); do kill -KILL "$p" 2>/dev/null; done  # only ours
for f in "$out"/*.log; do  # what comes back is at most 16 MiB a file
  if [ "$(stat -c %s "$f")" -gt 15000000 ]; then { head -c 6000000 "$f"; echo "... cut ..."; tail -c 6000000 "$f"; } > "$f.cut"; mv "$f.cut" "$f"; fi
done
grep -E "ipr-probe|ipr-run|iteration +[0-9]+/|loading checkpoint|successfully loaded|saving checkpoint|successfully saved|fn_ex|term_ex|restart_ex|exit_ex|init_ex|health_ex|NestedRestarter|InProcess|Worker group|closing signal|after training is done|is not initialized|Error|error" \
  "$out"/*.log | cut -c1-420 | head -n 1500 > "$out/summary.txt"
ls -la "$out"
