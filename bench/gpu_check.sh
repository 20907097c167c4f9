#!/usr/bin/env bash
# One check of PQM on the lent GPU machine (bare, offline, Python 3.12 with its own torch 2.11
# cu130, transformers, numpy, pytest: /work/.library/device/KINDS.md), within 8 minutes:
#   1. installs the carried wheels of .whl/ into /tmp/site (a stub stands in for PyAV);
#   2. prints the device and the versions that matter;
#   3. runs `pytest -m gpu` (JUnit XML to $OUT);
#   4. runs bench.gpu_bench (table printed, JSON to $OUT/gpu_bench.json).
# Each step has its own `timeout`; a failed step is reported and the next one still runs.
#
# Before the call, here in the repository root (dev venv, network to PyPI):
#     bash bench/gpu_wheels.sh .venv/bin/python
# fills .whl/ with the wheels of bench/gpu_wheels.txt, downloaded for the GPU machine as
#     pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux_2_28_x86_64 ... -d .whl -r bench/gpu_wheels.txt
# (bitsandbytes slimmed to its CUDA 13 library) and tiny.en's files without weights; it prints
# the size that travels (about 34 MiB of the 64 MiB a call may carry). Then the device call:
#     run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=600)
# Not carried, so not checked there: PyAV (36 MB; only decoding of uploaded files needs it), the
# bundled model packages (75 MB and more: gpu tests and the bench build random weights), and
# faster-whisper with CTranslate2 (over 60 MB: the bench skips its comparison there).
#
# Here, on the CPU, the same steps at toy sizes (nothing installed; the gpu tests skip):
#     PYTHON=.venv/bin/python bash bench/gpu_check.sh --cpu-smoke
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=${1:-}
PYTHON=${PYTHON:-python3}
OUT=${OUT:-bench/results/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
failed=()

section() { printf '\n=== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }
check() { # check NAME SECONDS COMMAND...: runs COMMAND under `timeout`, notes a failure
    local name=$1 seconds=$2
    shift 2
    section "$name, at most ${seconds}s"
    timeout --kill-after=10 "$seconds" "$@"
    local status=$?
    if [ "$status" -ne 0 ]; then
        echo "--- $name failed (exit $status$([ "$status" -eq 124 ] && echo ': timed out'))"
        failed+=("$name")
    fi
}

if [ "$SMOKE" != "--cpu-smoke" ]; then
    check install 60 "$PYTHON" -m pip install -q --no-index --no-deps --no-compile \
        --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    if ! "$PYTHON" -c "import av" 2>/dev/null; then
        mkdir -p /tmp/stub/av
        cat >/tmp/stub/av/__init__.py <<'PY'
"""Stand-in for PyAV, which is too large to carry to the GPU machine: importing works, decoding
an uploaded file fails loudly."""
from av import error

time_base = 1_000_000


def open(*args: object, **kwargs: object) -> None:
    raise error.FFmpegError("PyAV is not installed on this machine (bench/gpu_check.sh)")
PY
        echo "class FFmpegError(Exception): ..." >/tmp/stub/av/error.py
    fi
    export PYTHONPATH=$PWD:/tmp/site:/tmp/stub
    export PQM_GPU_MODEL_FILES=$PWD/.whl/tiny.en
    BENCH_ARGS=(--model-files .whl/tiny.en)
    PYTEST_SECONDS=140
    BENCH_SECONDS=220
else
    export PYTHONPATH=$PWD
    BENCH_ARGS=(--cpu-smoke)
    PYTEST_SECONDS=120
    BENCH_SECONDS=240
fi

check environment 40 bash -c "nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version \
    --format=csv 2>/dev/null || echo 'no nvidia-smi'; \"$PYTHON\" - <<'PY'
import importlib.metadata as md, platform, torch
print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda,
      'available', torch.cuda.is_available())
for name in ('transformers', 'bitsandbytes', 'peft', 'numpy', 'pydantic', 'sqlalchemy'):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, 'missing')
import app.main, app.engine.whisper  # the whole service imports
print('app imports')
PY"

# Where gpu tests live; the API, browser and topology suites import packages not carried. A
# module that cannot be imported there (faster-whisper, the bundled model) is a collection error,
# counted apart: the step fails on a failed or erroring test only.
read -ra GPU_TESTS <<<"${GPU_TESTS:-tests/engine tests/bench}"
section "pytest -m gpu, at most ${PYTEST_SECONDS}s"
timeout --kill-after=10 "$PYTEST_SECONDS" "$PYTHON" -m pytest -m gpu -p no:cacheprovider -rs -q \
    --continue-on-collection-errors --junitxml="$OUT/pytest_gpu.xml" "${GPU_TESTS[@]}"
check "pytest -m gpu: outcome" 30 "$PYTHON" - "$OUT/pytest_gpu.xml" <<'PY'
import sys
import xml.etree.ElementTree as ET

counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0, "not collected": 0}
for case in ET.parse(sys.argv[1]).iter("testcase"):
    error = case.find("error")
    if error is not None and "collection failure" in error.get("message", ""):
        counts["not collected"] += 1
    elif case.find("failure") is not None:
        counts["failed"] += 1
    elif error is not None:
        counts["error"] += 1
    elif case.find("skipped") is not None:
        counts["skipped"] += 1
    else:
        counts["passed"] += 1
print("gpu tests:", ", ".join(f"{n} {k}" for k, n in counts.items()))
sys.exit(1 if counts["failed"] or counts["error"] or not counts["passed"] + counts["skipped"] else 0)
PY

check gpu_bench "$BENCH_SECONDS" "$PYTHON" -m bench.gpu_bench "${BENCH_ARGS[@]}" \
    --budget-s $((BENCH_SECONDS - 60)) --out "$OUT/gpu_bench.json"

section done
if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]}"
    exit 1
fi
echo "every step passed"
