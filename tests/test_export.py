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
