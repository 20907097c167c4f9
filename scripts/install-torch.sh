#!/usr/bin/env bash
# Installs torch into the virtual environment before anything else, so that no dependency pulls a
# build we did not choose: PyPI's Linux torch is the CUDA build (several GB of NVIDIA libraries).
#   TORCH_VARIANT=auto  the CUDA build where nvidia-smi sees a GPU, else the CPU build
#   TORCH_VARIANT=cpu   the CPU build: a local wheel if pip finds one (find-links), else
#                       PyTorch's CPU index (TORCH_CPU_INDEX)
#   TORCH_VARIANT=cuda  PyPI's build
# Usage: scripts/install-torch.sh <venv pip> <torch version>
set -euo pipefail
pip=$1
version=$2
variant=${TORCH_VARIANT:-auto}
cpu_index=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}

if [ "$variant" = auto ]; then
    variant=cpu
    if [ "$(uname -s)" != Linux ]; then
        variant=cuda  # elsewhere PyPI's build is the only one (and has no CUDA)
    elif command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
        variant=cuda
    fi
fi

case "$variant" in
cuda)
    echo "installing torch==$version from PyPI"
    "$pip" install --quiet "torch==$version"
    ;;
cpu)
    # Dependencies come with the service's own install; here only torch itself.
    if "$pip" install --quiet --no-index --no-deps "torch==$version+cpu" 2>/dev/null; then
        echo "torch==$version+cpu (CPU build) installed from a local wheel"
    else
        echo "installing torch==$version+cpu (CPU build) from $cpu_index"
        "$pip" install --quiet --index-url "$cpu_index" "torch==$version+cpu"
    fi
    ;;
*)
    echo "TORCH_VARIANT must be auto, cpu or cuda, not '$variant'" >&2
    exit 2
    ;;
esac
