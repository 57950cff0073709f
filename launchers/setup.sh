#!/usr/bin/env bash
# Usage: bash launchers/setup.sh
#
# Makes this checkout ready to run: a .venv with regmix-ds and its test tools, DeepSpeed's CPU
# communication op compiled, and (as root on Debian) the packages for the localhost Slurm cluster. Re-running is cheap: each step is skipped
# when its result is already there. Settings from the environment:
#   PYTHON         interpreter for the venv          (default python3)
#   VENV           where the venv lives              (default .venv)
#   TORCH_VERSION  torch pinned when none is present (default 2.13.0, the CPU build on this disk)
#   REGMIX_EXTRAS  setup.py extras to install        (default test)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
REGMIX_EXTRAS=${REGMIX_EXTRAS:-test}
DEBIAN_PACKAGES=(slurmd slurmctld slurm-client munge)

install_debian_packages() {
  local missing=()
  for pkg in "${DEBIAN_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "setup: not root on Debian; skipping ${missing[*]} (Slurm tests will be skipped)" >&2
    return
  fi
  echo "setup: apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

install_python_packages() {
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  # Re-install only when the requirements changed since the last successful install.
  local stamp="$VENV/.regmix-setup" want
  want=$(cat setup.py launchers/setup.sh | sha256sum | cut -c1-16)
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && return
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # A torch already in the venv (a cluster's CUDA build, say) is kept; otherwise pin the CPU
  # build in the same command, or pip resolves `torch` to a multi-GB CUDA download.
  local torch=()
  "$VENV/bin/python" -c "import torch" 2>/dev/null || torch=("torch==$TORCH_VERSION")
  echo "setup: pip install ${torch[*]} -e .[$REGMIX_EXTRAS]"
  "$VENV/bin/python" -m pip install -q "${torch[@]}" -e ".[$REGMIX_EXTRAS]"
  echo "$want" > "$stamp"
}

build_deepspeed_cpu_ops() {
  # DeepSpeed compiles its CPU shared-memory all-reduce op (25-80 s) at the first process group;
  # building it here, into the project's cache (launchers/env.sh), keeps that out of every first run.
  (
    source launchers/env.sh
    [ "${DS_ACCELERATOR:-}" = cpu ] || exit 0
    python - <<'PY'
from deepspeed.accelerator import get_accelerator

builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
if builder is not None and builder.is_compatible():
    builder.load(verbose=False)
PY
  )
}

install_debian_packages
install_python_packages
build_deepspeed_cpu_ops
