#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one run (used through the `device` tool; nothing else depends on a GPU).
# Run from the repository root on a machine with torch + CUDA; the package need not be installed (PYTHONPATH=src).
#   1. parity through the CLI on CUDA: `prvr eval --device auto` picks the GPU, and the authors' checkpoints of
#      HLFormer and Holmes must give the authors' validation scores within 1e-5; each model trains two epochs on
#      CUDA through `prvr train`, and its `prvr eval --save-scores` on CUDA is compared with the same on the CPU;
#   2. the fp32 and bf16 (--amp) training step and full evaluation of the three models (bench/results/*_cuda.json);
#   3. DDP on nccl (one rank per GPU: a machine with one GPU runs world size 1).
# Usage: bash bench/gpu_checks.sh [OUTDIR]   (OUTDIR gets the log and a tarball of the results)
set -u
out=${1:-/tmp/gpu-checks}
mkdir -p "$out"
export PYTHONPATH="$PWD/src:$PWD" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
py=${PYTHON:-python3}
step() {  # one check, bounded in time, its tail printed and its status recorded
  local limit=$1; shift
  echo "=== $(date -u +%T) $*"
  timeout "$limit" "$@" > "$out/step.log" 2>&1
  local rc=$?
  tail -n 30 "$out/step.log"
  echo "=== rc $rc"
  cat "$out/step.log" >> "$out/all.log"
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
step 300 $py -m pytest -q -p no:cacheprovider -n 8 \
  "tests/models/test_hlformer_parity.py::test_convert_their_checkpoint_then_eval_gives_their_scores" \
  tests/models/test_holmes_parity.py::test_authors_checkpoint_converts_and_evaluates \
  tests/train/test_train.py::test_convert_checkpoint_then_eval
step 60 $py -m prvr synth "$out/tiny" --preset tiny
for m in dreamprvr hlformer holmes; do
  step 120 $py -m prvr train --model $m --preset tiny --data "$out/tiny" --out "$out/run-$m" --epochs 2 --device cuda --quiet
  for d in cuda cpu; do
    step 60 $py -m prvr eval --checkpoint "$out/run-$m/best.safetensors" --data "$out/tiny" --split test --device $d \
      --save-scores "$out/scores-$m-$d.npy" --quiet
  done
  $py -c "import numpy as np, sys; a, b = (np.load(f'$out/scores-$m-{d}.npy') for d in ('cuda', 'cpu')); \
print('$m: CUDA vs CPU scores, max |diff|', float(np.abs(a - b).max()), 'shape', a.shape)"
done
for m in dreamprvr hlformer holmes; do
  for amp in "" --amp; do
    step 120 $py bench/train_step.py --model $m --preset charades --batch-videos 128 --steps 5 --device cuda $amp --json
    step 120 $py bench/evaluate.py --model $m --preset charades --videos 1334 --queries 3720 --device cuda $amp --json
  done
done
step 180 $py bench/ddp_train.py --preset charades --nproc 1 --steps 5 --device cuda --json
tar czf "$out/results.tgz" bench/results/*cuda*.json 2>/dev/null
echo "=== done $(date -u +%T)"
