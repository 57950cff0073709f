"""The synthetic corpus: deterministic, clearly different domains, a target of known mixture."""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from regmix_ds.commands.main import main
from regmix_ds.core.config import ExperimentConfig
from regmix_ds.core.errors import RegmixError
from regmix_ds.core.mixture import Mixture
from regmix_ds.data.synth import STYLES, DomainGenerator, SynthSettings, build_generators, synthesize
from tests.conftest import ROOT

SMALL = dict(docs_per_domain=60, target_docs=40, valid_documents=10)


def read_texts(path):
    return [json.loads(line)["text"] for line in path.read_text().splitlines()]


def words(texts):
    return set(re.findall(r"[a-z]+|\d+(?:\.\d+)?", " ".join(texts).lower()))


LAYOUT_WORDS = {"a", "b", "none"}  # dialogue speakers, code's empty call


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synthesize(out, SynthSettings(seed=3, **SMALL))
    return out


def test_writes_domains_target_composition_and_a_loadable_config(corpus):
    config = ExperimentConfig.load(corpus / "exp.yaml")
    domains = list(config.data.domains)
    assert len(domains) >= 6
    assert list(config.data.targets) == ["target"]
    for name in domains:
        assert len(read_texts(corpus / f"{name}.jsonl")) == SMALL["docs_per_domain"]
    assert len(read_texts(corpus / "target.jsonl")) == SMALL["target_docs"]
    assert config.data.valid_documents == SMALL["valid_documents"]
    composition = Mixture.load(corpus / "target_composition.json")
    assert list(composition.domains) == domains
    assert dict(composition.weights) == {**dict.fromkeys(domains, 0.0), "news": 0.6, "code": 0.3, "chat": 0.1}


def test_target_characters_follow_the_true_mixture(corpus):
    realized = json.loads((corpus / "target_composition.json").read_text())["realized"]
    longest = max(len(t) for t in read_texts(corpus / "target.jsonl"))
    total = sum(len(t) for t in read_texts(corpus / "target.jsonl"))
    for name, weight in {"news": 0.6, "code": 0.3, "chat": 0.1}.items():
        # Whole documents: each share is off by at most about one document.
        assert abs(realized[name] - weight) <= longest / total + 1e-9


def test_target_uses_only_its_components_languages(corpus):
    target_words = words(read_texts(corpus / "target.jsonl"))
    lexicon = {name: set(g.lexicon) for name, g in build_generators(SynthSettings(seed=3, **SMALL)).items()}
    components = lexicon["news"] | lexicon["code"] | lexicon["chat"]
    assert target_words <= components | LAYOUT_WORDS
    unused_only = (lexicon["wiki"] | lexicon["legal"] | lexicon["math"]) - components - LAYOUT_WORDS
    assert not target_words & unused_only


def test_domains_have_clearly_different_statistics(corpus):
    texts = {style.name: read_texts(corpus / f"{style.name}.jsonl") for style in STYLES[:6]}
    vocab = {name: words(t) for name, t in texts.items()}
    mean_chars = {name: np.mean([len(doc) for doc in t]) for name, t in texts.items()}
    names = list(texts)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            overlap = len(vocab[a] & vocab[b]) / len(vocab[a] | vocab[b])
            assert overlap < 0.25, (a, b, overlap)
    assert max(mean_chars.values()) > 3 * min(mean_chars.values())


def test_same_seed_same_bytes_other_seed_other_text(tmp_path):
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        synthesize(tmp_path / name, SynthSettings(seed=seed, **SMALL))
    for file in ("news.jsonl", "target.jsonl", "target_composition.json", "exp.yaml"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()
    assert (tmp_path / "a" / "news.jsonl").read_bytes() != (tmp_path / "c" / "news.jsonl").read_bytes()


def test_a_domain_does_not_depend_on_which_others_exist():
    pool = ["ba", "be", "bi"] * 60
    pool = [f"{w}{i}" for i, w in enumerate(pool)]
    first = DomainGenerator(STYLES[1], pool, seed=1)
    again = DomainGenerator(STYLES[1], pool, seed=1)
    rng_a, rng_b = np.random.default_rng(0), np.random.default_rng(0)
    assert first.documents(3, rng_a) == again.documents(3, rng_b)


@pytest.mark.parametrize(
    ("settings", "flag"),
    [
        (dict(target={"news": 0.5, "nosuch": 0.5}), "--target"),
        (dict(target={"news": -1.0, "code": 2.0}), "--target"),
        (dict(docs_per_domain=10, valid_documents=10), "--docs-per-domain"),
        (dict(num_domains=9), "--num-domains"),
    ],
)
def test_bad_settings_fail_before_writing(tmp_path, settings, flag):
    with pytest.raises(RegmixError) as err:
        synthesize(tmp_path / "out", SynthSettings(**settings))
    assert err.value.where == flag
    assert not (tmp_path / "out").exists()


def test_cli_writes_corpus_and_rejects_bad_target(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "ok"), "--docs-per-domain", "20", "--valid-documents", "5",
                 "--target-docs", "10", "--num-domains", "7"]) == 0
    assert (tmp_path / "ok" / "recipes.jsonl").exists()
    assert main(["synth", "--out", str(tmp_path / "bad"), "--target", "news=0.5,code"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "--target" in error
    assert not (tmp_path / "bad").exists()


def test_the_experiment_directory_is_self_contained(tmp_path):
    """Moved elsewhere, the experiment still loads and refers to nothing outside its directory."""
    first = tmp_path / "first"
    assert main(["synth", "--out", str(first), "--docs-per-domain", "120", "--target-docs", "20",
                 "--valid-documents", "20", "--deepspeed-config", str(ROOT / "ds_configs" / "zero0.json")]) == 0
    moved = Path(shutil.move(first, tmp_path / "moved"))
    experiment = ExperimentConfig.load(moved / "exp.yaml")
    proxy = experiment.require_proxy()
    paths = [proxy.deepspeed_config, experiment.work_dir, experiment.resolve(experiment.data.tokenizer),
             *(experiment.resolve(p) for source in experiment.data.domains.values() for p in source.paths)]
    assert all(Path(p).resolve().is_relative_to(moved.resolve()) for p in paths), paths
    assert Path(proxy.deepspeed_config).read_text() == (ROOT / "ds_configs" / "zero0.json").read_text()
