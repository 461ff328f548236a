#!/usr/bin/env bash
# mypy --strict over the package as it installs. In the checkout the converter sits at convert/ and
# only packaging maps it to gram_local.convert, which mypy cannot follow; so the package is installed
# into a scratch folder, checked there, and the file names in the report are mapped back.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
isolation=(--no-build-isolation)  # offline where setuptools is at hand; else pip fetches it
python -c "import setuptools, sys; sys.exit(int(setuptools.__version__.split('.')[0]) < 77)" 2>/dev/null || isolation=()
python -m pip install -q --no-deps ${isolation[@]+"${isolation[@]}"} --target "$out" "$repo"
rm -rf "$repo/build" "$repo"/*.egg-info
cd "$out"
status=0
python -m mypy --strict --ignore-missing-imports --cache-dir "$out/.mypy_cache" -p gram_local "$@" | sed -e 's#^gram_local/convert/#convert/#' || status=$?
exit "$status"
