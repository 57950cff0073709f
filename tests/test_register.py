"""Existing Megatron shards as domains: registered from their headers without tokenizing, several
prefixes per domain read as one stream, trained on, and handed back to Megatron per prefix."""
import dataclasses
import json
import math
import os
import shutil

import numpy as np
import pytest
import yaml

from regmix_ds.core.config import ExperimentConfig
from regmix_ds.core.errors import RegmixError
from regmix_ds.core.manifest import Manifest
from regmix_ds.core.mixture import Mixture
from regmix_ds.data import prepare as prepare_module
from regmix_ds.data import register
from regmix_ds.data.blend import BlendedDataset
from regmix_ds.data.indexed import ConcatenatedTokens, IndexedDataset, open_split, write_indexed
from regmix_ds.data.prepare import prepare
from regmix_ds.pipeline.proxies import train_config
from regmix_ds.pipeline.swarm import draw_swarm, swarm_settings
from regmix_ds.train.plan import plan_run, training_data
from tests.conftest import ROOT
from tests.helpers import proxy_dir, run_cli

PIECES = {"news": 3, "code": 2, "chat": 4, "wiki": 3, "math": 1, "legal": 2}
GIVEN_VALID = ("news", "code")
"""Domains registered with their own validation shards; the others hold valid_documents out."""
VALID_DOCUMENTS = 20


def megatron_get_blend_from_list(blend):
    """Megatron-LM's `megatron/core/datasets/utils.py:get_blend_from_list`, its logic copied: how
    Megatron reads a --data-path list, a --data-args-path file and each split of the per-split JSON."""
    if blend is None:
        return None
    if len(blend) % 2 == 1:
        return [p.strip() for p in blend], None
    weights, prefixes = zip(*[(blend[i], blend[i + 1]) for i in range(0, len(blend), 2)])
    return [p.strip() for p in prefixes], [float(w) for w in weights]


def documents_of(prefix):
    dataset = IndexedDataset(prefix)
    return [np.array(dataset[i]) for i in range(len(dataset))]


@pytest.fixture(scope="module")
def megatron_corpus(tiny_manifest, tmp_path_factory):
    """The tiny corpus's token shards re-written by our IndexedWriter in Megatron's layout: each
    domain's train documents cut into PIECES[domain] prefixes `<domain>/<domain>_<k>_text_document`
    (what preprocess_data.py names them), and a validation prefix for GIVEN_VALID."""
    manifest = Manifest.load(tiny_manifest)
    root = tmp_path_factory.mktemp("megatron")
    for domain, pieces in PIECES.items():
        documents = documents_of(manifest.train[domain].prefix)
        for k, part in enumerate(np.array_split(np.arange(len(documents)), pieces)):
            write_indexed(root / domain / f"{domain}_{k}_text_document", [documents[i] for i in part], np.uint16)
        if domain in GIVEN_VALID:
            write_indexed(root / domain / "valid_text_document", documents_of(manifest.valid[domain].prefix),
                          np.uint16)
    write_indexed(root / "target" / "target_text_document", documents_of(manifest.valid["target"].prefix),
                  np.uint16)
    return root


