#!/usr/bin/env bash
# Pretrain the shipped surrogate on a lent GPU machine: run from the repository root there, with .gpu/ (made by
# scripts/device_bundle.sh) carried along. One training per BATCH size, all at once on the one GPU (sharing
# it: benchmarks/history/2026-12-01-prior-gpu.md gives the epoch times), each scripts/pretrain_surrogate.py's own
# training on the frames of .gpu/frames.tar.xz, the CPU recipe's frames. Each run's checkpoint, model card,
# training state (to resume from) and log come back as $OUT/b<BATCH>.tar.
# Usage: scripts/device_pretrain.sh MINUTES TIMEOUT_S BATCH [BATCH ...]
set -uo pipefail
minutes=$1 limit=$2
shift 2
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/.gpu/py:$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for batch in "$@"; do
  work=runs/pretrain-gpu-b$batch
  mkdir -p $work && tar -C $work -xJf .gpu/frames.tar.xz || exit 1
  timeout "$limit" python3 scripts/pretrain_surrogate.py --strain 0.12 --minutes "$minutes" --batch "$batch" \
    --threads 4 --workdir $work --output $work/finetuna-small.pt > $work/stdout.log 2>&1 &
done
wait
for batch in "$@"; do
  work=runs/pretrain-gpu-b$batch
  tail -4 $work/stdout.log
  tar -C $work -cf "${OUT:-/tmp}/b$batch.tar" $(cd $work && ls finetuna-small.pt finetuna-small.json train_state.pt \
    pretrain.log stdout.log 2>/dev/null)
done
