#!/usr/bin/env bash
# The on-line benchmark on a GPU machine (run through the device tool, or by hand on a GPU
# node): the paper's largest model (H=64, L=3) and its smallest, trained on the GPU while
# clients run on the CPU cores. Wheels missing from the machine travel in .whl/ (see notes).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src
fi
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/breed-gpu}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, zmq; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'zmq', zmq.__version__)"
nproc
for spec in ${BREED_GPU_MODELS:-64x3}; do  # HxL, space-separated: "64x3 16x1"
  set -- "${spec%x*}" "${spec#*x}"
  timeout 540 python3 benchmarks/online.py --hidden "$1" --layers "$2" --device cuda \
    --clients 8 --threads 4 --simulations 1000 --ingest thread,process --batch auto --repeats 3 \
    --json "$OUT/gpu_H$1_L$2.json" \
    2>&1 | tee "$OUT/gpu_H$1_L$2.txt"
done
