#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one run (used through the `device` tool; nothing else depends on a GPU).
# Run from the repository root on a machine with torch + CUDA; the package need not be installed (PYTHONPATH=src).
#   1. parity through the CLI on CUDA: `prvr eval --device auto` picks the GPU, and the authors' checkpoints of
#      HLFormer and Holmes must give the authors' validation scores within 1e-5; each model trains two epochs on
#      CUDA through `prvr train`, and its `prvr eval --save-scores` on CUDA is compared with the same on the CPU;
#   2. the fp32 and bf16 (--amp) training step and full evaluation of the three models (bench/results/*_cuda.json);
#   3. DDP on nccl (one rank per GPU: a machine with one GPU runs world size 1);
#   4. `prvr index build` and `prvr search` on CUDA against the same on the CPU.
# Usage: bash bench/gpu_checks.sh [OUTDIR [PART...]]   (OUTDIR gets the log and a tarball of the results)
#   PART: parity, train (2 epochs per model; search needs it), search, bench, ddp; all of them when none is given.
set -u
out=${1:-/tmp/gpu-checks}
shift || true
parts=" ${*:-parity train search bench ddp} "
want() { [[ $parts == *" $1 "* ]]; }
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
want parity && step 300 $py -m pytest -q -p no:cacheprovider -n 8 \
  "tests/models/test_hlformer_parity.py::test_convert_their_checkpoint_then_eval_gives_their_scores" \
  tests/models/test_holmes_parity.py::test_authors_checkpoint_converts_and_evaluates \
  tests/train/test_train.py::test_convert_checkpoint_then_eval
want train && step 60 $py -m prvr synth "$out/tiny" --preset tiny
want train && for m in dreamprvr hlformer holmes; do
  step 120 $py -m prvr train --model $m --preset tiny --data "$out/tiny" --out "$out/run-$m" --epochs 2 --device cuda --quiet
  for d in cuda cpu; do
    step 60 $py -m prvr eval --checkpoint "$out/run-$m/best.safetensors" --data "$out/tiny" --split test --device $d \
      --save-scores "$out/scores-$m-$d.npy" --quiet
  done
  $py -c "import numpy as np, sys; a, b = (np.load(f'$out/scores-$m-{d}.npy') for d in ('cuda', 'cpu')); \
print('$m: CUDA vs CPU scores, max |diff|', float(np.abs(a - b).max()), 'shape', a.shape)" | tee -a "$out/summary.txt"
done
# search on CUDA: each model's index built and searched on the GPU against the same on the CPU (20 captions by id,
# in one process per model: a CLI start per query costs seconds of CUDA start-up)
want search && for m in dreamprvr hlformer holmes; do
  for d in cuda cpu; do
    step 60 $py -m prvr index build --checkpoint "$out/run-$m/best.safetensors" --data "$out/tiny" --split test \
      --out "$out/idx-$m-$d" --device $d --quiet
  done
  $py - "$out" $m <<'PY' | tee -a "$out/summary.txt"
import sys
import numpy as np
from prvr.index.search import Retriever
out, m = sys.argv[1:]
qids = [ln.split(" ", 1)[0] for ln in open(f"{out}/tiny/charades/TextData/charadestest.caption.txt") if ln.strip()][:20]
gpu, cpu = Retriever(f"{out}/idx-{m}-cuda", "cuda"), Retriever(f"{out}/idx-{m}-cpu", "cpu")
tokens = max(float(np.abs(np.asarray(a.sets[n].tokens, np.float32) - np.asarray(b.sets[n].tokens, np.float32)).max())
             for a, b in zip(gpu.shards, cpu.shards, strict=True) for n in a.sets)
same, diff = 0, 0.0
for q in qids:
    a, b = gpu.search_query_id(f"{out}/tiny", q, 10), cpu.search_query_id(f"{out}/tiny", q, 10)
    same += [h.video_id for h in a] == [h.video_id for h in b]
    diff = max(diff, float(np.abs(np.array([h.score for h in a]) - [h.score for h in b]).max()))
print(f"{m}: index built on CUDA vs CPU: max |token diff| {tokens:.2e} (float16 tokens); searched on each: same "
      f"top-10 order on {same}/{len(qids)} captions, max |score diff| {diff:.2e}")
PY
done
want bench && for m in dreamprvr hlformer holmes; do
  for amp in "" --amp; do
    step 120 $py bench/train_step.py --model $m --preset charades --batch-videos 128 --steps 5 --device cuda $amp --json
    step 120 $py bench/evaluate.py --model $m --preset charades --videos 1334 --queries 3720 --device cuda $amp --json
  done
done
want ddp && step 180 $py bench/ddp_train.py --preset charades --nproc 1 --steps 5 --device cuda --json
tar czf "$out/results.tgz" bench/results/*cuda*.json 2>/dev/null
echo "=== done $(date -u +%T)"
