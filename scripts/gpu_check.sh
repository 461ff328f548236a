#!/usr/bin/env bash
# The CUDA-offload check of the throughput issue, as one script for a lent GPU machine with no
# network: build llama-cpp-python with CUDA from a trimmed sdist, install gram-local, make the
# 3B-shaped checkpoint, convert it, then `gram-local bench` fully offloaded and the seed's
# transformers pipeline on the same GPU. Results land in $OUT (or ./gpu-out).
#
# Needs in .gpu/ (git-ignored, carried): llama-cpp-python-0.3.36-trim.tgz (the sdist without
# .git, vendor/llama.cpp/{models,docs,benches,tests,examples,tools/ui}), the wheels of packages
# the machine lacks (diskcache, gguf), and the Llama-3 tokenizer.json.
set -euo pipefail
export PYTHONUNBUFFERED=1
out="${OUT:-$PWD/gpu-out}"
mkdir -p "$out"
site=/tmp/site
mkdir -p "$site"
export PYTHONPATH="$site"
step() { echo "== $(date +%T) $*" | tee -a "$out/steps.log"; }

step "install carried wheels"
python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" .gpu/*.whl

step "build llama-cpp-python with CUDA"
mkdir -p /tmp/src && tar xzf .gpu/llama-cpp-python-0.3.36-trim.tgz -C /tmp/src
t0=$(date +%s)
CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAVA_BUILD=OFF" CMAKE_BUILD_PARALLEL_LEVEL=16 \
    python3 -m pip install -q --no-index --no-deps --no-build-isolation --target "$site" \
    /tmp/src/llama_cpp_python-0.3.36 > "$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
step "built in $(( $(date +%s) - t0 )) s"

step "install gram-local"
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target "$site" . > "$out/install.log" 2>&1
cd /tmp  # import the installed package, not the checkout
repo="$OLDPWD"
python3 -m gram_local doctor --json | tee "$out/doctor.json"

step "3B-shaped checkpoint and Q4_K_M"
python3 "$repo/scripts/make_checkpoint.py" /tmp/ckpt-3b --shape 3b --tokenizer-json "$repo/.gpu/tokenizer.json"
python3 -m gram_local.convert /tmp/ckpt-3b -q Q4_K_M -o /tmp/3b-q4_k_m.gguf --no-progress

step "gram-local bench, all layers offloaded"
python3 -m gram_local bench --model /tmp/3b-q4_k_m.gguf --n-gpu-layers 999 --json > "$out/bench-gpu.json"
python3 -m gram_local bench --model /tmp/3b-q4_k_m.gguf --n-gpu-layers 999 --ops compare --no-speculative --json \
    > "$out/bench-gpu-nospec.json"

step "the seed's pipeline (transformers generate, bf16) on the same GPU"
python3 "$repo/benchmarks/peer_bench.py" --checkpoint /tmp/ckpt-3b --gguf /tmp/3b-q4_k_m.gguf \
    --seed-judgments 2 --seed-device cuda --ops compare,swap --n-gpu-layers 999 --skip-binding \
    --label "NVIDIA H100, full offload" --out "$out" > "$out/peer-bench.txt" 2>&1 || tail -30 "$out/peer-bench.txt"
step "done"
