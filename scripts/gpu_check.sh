#!/usr/bin/env bash
# The GPU checks, in one go, for a lent GPU machine that has torch, cupy and NCCL but no
# package index: install the project without dependencies, run every gpu-marked test, then the
# GPU rows of the weight-sync benchmark. Output goes to $OUT (or ./gpu-out).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
{
  nvidia-smi -L
  $PY -c "import torch, cupy; print('torch', torch.__version__, torch.cuda.get_device_name()); print('cupy', cupy.__version__, 'nccl', cupy.cuda.nccl.available)"
  $PY -m pip install -q --no-deps --no-build-isolation --no-index \
      --config-settings editable_mode=compat -e . \
      $(for p in plugins/*/; do printf -- '-e %s ' "$p"; done) 2>&1 | grep -v -i warning | tail -3
  $PY -m forge_core.cli plugins
} 2>&1 | tee "$OUT/setup.log"
$PY -m pytest -m gpu -q -rA -o timeout=240 tests plugins 2>&1 | tee "$OUT/gpu_tests.log"
$PY benchmarks/bench_weights.py --only cuda_ipc,nccl,shm 2>&1 | tee "$OUT/bench_weights_gpu.log"
