"""Shared test set-up: offline Hugging Face, CPU DeepSpeed, and the real RegMix data location."""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REGMIX_DATA = ROOT.parent / "shared" / "regmix-data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
# DeepSpeed compiles a communication op on first use; one cache for the whole project.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions"))


@pytest.fixture(scope="session")
def regmix_data() -> Path:
    """RegMix's released proxy mixtures and losses (read in place, never copied)."""
    if not (REGMIX_DATA / "data" / "train_mixture_1m.csv").exists():
        pytest.fail(f"{REGMIX_DATA}: RegMix data not found (expected beside the project in shared/)")
    return REGMIX_DATA