def experiment_on(corpus, directory, tiny_manifest, **data):
    """exp.yaml registering `corpus` (globs), with the tiny tokenizer and a proxy: section for the tiny model."""
    domains = {d: {"prefixes": [str(corpus / d / f"{d}_*_text_document")]} for d in PIECES}
    for d in GIVEN_VALID:
        domains[d]["valid_prefixes"] = [str(corpus / d / "valid_text_document")]
    config = {
        "work_dir": "work",
        "data": {"tokenizer": str(tiny_manifest.parent.parent / "tokenizer"), "valid_documents": VALID_DOCUMENTS,
                 "domains": domains, "targets": {"target": {"prefixes": [str(corpus / "target" / "target_*")]}},
                 **data},
        "swarm": {"n": 2, "seed": 1},
        "proxy": {"deepspeed_config": str(ROOT / "ds_configs" / "zero0.json"), "preset": "tiny", "seq_len": 32,
                  "train_tokens": 8 * 2 * 32, "eval_batches": 2},
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "exp.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def never(*args, **kwargs):
    raise AssertionError("existing shards must not be re-tokenized")


@pytest.fixture
def registered(megatron_corpus, tiny_manifest, tmp_path, monkeypatch):
    """The Megatron corpus registered (tokenizing would fail the test); returns exp.yaml."""
    monkeypatch.setattr(prepare_module, "tokenize", never)
    monkeypatch.setattr(prepare_module, "load_raw", never)
    config = experiment_on(megatron_corpus, tmp_path / "exp", tiny_manifest)
    prepare(ExperimentConfig.load(config))
    return config


def test_existing_shards_register_train_a_proxy_and_export_a_per_prefix_blend(registered, megatron_corpus,
                                                                                 tiny_manifest, tmp_path):
    experiment = ExperimentConfig.load(registered)
    manifest = Manifest.load(experiment.work.manifest)
    original = Manifest.load(tiny_manifest)
    for domain, pieces in PIECES.items():
        shards = manifest.train[domain].shards
        prefixes = sorted(str(p)[:-4] for p in (megatron_corpus / domain).glob(f"{domain}_*_text_document.idx"))
        assert [str(s.prefix) for s in shards] == prefixes and len(prefixes) == pieces
        for shard in shards:  # counts from each .idx; the train shards are the files themselves, not copies
            assert shard.prefix.is_absolute() and shard.tokens <= IndexedDataset(shard.prefix).num_tokens
        if domain in GIVEN_VALID:  # one stream: the prefixes back to back are the original train shard
            assert np.array_equal(open_split(manifest.train[domain]),
                                  IndexedDataset(original.train[domain].prefix).tokens)
        else:
            assert manifest.valid[domain].documents == VALID_DOCUMENTS
            assert manifest.train[domain].documents == original.train[domain].documents - VALID_DOCUMENTS
    assert not list((experiment.work.data.path).glob("*_train.bin"))

    draw_swarm(swarm_settings(experiment), experiment)
    trained = run_cli("proxy", "--config", registered, "--index", 1)
    assert trained.returncode == 0, trained.stderr[-3000:]
    result = json.loads((proxy_dir(experiment, 1) / "result.json").read_text())
    assert set(result["valid_loss"]) == {*PIECES, "target"} and result["steps"] == 8

    mixture = Mixture.load(experiment.work.mixture(1))
    out = tmp_path / "megatron"
    exported = run_cli("export", "--mixture", experiment.work.mixture(1), "--out", out, "--target-tokens", 10**6,
                       "--manifest", os.path.relpath(experiment.work.manifest, tmp_path), cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    prefixes, weights = megatron_get_blend_from_list(exported.stdout.split())
    by_prefix = {str(s.prefix): d for d in PIECES for s in manifest.train[d].shards}
    for domain, weight in mixture.weights.items():
        mine = [w for p, w in zip(prefixes, weights) if by_prefix[p] == domain]
        assert len(mine) == (len(manifest.train[domain].shards) if weight > 0 else 0)
        assert math.fsum(mine) == pytest.approx(weight, rel=1e-12, abs=1e-15)
    assert megatron_get_blend_from_list((out / "data_args.txt").read_text().split()) == (prefixes, weights)
    per_split = json.loads((out / "per_split_data_args.json").read_text())
    assert megatron_get_blend_from_list(per_split["train"]) == (prefixes, weights)
    assert per_split["test"] is None and megatron_get_blend_from_list(per_split["test"]) is None
    valid_prefixes, valid_weights = megatron_get_blend_from_list(per_split["valid"])
    assert math.fsum(valid_weights) == pytest.approx(1.0)
    assert all(os.path.isabs(p) and os.path.exists(p + ".idx") for p in valid_prefixes)
    notes = exported.stderr
    assert "--split 100,0,0" in notes and "no --split with it" in notes
    for domain, weight in mixture.weights.items():
        epochs = weight * 10**6 / manifest.train[domain].tokens
        assert f"{domain}: weight {weight:.6g}, {manifest.train[domain].tokens:,} train tokens" in notes
        assert f"{epochs:.3g} epochs at 1,000,000 tokens" in notes


def test_valid_documents_are_the_ends_of_each_prefix_in_proportion(registered, megatron_corpus):
    manifest = Manifest.load(ExperimentConfig.load(registered).work.manifest)
    for domain in set(PIECES) - set(GIVEN_VALID):
        prefixes = sorted((megatron_corpus / domain).glob(f"{domain}_*_text_document.idx"))
        files = [documents_of(str(p)[:-4]) for p in prefixes]
        counts = register.holdout_counts([len(f) for f in files], VALID_DOCUMENTS)
        assert sum(counts) == VALID_DOCUMENTS
        expected_valid = [doc for f, k in zip(files, counts) for doc in f[len(f) - k :]]
        valid = documents_of(manifest.valid[domain].prefix)
        assert [d.tolist() for d in valid] == [d.tolist() for d in expected_valid]
        kept = {str(s.prefix): s.documents for s in manifest.train[domain].shards}
        assert kept == {str(p)[:-4]: len(f) - k for p, f, k in zip(prefixes, files, counts) if len(f) > k}


def test_token_prior_and_repetition_caps_come_from_the_manifest_counts(registered):
    experiment = ExperimentConfig.load(registered)
    manifest = Manifest.load(experiment.work.manifest)
    tokens = {d: sum(s.tokens for s in manifest.train[d].shards) for d in PIECES}
    assert manifest.token_prior() == pytest.approx({d: t / sum(tokens.values()) for d, t in tokens.items()})
    settings = dataclasses.replace(swarm_settings(experiment), proxy_tokens=10**6).resolved()
    draw_swarm(settings, experiment)
    record = json.loads(experiment.work.swarm.settings.read_text())
    assert record["prior"] == pytest.approx(manifest.token_prior())
    for domain, share in manifest.token_prior().items():  # the epoch cap binds: 4 x tokens / 10**6 < 15 x share
        bound = min(settings.cap * share, 1.0, settings.max_epochs * tokens[domain] / 10**6)
        assert record["max_weight"][domain] == pytest.approx(bound)
        assert bound == pytest.approx(settings.max_epochs * tokens[domain] / 10**6)
    dataset, _ = training_data(plan_run(train_config(experiment, 1), 1), rank=0)
    assert dict(zip(dataset.domains, dataset.samples_per_domain)) == {d: (t - 1) // 32 for d, t in tokens.items()}


def test_registering_again_writes_nothing_and_a_changed_prefix_re_registers_its_domain(registered, megatron_corpus):
    data = ExperimentConfig.load(registered).work.data.path
    before = {p.name: p.stat().st_mtime_ns for p in data.iterdir()}
    prepare(ExperimentConfig.load(registered))
    assert {p.name: p.stat().st_mtime_ns for p in data.iterdir()} == before

    touched = megatron_corpus / "chat" / "chat_0_text_document.bin"
    stat = touched.stat()
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    try:
        prepare(ExperimentConfig.load(registered))
    finally:
        os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after = {p.name: p.stat().st_mtime_ns for p in data.iterdir()}
    assert {name for name in after if after[name] != before[name]} == {"chat.prepared.json", "chat_valid.bin",
                                                                         "chat_valid.idx", "manifest.json"}


def test_token_ids_are_sampled_up_front_and_checked_as_read(megatron_corpus, tiny_manifest, tmp_path, monkeypatch):
    corpus = tmp_path / "corpus"
    shutil.copytree(megatron_corpus, corpus)
    bad = corpus / "chat" / "chat_1_text_document"
    documents = documents_of(bad)
    documents[len(documents) // 2][3] = 600  # the tiny tokenizer has 512 tokens
    write_indexed(bad, documents, np.uint16)
    config = ExperimentConfig.load(experiment_on(corpus, tmp_path / "exp", tiny_manifest))
    with pytest.raises(RegmixError, match=r"token id 600 \(token [\d,]+\) is outside the vocabulary \[0, 512\) "
                                          "of data.tokenizer") as err:
        prepare(config)
    assert err.value.where == f"{bad}.bin" and not config.work.root.exists()

    # Only the ends sampled: registration passes, and the sampler names the very file when it reads the id.
    monkeypatch.setattr(register, "SAMPLE_WINDOWS", 0)
    monkeypatch.setattr(register, "WINDOW_TOKENS", 2)
    manifest = prepare(config)
    streams = {d: open_split(manifest.train[d]) for d in PIECES}
    assert isinstance(streams["chat"], ConcatenatedTokens)
    everything = {d: 1.0 if d == "chat" else 0.0 for d in PIECES}
    blend = BlendedDataset(streams, Mixture.from_weights(everything), seq_len=32, seed=0, num_samples=10**4,
                           max_epochs=math.inf, vocab_size=512)
    with pytest.raises(RegmixError, match="token id 600 is outside the vocabulary") as err:
        for start in range(0, 10**4, 256):
            blend.__getitems__(list(range(start, start + 256)))
    assert err.value.where == f"{bad}.bin"


def test_concatenated_prefixes_index_like_one_array():
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 100, size=n).astype(np.uint16) for n in (5, 0, 17, 1, 9)]
    stream = ConcatenatedTokens(parts, [f"p{i}.bin" for i in range(len(parts))])
    whole = np.concatenate(parts)
    index = rng.integers(0, whole.size, size=(7, 11))
    assert len(stream) == whole.size and stream.dtype == np.uint16
    assert np.array_equal(stream[index], whole[index])
    assert [stream.source_of(i) for i in (0, 4, 5, 21, 22, 23, 31)] == ["p0.bin"] * 2 + ["p2.bin"] * 2 + \
        ["p3.bin", "p4.bin", "p4.bin"]
    with pytest.raises(IndexError):
        stream[np.array([whole.size])]


BAD_SPECS = {
    "a glob matching nothing": (lambda c: {"prefixes": [str(c / "news" / "nothing_*")]},
                                "prefixes: no Megatron shards match"),
    "a missing prefix": (lambda c: {"prefixes": [str(c / "news" / "absent_text_document")]},
                         "absent_text_document.idx: index file not found"),
    "a prefix twice": (lambda c: {"prefixes": [str(c / "news" / "news_*"), str(c / "news" / "news_0_text_document")]},
                       "news_0_text_document is listed twice"),
    "valid among train": (lambda c: {"prefixes": [str(c / "news" / "news_*")],
                                     "valid_prefixes": [str(c / "news" / "news_1_text_document")]},
                          "is also a train prefix"),
    "too few documents": (lambda c: {"prefixes": [str(c / "math" / "math_0_text_document")]},
                          "documents leave none for training after data.valid_documents=1000"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_shard_sources_are_one_line_errors_and_write_nothing(megatron_corpus, tiny_manifest, tmp_path, case):
    spec, message = BAD_SPECS[case]
    config = experiment_on(megatron_corpus, tmp_path / "exp", tiny_manifest, valid_documents=1000)
    raw = yaml.safe_load(config.read_text())
    raw["data"]["domains"] = {"news": spec(megatron_corpus)}
    raw["data"].pop("targets")
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(RegmixError, match=message) as err:
        prepare(ExperimentConfig.load(config))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "exp" / "work").exists()
