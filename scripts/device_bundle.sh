#!/usr/bin/env bash
# Pack what scripts/device_pretrain.sh needs on a lent GPU machine into .gpu/ (git-ignored through
# .git/info/exclude; carried with the device tool's `carry: [".gpu"]`). That machine has python3 3.12 with torch,
# numpy, scipy, e3nn, huggingface_hub, but no fairchem, ASE or hydra, and reaches no package index.
#   .gpu/whl/      wheels of fairchem-core and the imports it needs that the image lacks (pure Python)
#   .gpu/py/       antlr4 (omegaconf's parser; published as an sdist only, copied from this install) and an empty
#                  `wandb` stub: fairchem.core.common.logger imports wandb at module level, pretraining never logs
#                  to it, and the real wheel (20 MB) pulls in pydantic and opentelemetry
#   .gpu/frames.tar.xz  the labelled frames and recipe.json of WORKDIR (default runs/pretrain-strain12), so the
#                  GPU's minutes go to training, not to EMT labelling
# Usage: scripts/device_bundle.sh [WORKDIR]
set -euo pipefail
workdir=${1:-runs/pretrain-strain12}
cd "$(dirname "$0")/.."
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/whl .gpu/py/wandb
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .gpu/whl \
  fairchem-core==2.24.0 ase==3.29.0 hydra-core==1.3.8 omegaconf==2.3.1 monty backoff submitit torchtnt \
  httpx2 httpcore2 truststore
cp -r "$(python3 -c 'import antlr4, os; print(os.path.dirname(antlr4.__file__))')" .gpu/py/
find .gpu/py -name __pycache__ -prune -exec rm -rf {} +
echo '"""Import stub for fairchem.core.common.logger (see scripts/device_bundle.sh)."""' > .gpu/py/wandb/__init__.py
tar -C "$workdir" -cJf .gpu/frames.tar.xz frames recipe.json
du -sh .gpu
