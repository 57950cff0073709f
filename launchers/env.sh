# Usage: source launchers/env.sh
# The environment every launcher and test shares: the venv, offline Hugging Face, CPU DeepSpeed
# with one compiled-op cache for the project, and mpirun allowed as root.
REGMIX_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export REGMIX_ROOT
export PATH="$REGMIX_ROOT/${VENV:-.venv}/bin:$PATH"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$REGMIX_ROOT/.torch_extensions}
if ! python -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
  export DS_ACCELERATOR=cpu
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
