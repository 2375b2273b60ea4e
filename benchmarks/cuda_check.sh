#!/usr/bin/env bash
# poolkit's GPU checks in one call of a lent GPU machine: the Triton kernels' tests on the device, then
# `poolkit bench` on CUDA (ops: Triton kernels vs the native pair; training steps: both paths), then the
# issue-11 targets of both. Runs from the repository root without installing poolkit (PYTHONPATH=src),
# under the machine's own torch and triton. Every result lands in OUT (default ./cuda-check).
#
#   bash benchmarks/cuda_check.sh [OUT] [full|quick]
#
# quick: the tests and the float32 op table only (about 3 minutes on an H200, Triton's first compilations
# included); full (the default): bfloat16 too, and the training steps (about 6 minutes).
# Each step has its own time limit, so one slow step cannot starve the others; the log says which ran.
set -uo pipefail
out=${1:-cuda-check}
level=${2:-full}
dtypes=float32,bfloat16
[ "$level" = quick ] && dtypes=float32
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
bench=("$py" -m poolkit bench --device cuda --no-progress)
step() { echo "== $(date -u +%H:%M:%S) $*"; }

step environment
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv
"$py" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', \
triton.__version__, torch.cuda.get_device_name())"

step "tests: the Triton kernels and every deterministic pool on the device; CUDA autocast of every pool"
timeout 120 "$py" -m pytest -q -p no:cacheprovider --tb=short tests/test_triton_kernels.py \
  tests/test_pool_suite.py -k "cuda or triton" \
  >"$out/tests.txt" 2>&1
grep -E "^E  |^(FAILED|ERROR)|passed|failed" "$out/tests.txt" | tail -40

step "ops: Triton kernels (rows 'pool') vs the native pair (rows 'pool [off]'), native max_pool2d the reference"
POOLKIT_FUSED=on timeout 150 "${bench[@]}" --level op --pools targets --case vgg16-1,vgg16-2,vgg16-5,resnet-stem \
  --dtype $dtypes --mode fwd+bwd,memory --kernels on,off --min-run-time 0.1 \
  --json "$out/ops-cuda.json" --markdown "$out/ops-cuda.md" | tail -60

[ "$level" = quick ] && { step done; exit 0; }

step "ops at batch 1024: does the ratio fall with size (launch overhead) or stay (the kernels themselves)?"
POOLKIT_FUSED=on timeout 90 "${bench[@]}" --level op --pools mixed,tmaxavg,gem,attention --case vgg16-2,resnet-stem \
  --batch 1024 --dtype float32 --mode fwd,fwd+bwd --kernels on,off --min-run-time 0.1 \
  --json "$out/ops-cuda-batch1024.json" | tail -30
for path in off on; do
  step "models: one AMP training step per pool, POOLKIT_FUSED=$path"
  POOLKIT_FUSED=$path timeout 75 "${bench[@]}" --level model --pools study --model vgg16,resnet18 --amp \
    --rounds 6 --json "$out/models-cuda-$path.json" | tail -30
done

step "targets"
for path in off on; do
  [ -s "$out/ops-cuda.json" ] && [ -s "$out/models-cuda-$path.json" ] || continue
  "${bench[@]}" --targets-from "$out/ops-cuda.json" "$out/models-cuda-$path.json" \
    --markdown "$out/targets-cuda-$path.md" | tail -5
done
step done
