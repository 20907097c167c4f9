#!/usr/bin/env bash
# Fills .whl/ (git-ignored) with what the lent GPU machine lacks, for bench/gpu_check.sh:
#   * the wheels of bench/gpu_wheels.txt for CPython 3.12 on x86-64 Linux, without their
#     dependencies (the machine has the rest: torch, transformers, numpy, pytest, ...);
#   * bitsandbytes slimmed to its CPU and CUDA 13 libraries (43 MB -> 7 MB; the machine's
#     torch is built for CUDA 13.0), its RECORD rewritten to match;
#   * .whl/tiny.en/: the bundled tiny.en's configuration and tokenizer without its weights (the
#     75 MB model package does not fit in a call's 64 MiB; bench.gpu_bench builds random
#     weights of a real size from these files).
# Run here, in the repository root, with the dev venv:  bash bench/gpu_wheels.sh [PYTHON]
# It prints the total that travels with a call (the working tree plus .whl/, at most 64 MiB).
set -euo pipefail
PYTHON=${1:-python}
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir -p .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
    manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d .whl -r <(grep -v '^#' bench/gpu_wheels.txt)

"$PYTHON" - <<'PY'
import base64, hashlib, re, zipfile
from pathlib import Path

keep = re.compile(r"libbitsandbytes_(cpu|cuda13\d)\.so$")
wheel = next(Path(".whl").glob("bitsandbytes-*.whl"))
slim = wheel.with_suffix(".slim")
with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
    dropped = {n for n in src.namelist() if "libbitsandbytes_" in n and not keep.search(n)}
    for info in src.infolist():
        if info.filename in dropped:
            continue
        data = src.read(info)
        if info.filename.endswith(".dist-info/RECORD"):
            lines = data.decode().splitlines()
            data = ("\n".join(l for l in lines if l.split(",")[0] not in dropped) + "\n").encode()
        dst.writestr(info, data)
slim.replace(wheel)
print(f"bitsandbytes slimmed: {len(dropped)} libraries dropped")
PY

PYTHONPATH=$PWD "$PYTHON" -m bench.gpu_bench --export-model-files .whl/tiny.en

tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
wheels=$(du -sb .whl | cut -f1)
echo "working tree $((tree / 1024)) KiB + .whl $((wheels / 1024)) KiB = $(((tree + wheels) / 1048576)) MiB (limit 64 MiB)"
