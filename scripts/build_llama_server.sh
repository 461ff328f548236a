#!/usr/bin/env bash
# Build llama.cpp's llama-server from the llama-cpp-python 0.3.36 sdist (which vendors the whole
# llama.cpp tree), offline apart from the sdist download, with the same CMAKE_ARGS as the wheel.
# Usage: scripts/build_llama_server.sh CACHE_DIR   -> prints the binary's path (built once per dir)
# The remote-backend tests find it through GRAM_LOCAL_LLAMA_SERVER. About 11 minutes on 2 cores.
set -euo pipefail
dest="${1:?usage: build_llama_server.sh CACHE_DIR}"
if [ -x "$dest/llama-server" ]; then
    echo "$dest/llama-server"
    exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python -m pip download -q --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d "$work/sdist" >&2
mkdir -p "$work/src"
tar -xzf "$work"/sdist/llama_cpp_python-0.3.36.tar.gz -C "$work/src" --strip-components=3 \
    llama_cpp_python-0.3.36/vendor/llama.cpp
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
# CMAKE_ARGS (the CPU profile) is word-split on purpose; the UI options keep the build offline.
# shellcheck disable=SC2086
cmake -S "$work/src" -B "$work/build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    ${CMAKE_ARGS:-} -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF >&2
cmake --build "$work/build" --target llama-server -j"$(nproc)" >&2
mkdir -p "$dest.tmp"
cp "$work/build/bin/llama-server" "$dest.tmp/"
rm -rf "$dest" && mv "$dest.tmp" "$dest"
echo "$dest/llama-server"
