"""Training and loading tokenizers offline."""
import json

import pytest

from regmix_ds.core.errors import RegmixError
from regmix_ds.data import tokenizer as tok

TEXTS = [f"doc {i}: the quick brown fox {i % 7} jumps over the lazy dog; lorem ipsum dolor" for i in range(300)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    tok.train_tokenizer(iter(TEXTS), 300, out, corpus_hash="abc")
    return out


def test_trained_tokenizer_round_trips_through_autotokenizer(trained):
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(trained)
    ours = tok.load_tokenizer("tokenizer", trained, "data.tokenizer")
    assert loaded.eos_token == tok.EOS_TOKEN and loaded.eos_token_id == ours.eos_token_id
    text = "the lazy fox 3 jumps, ünïcode too"
    ids = ours(text, add_special_tokens=False)["input_ids"]
    assert loaded(text, add_special_tokens=False)["input_ids"] == ids
    assert ours.decode(ids) == text  # byte-level: any text survives, even unseen characters
    assert len(ours) <= 300 and max(ids) < len(ours)


def test_training_is_deterministic_and_recorded(trained, tmp_path):
    again = tmp_path / "again"
    tok.train_tokenizer(iter(TEXTS), 300, again, corpus_hash="abc")
    assert (again / "tokenizer.json").read_bytes() == (trained / "tokenizer.json").read_bytes()
    assert tok.trained_tokenizer_is_current(trained, "abc", 300)
    assert not tok.trained_tokenizer_is_current(trained, "abd", 300)
    assert not tok.trained_tokenizer_is_current(trained, "abc", 512)
    assert not tok.trained_tokenizer_is_current(tmp_path / "nothing", "abc", 300)


def test_fingerprint_tells_tokenizers_apart(trained, tmp_path):
    other = tmp_path / "other"
    tok.train_tokenizer(iter(TEXTS), 280, other, corpus_hash="abc")
    first = tok.load_tokenizer("x", trained, "t")
    assert tok.fingerprint(first) == tok.fingerprint(tok.load_tokenizer("x", trained, "t"))
    assert tok.fingerprint(first) != tok.fingerprint(tok.load_tokenizer("x", other, "t"))


def test_retraining_replaces_only_our_own_directory(trained, tmp_path):
    target = tmp_path / "retrain"
    tok.train_tokenizer(iter(TEXTS), 300, target, corpus_hash="one")
    tok.check_can_train_into(target, "data.tokenizer")
    tok.train_tokenizer(iter(TEXTS[:50]), 280, target, corpus_hash="two")
    assert json.loads((target / tok.TRAINING_RECORD).read_text())["corpus_hash"] == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["retrain"]  # no staging leftovers
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "tokenizer.json").write_text("{}")
    with pytest.raises(RegmixError, match="not a tokenizer trained by regmix-ds"):
        tok.check_can_train_into(foreign, "data.tokenizer")


@pytest.mark.parametrize("spec", ["./no/such/dir", "/abs/missing"])
def test_missing_local_tokenizer_is_named(tmp_path, spec):
    with pytest.raises(RegmixError, match="not found") as err:
        tok.load_tokenizer(spec, tmp_path / spec, "data.tokenizer")
    assert err.value.where == "data.tokenizer"


def test_hub_name_unavailable_offline_is_one_line(tmp_path):
    with pytest.raises(RegmixError, match="cannot load tokenizer") as err:
        tok.load_tokenizer("no-such-org/no-such-tokenizer", tmp_path / "no-such-org/no-such-tokenizer",
                           "data.tokenizer")
    assert "\n" not in str(err.value)
