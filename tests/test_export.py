import json

import pytest

from regmix_ds.commands.main import main
from regmix_ds.core.errors import RegmixError
from regmix_ds.core.manifest import FORMAT, Manifest
from regmix_ds.core.mixture import Mixture
from regmix_ds.data.export import megatron_data_path


def write_manifest(directory, domains):
    def split(name):
        return {"prefix": f"data/{name}", "tokens": 100, "documents": 1}

    path = directory / "manifest.json"
    path.write_text(json.dumps({
        "format": FORMAT, "tokenizer": {"path": "tok", "vocab_size": 8, "eos_token_id": 0}, "seed": 0,
        "domains": {d: {"train": split(f"{d}_train"), "valid": split(f"{d}_valid")} for d in domains},
    }))
    return path


def test_megatron_pairs_follow_manifest_order_and_skip_zeros(tmp_path, capsys):
    manifest = write_manifest(tmp_path, ["web", "code", "math"])
    best = tmp_path / "best.json"
    Mixture.from_weights({"math": 0.25, "code": 0.0, "web": 0.75}).save(best, predicted_target=3.2)
    assert main(["export", "--format", "megatron", "--mixture", str(best), "--manifest", str(manifest)]) == 0
    words = capsys.readouterr().out.split()
    assert words == ["0.75", str(tmp_path / "data/web_train"), "0.25", str(tmp_path / "data/math_train")]


def test_weights_keep_full_precision(tmp_path):
    manifest = Manifest.load(write_manifest(tmp_path, ["a", "b"]))
    mixture = Mixture.from_weights({"a": 1 / 3, "b": 2 / 3})
    pairs = megatron_data_path(mixture, manifest)
    assert float(pairs[0]) == 1 / 3 and float(pairs[2]) == 2 / 3


def test_mixture_must_name_the_manifest_domains(tmp_path, capsys):
    manifest = write_manifest(tmp_path, ["a", "b"])
    best = tmp_path / "best.json"
    Mixture.from_weights({"a": 0.5, "c": 0.5}).save(best)
    assert main(["export", "--mixture", str(best), "--manifest", str(manifest)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown domain(s) c" in err
    with pytest.raises(RegmixError, match="lacks domain"):
        megatron_data_path(Mixture.from_weights({"a": 1.0}), Manifest.load(manifest))


def write_sharded_manifest(directory):
    """Format-2 manifest: web in two prefixes (300 + 100 tokens) and an empty one, code in one; relative prefixes."""
    def split(*shards):
        entries = [{"prefix": f"data/{name}", "tokens": tokens, "documents": tokens // 10} for name, tokens in shards]
        return {"tokens": sum(t for _, t in shards), "documents": sum(t // 10 for _, t in shards), "prefixes": entries}

    path = directory / "manifest.json"
    path.write_text(json.dumps({
        "format": FORMAT, "tokenizer": {"path": "tok", "vocab_size": 8, "eos_token_id": 0}, "seed": 0,
        "domains": {
            "web": {"train": split(("web_0", 300), ("web_1", 100), ("web_2", 0)), "valid": split(("web_v", 50))},
            "code": {"train": split(("code_0", 100)), "valid": split(("code_v", 20))},
        },
    }))
    return path


def test_a_domain_weight_is_split_over_its_prefixes_by_tokens_with_absolute_paths(tmp_path, monkeypatch, capsys):
    write_sharded_manifest(tmp_path)
    best = tmp_path / "best.json"
    Mixture.from_weights({"web": 0.75, "code": 0.25}).save(best)
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--mixture", "best.json", "--manifest", "manifest.json", "--out", "megatron",
                 "--target-tokens", "800"]) == 0
    out, notes = capsys.readouterr()
    words = out.split()
    assert words == ["0.5625", str(tmp_path / "data/web_0"), "0.1875", str(tmp_path / "data/web_1"),
                     "0.25", str(tmp_path / "data/code_0")]
    assert (tmp_path / "megatron" / "data_args.txt").read_text().split() == words
    per_split = json.loads((tmp_path / "megatron" / "per_split_data_args.json").read_text())
    assert per_split == {"train": words, "test": None,
                         "valid": ["0.75", str(tmp_path / "data/web_v"), "0.25", str(tmp_path / "data/code_v")]}
    assert "web: weight 0.75, 400 train tokens in 3 prefix(es): 1.5 epochs at 800 tokens" in notes
    assert "code: weight 0.25, 100 train tokens in 1 prefix(es): 2 epochs at 800 tokens" in notes
    assert f"--data-args-path {tmp_path / 'megatron' / 'data_args.txt'} --split 100,0,0" in notes
    assert f"--per-split-data-args-path {tmp_path / 'megatron' / 'per_split_data_args.json'} (train and valid " \
           "blends; no --split with it)" in notes


def test_a_manifest_of_the_first_format_still_exports(tmp_path):
    manifest = write_manifest(tmp_path, ["a", "b"])
    data = json.loads(manifest.read_text())
    data["format"] = "regmix-ds/manifest-1"
    manifest.write_text(json.dumps(data))
    loaded = Manifest.load(manifest)
    assert loaded.train["a"].prefix == tmp_path / "data/a_train" and loaded.train["a"].tokens == 100
    assert megatron_data_path(Mixture.from_weights({"a": 0.5, "b": 0.5}), loaded)[1] == str(tmp_path / "data/a_train")
