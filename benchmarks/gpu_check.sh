#!/usr/bin/env bash
# The GPU check of npfl_lib in one command (benchmarks/gpu_check.py says what it runs):
#
#   bash benchmarks/gpu_check.sh [--out DIR] [--budget SECONDS] [--wheels DIR]
#
# On a machine with CUDA it installs what the machine's python3 lacks from the wheels of
# benchmarks/gpu_wheels.sh (offline), runs the CUDA test cases, the W1 benchmark, the
# CUDA-graph-vs-eager check and three notebooks, and writes gpu_check.json and
# gpu_check.txt (and the logs) to --out (default: $OUT, else artifacts/gpu_check).
# Without CUDA it says so and exits 0 having run nothing. PYTHON overrides python3.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
exec "${PYTHON:-python3}" benchmarks/gpu_check.py "$@"
