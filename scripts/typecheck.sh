#!/usr/bin/env bash
# mypy --strict over the package as it installs (and a check of that layout). In the checkout the converter sits at convert/ and
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
# The installed layout on the way: the converter, the lock and the page inside the package, the test
# tools outside it, and no symbolic links.
for f in gram_local/models.lock gram_local/convert/__init__.py gram_local/service/page.html gram_local/py.typed; do
    [ -f "$out/$f" ] || { echo "typecheck.sh: the installed package lacks $f" >&2; exit 1; }
done
unwanted="$(find "$out/gram_local" -name 'random_checkpoint*' -o -type l)"
[ -z "$unwanted" ] || { echo "typecheck.sh: the installed package holds $unwanted" >&2; exit 1; }
cd "$out"
status=0
python -m mypy --strict --ignore-missing-imports --cache-dir "$out/.mypy_cache" -p gram_local "$@" | sed -e 's#^gram_local/convert/#convert/#' || status=$?
exit "$status"
