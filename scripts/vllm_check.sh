#!/usr/bin/env bash
# The openai backend against a real vLLM, as one prepared script for a GPU machine that has vLLM
# installed (the tests use a stub of vLLM's schema: tests/vllm_stub.py). It serves a checkpoint with
# vLLM on 127.0.0.1, then judges through `--backend openai` and records what came back in $OUT.
#
#   bash scripts/vllm_check.sh CHECKPOINT_DIR VOCAB.gguf
#
# CHECKPOINT_DIR: a Hugging Face checkpoint (GRAM-RR, or `scripts/make_checkpoint.py DIR --shape 3b`);
# VOCAB.gguf: a GGUF of the same vocabulary (gram-local renders and tokenizes with it; any quant).
# Not run yet: no machine of this project has had vLLM (the lent GPU's image has none, and its
# wheels are far over what one call there can carry).
set -uo pipefail
ckpt="${1:?checkpoint folder}"
vocab="${2:?GGUF with the same vocabulary}"
out="${OUT:-$PWD/vllm-out}"
port="${PORT:-8000}"
mkdir -p "$out"
step() { echo "== $(date +%T) $*" | tee -a "$out/steps.log"; }

step "vLLM $(python3 -c 'import vllm; print(vllm.__version__)' 2>&1 | tail -1)"
python3 -m vllm.entrypoints.openai.api_server --model "$ckpt" --dtype bfloat16 --max-model-len 8192 \
    --max-logprobs 20 --host 127.0.0.1 --port "$port" > "$out/vllm.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null' EXIT
for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
    kill -0 "$server" 2>/dev/null || { step "vLLM exited"; tail -40 "$out/vllm.log"; exit 1; }
    sleep 2
done
curl -s "http://127.0.0.1:$port/version" | tee "$out/version.json"; echo

remote=(--model "$vocab" --backend openai --base-url "http://127.0.0.1:$port")
step "compare --swap, greedy, budget 64 (the think reply must follow the format: checked on every reply)"
gram-local compare "${remote[@]}" -q "What is 2+2?" -a "4" -b "5" --swap --max-think-tokens 64 --json \
    > "$out/compare.json" 2> "$out/compare.err"; echo "exit $?"; cat "$out/compare.json"; tail -5 "$out/compare.err"

step "vote -k 4 and a batch of 8 pairs (both orders) through the same server"
gram-local vote "${remote[@]}" -q "Name a prime." -a "7" -b "8" -k 4 --max-think-tokens 32 --json \
    > "$out/vote.json" 2> "$out/vote.err"; echo "exit $?"
python3 - "$out/tasks.jsonl" <<'EOF'
import json, sys
with open(sys.argv[1], "w") as f:
    for i in range(8):
        f.write(json.dumps({"id": i, "question": f"Explain item {i} briefly.", "a": "A clear, correct answer.",
                            "b": "Not sure."}) + "\n")
EOF
start=$(date +%s)
gram-local batch "$out/tasks.jsonl" -o "$out/batch.jsonl" --swap "${remote[@]}" --max-think-tokens 64 \
    2> "$out/batch.err"; echo "exit $? in $(( $(date +%s) - start )) s"; tail -3 "$out/batch.err"
step "done"
