#!/usr/bin/env bash
# Label the stand-in world's structures with SevenNet-0 and pretrain the stand-in prior on them, in one call on a
# lent GPU machine (issue 25, items 1-2): run from the repository root there, with .gpu-standin/ (made by
# scripts/device_bundle_standin.sh) carried along; benchmarks/prior-standin/structures.db travels as a tracked file.
#   1. installs the bundle's wheels into $SITE (default /tmp/site)
#   2. scripts/standin_label.py: WORKERS processes share the GPU; no chunk starts after LABEL_MINUTES; chunks on
#      disk are kept (WORK is git-ignored, so a second call on the still-warm machine labels further)
#   3. scripts/pretrain_surrogate.py --frames: the small eSCN-MD (surrogate/model.py small_model_config) trained
#      for TRAIN_MINUTES at BATCH frames a step; meanwhile scripts/standin_frames.py packs the frames
#   4. $OUT/standin.tar: checkpoint oc20-standin.pt, its model card .json, recipe.json, label.log, pretrain.log,
#      stdout of both; $OUT/frames-<split>.npz.NNN: the frames (scripts/standin_frames.py unpack rebuilds them)
# Environment: DEVICE (cuda), WORK (runs/standin), BUNDLE (.gpu-standin), SITE (/tmp/site), LABEL_ARGS (extra
# arguments of standin_label.py, e.g. "--limit 3"), FRAMES_MB (58: the frames' share of the 64 MiB that comes back;
# 0: the frames stay there), MODELS (models trained side by side, "name:pretrain_surrogate.py arguments;...";
# default "oc20-standin:", the packaged prior's recipe),
# TOTAL_S (570: training is cut so that the whole script ends by then, inside the device tool's 600 s, with
# what it made in $OUT).
# Usage: scripts/device_standin.sh LABEL_MINUTES TRAIN_MINUTES [WORKERS=12] [BATCH=32]
set -uo pipefail
label_min=$1 train_min=$2 workers=${3:-12} batch=${4:-32}
device=${DEVICE:-cuda} work=${WORK:-runs/standin} bundle=${BUNDLE:-.gpu-standin} site=${SITE:-/tmp/site}
out=${OUT:-/tmp/standin-out}
mkdir -p "$out" "$work"
export PYTHONUNBUFFERED=1
start=$SECONDS
python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "$bundle"/whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "$bundle"/whl-cp312/*.whl 2>/dev/null \
  || echo "compiled wheels not installed: sevenn builds graphs with ASE's neighbour list"
export PYTHONPATH=$site:$PWD/$bundle/py:$PWD
echo "installed in $((SECONDS - start)) s"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
# Labelling: the budget stops new chunks; chunks under way finish (a few seconds each), the limit is a backstop.
label_limit=$(python3 -c "print(int(float('$label_min') * 60 + 180))")
OMP_NUM_THREADS=1 timeout "$label_limit" python3 scripts/standin_label.py --workdir "$work" --workers "$workers" \
  --device "$device" --minutes "$label_min" ${LABEL_ARGS:-} > "$work/label.stdout" 2>&1
echo "labelling: exit $? after $((SECONDS - start)) s"
grep -v Warning "$work/label.stdout" | tail -n 3
if [ "${FRAMES_MB:-58}" -gt 0 ]; then
  python3 scripts/standin_frames.py pack "$work" "$out" --budget-mb "${FRAMES_MB:-58}" > "$work/pack.stdout" 2>&1 &
  pack=$!
else
  pack=""
fi
train_limit=$(python3 -c "print(max(60, min(int(float('$train_min') * 60 + 240), ${TOTAL_S:-570} - $SECONDS + $start - 25)))")
echo "training within ${train_limit} s"
train_min=$(python3 -c "print(round(max(0.25, min(float('$train_min'), ($train_limit - 150) / 60)), 2))")
# MODELS: "name:extra pretrain_surrogate.py arguments" entries separated by ";", trained side by side on the one GPU
# (default: the packaged prior's recipe alone); each gives $work/<name>.pt and its card.
IFS=';' read -ra models <<< "${MODELS:-oc20-standin:}"
pids=()
for entry in "${models[@]}"; do
  name=${entry%%:*} args=${entry#*:}
  rm -rf "$work/train-$name"  # a fresh training on every call: a rerun on a warm machine adds frames, then trains anew
  OMP_NUM_THREADS=4 timeout "$train_limit" python3 scripts/pretrain_surrogate.py --frames "$work" --minutes "$train_min" \
    --batch "$batch" --threads 4 --workdir "$work/train-$name" --output "$work/$name.pt" $args > "$work/train-$name.stdout" 2>&1 &
  pids+=($!)
done
for i in "${!pids[@]}"; do
  wait "${pids[$i]}"
  echo "training ${models[$i]%%:*}: exit $? after $((SECONDS - start)) s"
  grep -v Warning "$work/train-${models[$i]%%:*}.stdout" | tail -n 4
done
[ -n "$pack" ] && wait $pack && cat "$work/pack.stdout"
files=$(cd "$work" && ls *.pt *.json label.log label.stdout train-*.stdout pack.stdout train-*/pretrain.log 2>/dev/null)
tar -C "$work" -cf "$out/standin.tar" $files
echo "done after $((SECONDS - start)) s"
ls -la "$out"
