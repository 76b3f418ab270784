#!/usr/bin/env bash
# The GPU figures of docs/PERFORMANCE.md in one command per part, for a machine with CUDA:
#   bash benchmarks/gpu_suite.sh unet   # UNet forward, SD 1.x and 2.x, latent 32 and 64, batch 2, fp16 and bf16
#   bash benchmarks/gpu_suite.sh e2e    # txt2img 512x512, 20 DDIM steps, fp16, batch 1: it/s and peak CUDA memory
#   bash benchmarks/gpu_suite.sh vae    # VAE decode at 512 and 1024 px, plain and tiled, fp16
#   bash benchmarks/gpu_suite.sh compile  # SD 1.x UNet at latent 64, fp16: ours compiled vs diffusers
#                                         # eager, then both compiled (several minutes of compiling)
#   bash benchmarks/gpu_suite.sh all    # unet, e2e and vae
# Each part prints its table and copies it to $RESULTS (default benchmarks/results/, or $OUT/ where
# that is set). Python packages missing on the machine (diffusers, omegaconf) are installed from
# wheels in .whl/ when that folder exists (see benchmarks/README.md, "On a GPU machine").
set -euo pipefail
cd "$(dirname "$0")/.."
part=${1:-all}
case "$part" in unet|e2e|vae|compile|all) ;;
    *) echo "usage: bash benchmarks/gpu_suite.sh [unet|e2e|vae|compile|all]" >&2; exit 2;; esac
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-build-isolation --target /tmp/ldm-bench-site .whl/*
    export PYTHONPATH=/tmp/ldm-bench-site:${PYTHONPATH:-}
fi
export PYTHONUNBUFFERED=1
results=${RESULTS:-${OUT:-benchmarks/results}}
mkdir -p "$results"
python3 - <<'PY' | tee "$results/gpu.txt"
import torch
print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))
PY
if [ "$part" = unet ] || [ "$part" = all ]; then
    for dtype in fp16 bf16; do
        python3 benchmarks/unet_latency.py --device cuda --dtype "$dtype" --models sd1 sd2 --latent 32 64 \
            --batch 2 --repeats 20 2>&1 | grep -v '^\[transformers\]' | tee "$results/unet_$dtype.txt"
    done
fi
if [ "$part" = e2e ] || [ "$part" = all ]; then
    python3 benchmarks/txt2img_end_to_end.py --device cuda --dtype fp16 --size 512 --steps 20 --repeats 5 \
        2>&1 | grep -v '^\[transformers\]' | tee "$results/txt2img_fp16.txt"
fi
if [ "$part" = vae ] || [ "$part" = all ]; then
    for size in 512 1024; do
        python3 benchmarks/vae_decode.py --device cuda --dtype fp16 --size "$size" --repeats 5 \
            2>&1 | grep -v '^\[transformers\]' | tee "$results/vae_$size.txt"
    done
fi
if [ "$part" = compile ]; then
    for compiled in ours both; do
        python3 benchmarks/unet_latency.py --device cuda --dtype fp16 --models sd1 --latent 64 --batch 2 \
            --repeats 20 --compile "$compiled" 2>&1 | grep -v '^\[transformers\]' | tee "$results/unet_compile_$compiled.txt"
    done
fi
