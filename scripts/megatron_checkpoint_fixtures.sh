#!/usr/bin/env bash
# Records the small real Megatron-LM checkpoints under tests/fixtures/megatron_lm/checkpoints/ (run on a
# CUDA machine: Megatron-LM's training loop needs one). One tiny GPT (1 layer, hidden 32, vocab 128) trained
# 4 iterations, saved at 2 and 4, in every --ckpt-format the state reader supports, each run twice (a/ and b/)
# so a test can see that two uninterrupted runs of a deterministic job save the same state.
#   MEGATRON_LM=/path/to/Megatron-LM OUT=/tmp/x scripts/megatron_checkpoint_fixtures.sh
# Writes $OUT/fixtures.tar.gz (checkpoints + logs). Extra probes (PROBES=1): is the job reproducible without
# --deterministic-mode, and with a mixture of experts (atomics in the token routing)?
set -uo pipefail
: "${MEGATRON_LM:?set MEGATRON_LM to a Megatron-LM checkout}"
out=${OUT:-megatron-fixtures}; mkdir -p "$out"
work=$(mktemp -d); cd "$MEGATRON_LM"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
export PYTHONPATH="$MEGATRON_LM${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "from megatron.core.datasets.utils import compile_helpers; compile_helpers()" > "$work/helpers.log" 2>&1

COMMON=(--num-layers 1 --hidden-size 32 --num-attention-heads 4 --seq-length 32 --max-position-embeddings 32
  --micro-batch-size 2 --global-batch-size 4 --log-interval 1 --mock-data --tokenizer-type NullTokenizer
  --vocab-size 128 --lr 0.00015 --min-lr 1.0e-5 --lr-decay-style cosine --lr-warmup-fraction .01
  --lr-decay-iters 320000 --weight-decay 1e-2 --clip-grad 1.0 --eval-interval 1000 --eval-iters 10
  --transformer-impl local --no-persist-layer-norm --no-masked-softmax-fusion --bf16
  --no-gradient-accumulation-fusion --attention-softmax-in-fp32 --distributed-backend nccl
  --tensor-model-parallel-size 1)
declare -A FORMAT=(
  [fsdp_dtensor]="--use-megatron-fsdp --data-parallel-sharding-strategy optim_grads_params --use-distributed-optimizer --megatron-fsdp-main-params-dtype fp32 --megatron-fsdp-main-grads-dtype fp32 --megatron-fsdp-grad-comm-dtype fp32 --use-checkpoint-opt_param-scheduler --calculate-per-token-loss --ckpt-format fsdp_dtensor"
  [torch_dist]="--ckpt-format torch_dist"
  [torch_dist_distopt]="--use-distributed-optimizer --ckpt-format torch_dist"
  [torch]="--ckpt-format torch"
  [torch_dcp]="--use-torch-fsdp2 --ckpt-format torch_dcp"
)
port=29600
launch() {  # name log args...
  local name=$1 log=$2; shift 2; port=$((port + 1))
  RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 LOCAL_WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
    timeout 400 python3 pretrain_gpt.py "$@" > "$log" 2>&1 &
}
for fmt in "${!FORMAT[@]}"; do
  for run in a b; do
    dir="$work/checkpoints/$fmt/$run"; mkdir -p "$dir"
    # shellcheck disable=SC2086
    launch "$fmt-$run" "$dir/train.log" "${COMMON[@]}" --deterministic-mode ${FORMAT[$fmt]} \
      --train-iters 4 --save-interval 2 --save "$dir" --load "$dir"
  done
done
if [ "${PROBES:-0}" = 1 ]; then
  BIG=(--num-layers 4 --hidden-size 256 --num-attention-heads 8 --seq-length 256 --max-position-embeddings 256
    --micro-batch-size 4 --global-batch-size 16 --log-interval 1 --mock-data --tokenizer-type NullTokenizer
    --vocab-size 8192 --lr 0.00015 --lr-warmup-fraction .01 --lr-decay-iters 320000 --eval-interval 1000
    --eval-iters 10 --transformer-impl local --no-persist-layer-norm --no-masked-softmax-fusion --bf16
    --no-gradient-accumulation-fusion --distributed-backend nccl --train-iters 20)
  MOE=(--num-experts 8 --moe-router-topk 4 --moe-token-dispatcher-type alltoall)
  mkdir -p "$work/probes"
  for run in a b; do
    NVTE_ALLOW_NONDETERMINISTIC_ALGO=1 launch "dense-nodet-$run" "$work/probes/dense-nodet-$run.log" "${BIG[@]}"
    NVTE_ALLOW_NONDETERMINISTIC_ALGO=1 launch "moe-nodet-$run" "$work/probes/moe-nodet-$run.log" "${BIG[@]}" "${MOE[@]}"
    NVTE_ALLOW_NONDETERMINISTIC_ALGO=0 CUBLAS_WORKSPACE_CONFIG=:4096:8 launch "moe-det-$run" "$work/probes/moe-det-$run.log" \
      "${BIG[@]}" "${MOE[@]}" --deterministic-mode
  done
fi
wait
{
  for fmt in "${!FORMAT[@]}"; do
    for run in a b; do
      dir="$work/checkpoints/$fmt/$run"
      echo "== $fmt/$run: tracker $(cat "$dir/latest_checkpointed_iteration.txt" 2>/dev/null || echo none)"
      (cd "$dir" && find . -type f -printf '%p %s\n' | sort)
      grep -E "lm loss|Error|error:" "$dir/train.log" | tail -6
    done
  done
  for probe in dense-nodet moe-nodet moe-det; do
    [ -f "$work/probes/$probe-a.log" ] || continue
    echo "== probe $probe: differing iteration lines"
    diff <(grep -o "iteration .*lm loss: [^|]*| .*grad norm: [^|]*" "$work/probes/$probe-a.log" | sed 's/elapsed time[^|]*|//') \
         <(grep -o "iteration .*lm loss: [^|]*| .*grad norm: [^|]*" "$work/probes/$probe-b.log" | sed 's/elapsed time[^|]*|//') | head -20
    grep -E "lm loss" "$work/probes/$probe-a.log" | tail -2; grep -iE "error" "$work/probes/$probe-a.log" | tail -3
  done
} > "$out/summary.txt" 2>&1
tar -C "$work" -czf "$out/fixtures.tar.gz" checkpoints probes helpers.log 2>/dev/null
cat "$out/summary.txt"
