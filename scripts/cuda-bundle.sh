#!/usr/bin/env bash
# Builds everything the GPU checks run (scripts/cuda-check.sh) with
# `--features cuda`, into one folder that can travel to a GPU machine without
# a Rust toolchain: the pixclass binary, the two timing examples, the xtask
# binary, and the test binaries that take the GPU path (tests/cuda.rs and the
# models' golden tests, which run on the GPU with PIXCLASS_TEST_DEVICE=cuda).
#
#   scripts/cuda-bundle.sh [DIR]        (default: target/cuda-bundle)
#
# Needs nvcc on PATH (CUDA_ROOT and CUDA_COMPUTE_CAP as candle wants them) and
# CUDA's libraries where the linker finds them (see docs/DEVELOPERS.md). The
# PTX candle embeds must not be newer than the GPU machine's driver: build
# with the CUDA version of that driver (e.g. nvcc 13.0 for driver 580).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-target/cuda-bundle}"
mkdir -p "$out"
export CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=true
target="${CARGO_TARGET_DIR:-target}"

cargo build --release --features cuda -p pixclass-cli
cargo build --release --features cuda -p pixclass-train --example step_timing
cargo build --release --features cuda -p pixclass-models --example seg_forward_timing
cargo build --release -p xtask
cp "$target/release/pixclass" "$target/release/xtask" \
  "$target/release/examples/step_timing" "$target/release/examples/seg_forward_timing" "$out/"

# Test binaries, named after their test target.
tests=$( { cargo test --release --no-run -p pixclass-tests --features cuda --test cuda 2>&1
           cargo test --release --no-run -p pixclass-models --features cuda \
             --test colour_nets --test deeplab --test mobilenet 2>&1; } |
         sed -n 's/^ *Executable \(tests\/\)\{0,1\}\([a-z_]*\)\.rs (\(.*\))$/\2 \3/p')
[ -n "$tests" ] || { echo "no test binaries found" >&2; exit 1; }
while read -r name path; do
  cp "$path" "$out/test_$name"
done <<<"$tests"
# The test binaries read their fixtures under the path they were built in.
pwd >"$out/built_in"
ls -la "$out"
