#!/usr/bin/env bash
# Pack what scripts/device_standin.sh needs on a lent GPU machine into .gpu-standin/ (git-ignored through the
# repository's info/exclude; carried with the device tool's `carry: [".gpu-standin"]`). That machine has
# python3 3.12 with torch, numpy, scipy, e3nn, torch-geometric, tqdm, pandas, requests, scikit-learn, xxhash and
# pyre-extensions (the image's package list: /work/.library/device/KINDS.md), but no ASE, fairchem, sevenn,
# braceexpand or matscipy, and reaches no package index. The structures travel as a tracked file (benchmarks/prior-standin/structures.db).
#   .gpu-standin/whl/       pure-Python wheels: fairchem-core and the imports it needs that the image lacks (as
#                           scripts/device_bundle.sh), ASE, and braceexpand (imported by sevenn)
#   .gpu-standin/whl-cp312/ compiled cp312 manylinux x86_64 wheels that help but are optional: matscipy (sevenn's
#                           fast neighbour list; without it sevenn uses ASE's). Untestable here (python 3.11), so
#                           device_standin.sh carries on without them if they do not install or load
#   .gpu-standin/py/        antlr4 (omegaconf's parser, an sdist only, copied from this install), the `wandb` stub
#                           of device_bundle.sh, and sevenn copied from this install without the three checkpoints
#                           it is not asked for (7net-0 = SevenNet_0__11Jul2024 stays) nor its LAMMPS/D3 builds:
#                           the wheel is 43 MB, the copy about 11 MB. Where requests, pandas, scikit-learn or
#                           xxhash (imported by sevenn, never called in labelling) are missing,
#                           scripts/standin_label.py puts empty modules in their place
# Usage: scripts/device_bundle_standin.sh
set -euo pipefail
cd "$(dirname "$0")/.."
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qx '/.gpu-standin/' "$exclude" 2>/dev/null || echo '/.gpu-standin/' >> "$exclude"
rm -rf .gpu-standin && mkdir -p .gpu-standin/whl .gpu-standin/whl-cp312 .gpu-standin/py/wandb
download() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$@"
}
download .gpu-standin/whl \
  fairchem-core==2.24.0 ase==3.29.0 hydra-core==1.3.8 omegaconf==2.3.1 monty backoff submitit torchtnt \
  httpx2 httpcore2 truststore braceexpand==0.1.7
download .gpu-standin/whl-cp312 matscipy==1.3.1
site=$(python3 -c 'import sevenn, os; print(os.path.dirname(os.path.dirname(sevenn.__file__)))')
version=$(python3 -c 'import importlib.metadata as m; print(m.version("sevenn"))')
cp -r "$site/sevenn" "$site/sevenn-$version.dist-info" .gpu-standin/py/
( cd .gpu-standin/py/sevenn && rm -rf pretrained_potentials/SevenNet_0__22May2024 pretrained_potentials/SevenNet_MF_0 \
    pretrained_potentials/SevenNet_l3i5 pair_e3gnn pair_d3.so pair_d3_batch.so )
test -f .gpu-standin/py/sevenn/pretrained_potentials/SevenNet_0__11Jul2024/checkpoint_sevennet_0.pth
cp -r "$(python3 -c 'import antlr4, os; print(os.path.dirname(antlr4.__file__))')" .gpu-standin/py/
find .gpu-standin/py -name __pycache__ -prune -exec rm -rf {} +
echo '"""Import stub for fairchem.core.common.logger (see scripts/device_bundle.sh)."""' > .gpu-standin/py/wandb/__init__.py
test -f benchmarks/prior-standin/structures.db
du -sh .gpu-standin .gpu-standin/*
