#!/usr/bin/env bash
# Downloads the wheels that benchmarks/gpu_check.sh installs on a GPU machine with no
# package index (benchmarks/gpu_requirements.txt: pinned, --no-deps, for that machine's
# CPython 3.12 on x86-64 Linux) into an ignored folder, which the device run carries.
#
#   bash benchmarks/gpu_wheels.sh [DEST]        # DEST: .whl/gpu_check (git-ignored: /.whl/)
#
# Run it here, where PyPI is reachable; GPU_PYTHON_VERSION overrides 3.12. It refuses
# more than 48 MiB of wheels (the working tree and the carried folders travel together,
# 64 MiB at most).
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.whl/gpu_check}
python_version=${GPU_PYTHON_VERSION:-3.12}
if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
requirements=$(mktemp)
trap 'rm -f "$requirements"' EXIT
sed -e 's/#.*//' -e 's/[[:space:]]//g' -e '/^$/d' benchmarks/gpu_requirements.txt >"$requirements"
mkdir -p "$dest"
# pip matches manylinux_2_N tags exactly: name every N the pinned wheels use.
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_26_x86_64 \
    manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_12_x86_64 manylinux2010_x86_64 \
    manylinux_2_5_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$tag")
done
"$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version "$python_version" --implementation cp "${platforms[@]}" \
    -d "$dest" -r "$requirements"
# Exactly the pinned wheels stay: an older download of another version would be carried too.
keep=$(mktemp)
trap 'rm -f "$requirements" "$keep"' EXIT
"$python" - "$dest" "$requirements" >"$keep" <<'PY'
import re, sys
from pathlib import Path

def norm(name):
    return re.sub(r"[-_.]+", "_", name).lower()

pins = {}
for line in Path(sys.argv[2]).read_text().split():
    name, version = line.split("==")
    pins[norm(name)] = version
for wheel in sorted(Path(sys.argv[1]).glob("*.whl")):
    name, version = wheel.name.split("-")[:2]
    if pins.get(norm(name)) == version:
        print(wheel.name)
PY
for wheel in "$dest"/*.whl; do
    grep -qxF "$(basename "$wheel")" "$keep" || { echo "removing $wheel (not pinned)"; rm -f "$wheel"; }
done
count=$(wc -l <"$keep")
expected=$(wc -l <"$requirements")
bytes=$(du -cb "$dest"/*.whl | tail -1 | cut -f1)
echo "gpu_wheels: $count of $expected pinned wheels in $dest, $((bytes / 1024 / 1024)) MiB"
[ "$count" -eq "$expected" ] || { echo "gpu_wheels: some pinned wheels are missing" >&2; exit 1; }
[ "$bytes" -le $((48 * 1024 * 1024)) ] || { echo "gpu_wheels: over 48 MiB" >&2; exit 1; }
echo "carry: $dest (e.g. run(command='bash benchmarks/gpu_check.sh', carry=['$dest']))"
