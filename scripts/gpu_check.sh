#!/usr/bin/env bash
# The CUDA-offload check of the throughput issue, as one script for a lent GPU machine with no
# network: build llama-cpp-python with CUDA from a trimmed sdist while the 3B-shaped checkpoint is
# written and converted, then `gram-local bench` fully offloaded and the seed's transformers
# pipeline on the same GPU. Results land in $OUT (or ./gpu-out), each as soon as it exists.
#
# Needs in .gpu/ (git-ignored, carried): llama-cpp-python-0.3.36-trim.tgz (the sdist without
# .git, vendor/llama.cpp/{models,docs,benches,tests,examples,tools/ui}), the wheels of packages
# the machine lacks (diskcache, gguf, tqdm; pytest, pluggy, iniconfig for the gpu-marked tests), and the
# Llama-3 tokenizer.json.
set -uo pipefail
export PYTHONUNBUFFERED=1
repo="$PWD"
out="${OUT:-$PWD/gpu-out}"
mkdir -p "$out"
site=/tmp/site
mkdir -p "$site"
export PYTHONPATH="$site"
step() { echo "== $(date +%T) $*" | tee -a "$out/steps.log"; }

step "install carried wheels"
python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" .gpu/*.whl || exit 1

step "checkpoint + F16 conversion in the background (no llama.cpp needed)"
( cd "$repo" && PYTHONPATH="$site:$repo" python3 scripts/make_checkpoint.py /tmp/ckpt-3b --shape 3b \
      --tokenizer-json .gpu/tokenizer.json \
  && PYTHONPATH="$site:$repo" python3 -m gram_local.convert /tmp/ckpt-3b -q F16 -o /tmp/3b-f16.gguf --no-progress \
) > "$out/checkpoint.log" 2>&1 &
ckpt_pid=$!

step "build llama-cpp-python with CUDA"
mkdir -p /tmp/src && tar xzf .gpu/llama-cpp-python-0.3.36-trim.tgz -C /tmp/src
t0=$(date +%s)
CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAVA_BUILD=OFF" CMAKE_BUILD_PARALLEL_LEVEL=16 \
    python3 -m pip install -q --no-index --no-deps --no-build-isolation --target "$site" \
    /tmp/src/llama_cpp_python-0.3.36 > "$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
step "built in $(( $(date +%s) - t0 )) s"
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target "$site" . > "$out/install.log" 2>&1 \
    || { tail -20 "$out/install.log"; exit 1; }
cd /tmp  # from here on import the installed package, not the checkout
python3 -m gram_local doctor --json > "$out/doctor.json"; cat "$out/doctor.json"; echo

step "wait for the checkpoint, quantize to Q4_K_M"
wait "$ckpt_pid" || { tail -20 "$out/checkpoint.log"; exit 1; }
python3 -c "from gram_local.convert import quantize_gguf; quantize_gguf('/tmp/3b-f16.gguf', '/tmp/3b-q4_k_m.gguf', 'Q4_K_M')" \
    || exit 1

step "the segfault hunt: every llama.cpp call gram-local makes, one stage at a time, llama.cpp logging on"
GRAM_LOCAL_LLAMA_LOG=1 timeout 300 python3 -X faulthandler "$repo/scripts/cuda_probe.py" /tmp/3b-q4_k_m.gguf \
    > "$out/cuda-probe.out" 2> "$out/cuda-probe.err"
echo "probe exit $?; last stage started:"; grep '^STAGE' "$out/cuda-probe.out" | tail -1
grep -E '^(ok|all stages)' "$out/cuda-probe.out" | tail -3; tail -30 "$out/cuda-probe.err"


step "the gpu-marked tests (CPU vs offloaded P(A), doctor and bench offloaded) on the 3B-shaped model"
if python3 -c "import pytest" 2>/dev/null; then
    ( cd "$repo" && GRAM_LOCAL_GPU_TEST_MODEL=/tmp/3b-q4_k_m.gguf timeout 600 python3 -m pytest -q -m gpu -p no:cacheprovider \
          tests/test_gpu_offload.py ) > "$out/pytest-gpu.txt" 2>&1
    tail -15 "$out/pytest-gpu.txt"
else
    echo "pytest is not installed here: carry its wheels (pytest, pluggy, iniconfig) in .gpu/ to run tests/test_gpu_offload.py"
fi

step "gram-local bench, all layers offloaded (prompt-lookup drafts off)"
timeout 150 python3 -X faulthandler -m gram_local bench --model /tmp/3b-q4_k_m.gguf --n-gpu-layers 999 \
    --no-speculative --ops compare,swap,vote,best-of-8 --json > "$out/bench-gpu.json" 2> "$out/bench-gpu.err"
tail -5 "$out/bench-gpu.err"

step "workload texts for the seed pipeline (CPU, no CUDA in this process)"
python3 -c "
import json; from gram_local import load_judge; from gram_local.bench import build_workload
from gram_local.config import EngineSettings
w = build_workload(load_judge('/tmp/3b-q4_k_m.gguf', engine=EngineSettings(n_gpu_layers=0, parallel=1)))
json.dump({'question': w.question, 'responses': list(w.responses)}, open('/tmp/workload.json', 'w'))"

step "the seed's pipeline (transformers generate, bf16) on the same GPU, in its own process"
timeout 120 python3 "$repo/benchmarks/seed_gpu.py" /tmp/ckpt-3b /tmp/workload.json cuda 2 > "$out/seed-gpu.json" \
    2> "$out/seed-gpu.err"; tail -3 "$out/seed-gpu.err"; cat "$out/seed-gpu.json"

step "doctor and a speculative compare, with faulthandler (crash diagnosis)"
timeout 40 python3 -X faulthandler -m gram_local doctor --model /tmp/3b-q4_k_m.gguf --json > "$out/doctor-model.json" \
    2> "$out/doctor-model.err"; tail -25 "$out/doctor-model.err"
timeout 40 python3 -X faulthandler -m gram_local bench --model /tmp/3b-q4_k_m.gguf --n-gpu-layers 999 \
    --speculative --ops compare --think-tokens 64 --json > "$out/bench-spec.json" 2> "$out/bench-spec.err"
tail -25 "$out/bench-spec.err"
step "done"
