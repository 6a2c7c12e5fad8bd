# Sourced by the GPU scripts that run on a device machine without network (gpu_job_recovery.sh,
# gpu_restart_modes.sh), from the project root: installs the wheels carried in .whl/ (megatron-core,
# tenacity, plus the globs in $EXTRA_WHEELS) into /tmp/chaos-site, unpacks the Megatron-LM tarball of
# .whl/megatron-lm/ into /tmp/chaos-megatron-lm, exports PYTHONPATH and MEGATRON_LM, and records the GPUs in
# $out/devices.txt. docs/gpu.md says how to fill .whl/.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
root=$(pwd)
site=/tmp/chaos-site
if [ ! -d "$site/megatron" ] || [ -n "${EXTRA_WHEELS:-}" ]; then
  # shellcheck disable=SC2086  # the globs expand here
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    .whl/*.whl ${EXTRA_WHEELS:-} || exit 1
fi
export PYTHONPATH="$site:$root"
mlm=/tmp/chaos-megatron-lm
[ -d "$mlm/Megatron-LM" ] || { mkdir -p "$mlm" && tar -xzf .whl/megatron-lm/megatron-lm-*.tar.gz -C "$mlm"; } || exit 1
export MEGATRON_LM="$mlm/Megatron-LM"
nvidia-smi -L | tee "$out/devices.txt"
