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


def pytest_collection_modifyitems(items):
    """The slow end-to-end tests first (the demo, the longest, leads: test_demo.py sorts early):
    the workers then share out the many quick tests at the end and finish together, instead of one
    running the demo alone while the others wait. Longest first is the rule that keeps a schedule short."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def regmix_data() -> Path:
    """RegMix's released proxy mixtures and losses (read in place, never copied)."""
    if not (REGMIX_DATA / "data" / "train_mixture_1m.csv").exists():
        pytest.fail(f"{REGMIX_DATA}: RegMix data not found (expected beside the project in shared/)")
    return REGMIX_DATA


@pytest.fixture(scope="session")
def tiny_corpus_config(tmp_path_factory) -> Path:
    """A small synthetic corpus (6 domains, 240 short documents each, a 60/30/10 target) and its exp.yaml.

    `target_composition.json` beside it holds what the target set is made of. Not yet prepared: see `tiny_manifest`.
    """
    from regmix_ds.data.synth import SynthSettings, synthesize

    out = tmp_path_factory.mktemp("tiny_corpus")
    settings = SynthSettings(seed=0, docs_per_domain=240, target_docs=60, vocab_size=512, valid_documents=40)
    return synthesize(out, settings)["config"]


@pytest.fixture(scope="session")
def tiny_manifest(tiny_corpus_config) -> Path:
    """`tiny_corpus_config` prepared: a trained 512-token BPE, train/valid shards, manifest.json."""
    from regmix_ds.core.config import ExperimentConfig
    from regmix_ds.data.prepare import prepare

    return prepare(ExperimentConfig.load(tiny_corpus_config), train_tokenizer=True).path


SHM_BUFFERS = "deepspeed_allreduce_buffer_*"
"""DeepSpeed's 66 MB /dev/shm buffers: a rank removes its own at exit (`engine.shutdown`), a killed one cannot."""


def pytest_sessionstart(session):
    session.config.shm_before = set(Path("/dev/shm").glob(SHM_BUFFERS))


def pytest_sessionfinish(session):
    """Delete the buffers this test session left, whatever their port: once, when every worker is done."""
    if hasattr(session.config, "workerinput"):  # a pytest-xdist worker: its peers may still be training
        return
    for buffer in set(Path("/dev/shm").glob(SHM_BUFFERS)) - session.config.shm_before:
        buffer.unlink(missing_ok=True)


def make_experiment(corpus: Path, root: Path, n: int = 4, steps: int = 8, **proxy) -> Path:
    """A copy of the prepared corpus at `root` with an `n`-mixture swarm and `proxy:` settings for
    the `tiny` model (`steps` steps of 2 x 32 tokens); returns its exp.yaml."""
    import shutil

    import yaml

    from regmix_ds.core.config import ExperimentConfig
    from regmix_ds.pipeline.swarm import draw_swarm, swarm_settings

    shutil.copytree(corpus, root, symlinks=True)
    config = yaml.safe_load((root / "exp.yaml").read_text())
    micro, seq_len = 2, 32
    config["proxy"] = {
        "deepspeed_config": str(ROOT / "ds_configs" / "zero0.json"),
        "preset": "tiny", "seq_len": seq_len, "train_tokens": steps * micro * seq_len,
        "eval_batches": 2, **proxy,
    }
    config["swarm"] = {"n": n, "seed": 1}
    path = root / "exp.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    experiment = ExperimentConfig.load(path)
    draw_swarm(swarm_settings(experiment), experiment)
    return path


def corpus_of(manifest: Path) -> Path:
    """The corpus directory of a prepared manifest (<corpus>/work/data/manifest.json)."""
    return manifest.parent.parent.parent


@pytest.fixture
def tiny_experiment(tiny_manifest, tmp_path):
    """A fresh copy of the prepared tiny corpus with a 4-proxy swarm and `proxy:` settings for
    the `tiny` model; returns a factory `make(n=4, steps=8, **proxy_overrides) -> exp.yaml Path`."""

    def make(n: int = 4, steps: int = 8, **proxy) -> Path:
        return make_experiment(corpus_of(tiny_manifest), tmp_path / "experiment", n, steps, **proxy)

    return make


@pytest.fixture(scope="module")
def tokenizer_dir(tiny_manifest):
    """The tiny corpus's trained tokenizer directory."""
    return tiny_manifest.parent.parent / "tokenizer"


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    """That tokenizer, loaded."""
    from regmix_ds.data.tokenizer import load_tokenizer

    return load_tokenizer(str(tokenizer_dir), tokenizer_dir, "test")
