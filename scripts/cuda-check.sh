#!/usr/bin/env bash
# The GPU checks, from a bundle made by scripts/cuda-bundle.sh, on a machine
# with an NVIDIA GPU (no Rust toolchain needed), run from the repository root:
#
#   scripts/cuda-check.sh BUNDLE OUT [DATA]
#
# Runs go to a scratch folder; OUT receives a flat set of results (the GPU
# performance page, bench.json, each Part A run's metrics.csv and the UNet's
# last samples strip); the exit status is non-zero when any step failed.
#
# 1. tests/cuda.rs (GPU against CPU: logits, losses, gradients, Adam steps,
#    DeepLab forwards, segmentation metrics, whole training runs);
# 2. the golden tests of the models on the GPU (PIXCLASS_TEST_DEVICE=cuda):
#    the three colourization nets, DeepLabV3-ResNet101 and MobileNetV2
#    against their PyTorch / TFLite fixtures;
# 3. `xtask bench --device cuda` against PyTorch on the same GPU, when
#    python3 has torch (OUT/PERFORMANCE-CUDA.md, OUT/bench.json);
# 4. Part A on the GPU when DATA holds CIFAR-10's horses: the three nets,
#    25 epochs each, with the study's settings (OUT/partA-MODEL-metrics.csv;
#    TRAIN=0 skips it).
set -uo pipefail
bundle="$(cd "$1" && pwd)"; out="$2"; data="${3:-}"
work="$(mktemp -d)"
mkdir -p "$out"
# CUDA's libraries from the Python wheels (PyTorch's), when present.
if libs=$(python3 -c 'import nvidia, os, glob; r = list(nvidia.__path__)[0]; print(":".join(sorted(glob.glob(os.path.join(r, "*", "lib")))))' 2>/dev/null); then
  export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
built_in="$(cat "$bundle/built_in")"
if [ "$built_in" != "$(pwd)" ] && [ ! -e "$built_in" ]; then
  mkdir -p "$(dirname "$built_in")" && ln -s "$(pwd)" "$built_in"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
status=0
step() { echo "== $*"; local t=$SECONDS; "$@" || { echo "FAILED: $*"; status=1; }; echo "   ($((SECONDS - t)) s)"; }

step "$bundle/test_cuda" --test-threads 1
for t in colour_nets deeplab mobilenet; do
  PIXCLASS_TEST_DEVICE=cuda step "$bundle/test_$t" --test-threads 1
done
if python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
  step "$bundle/xtask" bench --device cuda --prebuilt "$bundle" --python python3 \
    --rounds "${BENCH_ROUNDS:-3}" ${data:+--data-dir "$data"} --out "$work/bench"
  cp "$work/bench/PERFORMANCE-CUDA.md" "$work/bench/bench.json" "$out/" 2>/dev/null
fi
if [ "${TRAIN:-1}" = 1 ] && [ -n "$data" ] && [ -f "$data/cifar10/horse_train.bin" ]; then
  for m in pool-upsample conv-transpose unet; do
    step timeout "${TRAIN_TIMEOUT:-3600}" "$bundle/pixclass" -q colourize train --model "$m" --device cuda \
      --data-dir "$data" --out "$work/colourize/$m"
    cp "$work/colourize/$m/metrics.csv" "$out/partA-$m-metrics.csv" 2>/dev/null
  done
  cp "$(ls "$work"/colourize/unet/samples_epoch_*.png 2>/dev/null | tail -n 1)" "$out/partA-unet-samples.png" 2>/dev/null
fi
exit $status
