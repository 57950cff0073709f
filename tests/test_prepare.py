"""`prepare`: raw text -> Megatron shards + manifest; re-runnable; bad inputs write nothing."""
import json
import os
import shutil
from collections import Counter

import numpy as np
import pytest
import yaml

from regmix_ds.commands.main import main
from regmix_ds.core.config import ExperimentConfig
from regmix_ds.core.manifest import Manifest
from regmix_ds.data import prepare as prepare_module
from regmix_ds.data.indexed import IndexedDataset
from regmix_ds.data.prepare import prepare


def texts_of(path):
    return [json.loads(line)["text"] for line in path.read_text().splitlines()]


@pytest.fixture
def workspace(tiny_corpus_config, tiny_manifest, tmp_path):
    """A private copy of the prepared tiny corpus (mtimes kept, so it is still current)."""
    shutil.copytree(tiny_corpus_config.parent, tmp_path / "corpus", symlinks=True)
    return tmp_path / "corpus" / "exp.yaml"


def data_files(config_path):
    data = config_path.parent / "work" / "data"
    return {p.name: p.stat().st_mtime_ns for p in data.iterdir() if p.name != "manifest.json"}


def corpus_bytes(config_path):
    """Every file of the data directory but the writers' lock, by name: what a reader finds."""
    data = config_path.parent / "work" / "data"
    return {p.name: p.read_bytes() for p in data.iterdir() if p.name != ".prepare.lock"}


def decode_documents(dataset, tokenizer):
    eos = tokenizer.eos_token_id
    documents = []
    for i in range(len(dataset)):
        ids = dataset[i].tolist()
        assert ids[-1] == eos and eos not in ids[:-1]
        documents.append(tokenizer.decode(ids[:-1]))
    return documents


def test_manifest_describes_every_shard(tiny_corpus_config, tiny_manifest, tokenizer):
    manifest = Manifest.load(tiny_manifest)
    config = ExperimentConfig.load(tiny_corpus_config)
    assert manifest.domains == tuple(config.data.domains)
    assert manifest.targets == ("target",)
    assert manifest.tokenizer["path"] == "../tokenizer"
    assert manifest.vocab_size == len(tokenizer) == 512
    assert manifest.tokenizer["eos_token_id"] == tokenizer.eos_token_id
    for name in manifest.valid:
        splits = [manifest.valid[name]] + ([manifest.train[name]] if name in manifest.train else [])
        for split in splits:
            shard = IndexedDataset(split.prefix)
            assert shard.dtype == np.uint16
            assert (shard.num_tokens, len(shard)) == (split.tokens, split.documents)
    assert manifest.valid["news"].documents == config.data.valid_documents
    assert manifest.train["news"].documents == 240 - config.data.valid_documents
    assert manifest.valid["target"].documents == 60


def test_shards_decode_to_the_input_documents(tiny_corpus_config, tiny_manifest, tokenizer):
    manifest = Manifest.load(tiny_manifest)
    for name in ("code", "chat"):
        decoded = [d for kind in ("train", "valid")
                   for d in decode_documents(IndexedDataset(getattr(manifest, kind)[name].prefix), tokenizer)]
        assert Counter(decoded) == Counter(texts_of(tiny_corpus_config.parent / f"{name}.jsonl"))
    target = decode_documents(IndexedDataset(manifest.valid["target"].prefix), tokenizer)
    assert target == texts_of(tiny_corpus_config.parent / "target.jsonl")  # a target keeps its order


def test_rerun_skips_current_domains_and_rebuilds_changed_ones(workspace):
    before = data_files(workspace)
    prepare(ExperimentConfig.load(workspace), train_tokenizer=True)
    assert data_files(workspace) == before

    news = workspace.parent / "news.jsonl"
    with news.open("a") as handle:
        handle.write(json.dumps({"text": "Fresh news document."}) + "\n")
    manifest = prepare(ExperimentConfig.load(workspace))
    after = data_files(workspace)
    changed = {name for name in after if after[name] != before[name]}
    assert changed == {"news_train.bin", "news_train.idx", "news_valid.bin", "news_valid.idx", "news.prepared.json"}
    assert manifest.train["news"].documents + manifest.valid["news"].documents == 241


def test_moved_experiment_is_still_current(workspace, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(workspace.parent, moved)
    before = data_files(moved / "exp.yaml")
    prepare(ExperimentConfig.load(moved / "exp.yaml"), train_tokenizer=True)
    assert data_files(moved / "exp.yaml") == before


def test_a_work_dir_of_the_first_manifest_format_loads_and_stays_current(workspace):
    data = workspace.parent / "work" / "data"
    for stamp in data.glob("*.prepared.json"):  # stamps and manifest as the first format wrote them
        content = json.loads(stamp.read_text())
        content["splits"] = {kind: {"prefix": entry["prefixes"][0]["prefix"], "tokens": entry["tokens"],
                                    "documents": entry["documents"]} for kind, entry in content["splits"].items()}
        stamp.write_text(json.dumps(content))
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["format"] = "regmix-ds/manifest-1"
    for entry in [*manifest["domains"].values(), *manifest["targets"].values()]:
        for kind in ("train", "valid"):
            if kind in entry:
                entry[kind] = {"prefix": entry[kind]["prefixes"][0]["prefix"], "tokens": entry[kind]["tokens"],
                               "documents": entry[kind]["documents"]}
    (data / "manifest.json").write_text(json.dumps(manifest))
    old = Manifest.load(data / "manifest.json")
    assert old.train["news"].prefix == data / "news_train"

    shards = {p.name: p.stat().st_mtime_ns for p in data.glob("*.[bi][id][nx]")}
    assert prepare(ExperimentConfig.load(workspace)) == old
    assert {p.name: p.stat().st_mtime_ns for p in data.glob("*.[bi][id][nx]")} == shards
    assert json.loads((data / "manifest.json").read_text())["format"] == "regmix-ds/manifest-2"


def test_forced_rebuild_is_byte_identical(workspace):
    data = workspace.parent / "work" / "data"
    before = {p.name: p.read_bytes() for p in data.glob("*.[bi][id][nx]")}
    prepare(ExperimentConfig.load(workspace), force=True)
    assert {p.name: p.read_bytes() for p in data.glob("*.[bi][id][nx]")} == before


def test_a_crash_midway_leaves_the_old_corpus_whole(workspace, monkeypatch):
    corpus = workspace.parent
    for path in corpus.glob("*.jsonl"):
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    before = corpus_bytes(workspace)
    real_write_split, calls = prepare_module.write_split, []

    def write_split_then_die(*args, **kwargs):
        calls.append(args[2])
        if len(calls) == 3:  # news train+valid staged, dies writing code's train split
            raise KeyboardInterrupt
        return real_write_split(*args, **kwargs)

    monkeypatch.setattr(prepare_module, "write_split", write_split_then_die)
    with pytest.raises(KeyboardInterrupt):
        prepare(ExperimentConfig.load(workspace))
    assert len(calls) == 3
    assert corpus_bytes(workspace) == before  # manifest, stamps and shards: the old ones, nothing staged left
    monkeypatch.setattr(prepare_module, "write_split", real_write_split)

    manifest = prepare(ExperimentConfig.load(workspace))
    assert corpus_bytes(workspace)["manifest.json"] != before["manifest.json"]  # the new inputs' hashes
    for split in [*manifest.train.values(), *manifest.valid.values()]:
        assert IndexedDataset(split.prefix).num_tokens == split.tokens


def write_config(tmp_path, tokenizer_dir, domains, targets=None, **data):
    config = {"work_dir": "work",
              "data": {"tokenizer": str(tokenizer_dir), "valid_documents": 2, "domains": domains, **data}}
    if targets:
        config["data"]["targets"] = targets
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def write_file(path, text):
    path.write_text(text)
    return path.name


def write_jsonl(path, rows):
    return write_file(path, "".join(json.dumps(row) + "\n" for row in rows))


def test_reads_parquet_txt_saved_datasets_and_other_fields(tmp_path, tokenizer_dir, tokenizer):
    import datasets

    datasets.Dataset.from_dict({"body": [f"parquet doc {i}" for i in range(5)]}).to_parquet(tmp_path / "a.parquet")
    (tmp_path / "b.txt").write_text("line one\n\n   \nline two\nline three\n")
    datasets.Dataset.from_dict({"text": [f"saved {i}" for i in range(4)]}).save_to_disk(str(tmp_path / "saved"))
    part1 = write_jsonl(tmp_path / "c1.jsonl", [{"content": "first"}, {"content": "second"}])
    part2 = write_jsonl(tmp_path / "c2.jsonl", [{"content": "third"}, {"content": ""}, {"content": None}])
    config = write_config(
        tmp_path,
        tokenizer_dir,
        {
            "pq": {"paths": ["a.parquet"], "text_field": "body"},
            "txt": {"paths": ["b.txt"]},
            "saved": {"paths": ["saved"]},
        },
        targets={"multi": {"paths": [part1, part2], "text_field": "content"}},
    )
    manifest = prepare(ExperimentConfig.load(config))
    counts = {name: manifest.valid[name].documents + (manifest.train[name].documents if name in manifest.train else 0)
              for name in manifest.valid}
    assert counts == {"pq": 5, "txt": 3, "saved": 4, "multi": 3}  # empty and whitespace-only documents dropped
    multi = decode_documents(IndexedDataset(manifest.valid["multi"].prefix), tokenizer)
    assert multi == ["first", "second", "third"]


def test_parallel_map_gives_the_same_shards(tmp_path, tokenizer_dir):
    enough_for_two_workers = 2 * prepare_module.MIN_BATCHES_PER_WORKER * prepare_module.MAP_BATCH_DOCUMENTS
    name = write_jsonl(tmp_path / "many.jsonl", [{"text": f"doc {i}"} for i in range(enough_for_two_workers)])
    shards = {}
    for num_proc in (1, 2):
        work = tmp_path / f"w{num_proc}"
        work.mkdir()
        shutil.copy(tmp_path / name, work / name)
        prepare(ExperimentConfig.load(write_config(work, tokenizer_dir, {"many": {"paths": [name]}},
                                                   num_proc=num_proc)))
        shards[num_proc] = [(work / "work" / "data" / f"many_{s}.{x}").read_bytes()
                            for s in ("train", "valid") for x in ("bin", "idx")]
    assert shards[1] == shards[2]


def test_cli_prepares_and_reports(workspace, capsys):
    assert main(["prepare", "--config", str(workspace)]) == 0
    assert "6 domains" in capsys.readouterr().out


def error_line(stderr):
    """The error itself: the last line, after any progress bars; no traceback anywhere."""
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith("regmix-ds prepare: error: ") and "Traceback" not in stderr
    return lines[-1]


GOOD = [{"text": f"good document number {i}"} for i in range(5)]
BAD_INPUTS = {
    "missing input file": (lambda d: {"paths": ["nope.jsonl"]}, {}, "nope.jsonl: input file not found"),
    "empty file": (lambda d: {"paths": [write_file(d / "e.jsonl", "")]}, {}, "e.jsonl: empty file"),
    "no text": (lambda d: {"paths": [write_jsonl(d / "t.jsonl", [{"text": " "}, {"text": ""}])]}, {},
                "t.jsonl: no text"),
    "missing text field": (lambda d: {"paths": [write_jsonl(d / "f.jsonl", [{"body": "x"}])]}, {},
                           "f.jsonl: no text field 'text'"),
    "text field not text": (lambda d: {"paths": [write_jsonl(d / "i.jsonl", [{"text": 3}])]}, {},
                            "i.jsonl: field 'text' holds"),
    "malformed json": (lambda d: {"paths": [write_file(d / "m.jsonl", '{"text": "a"\n')]}, {}, "m.jsonl: cannot read"),
    "unknown kind": (lambda d: {"paths": [write_file(d / "x.csv", "a,b\n")]}, {}, "x.csv: unknown input kind"),
    "too few documents": (lambda d: {"paths": [write_jsonl(d / "s.jsonl", GOOD[:2])]}, {},
                          "s.jsonl: 2 non-empty documents leave none"),
    "unknown config key": (lambda d: {"paths": ["good.jsonl"]}, {"bogus": 1}, "unknown key(s) bogus"),
    "tokenizer path missing": (lambda d: {"paths": ["good.jsonl"]}, {"tokenizer": "./missing_tok"},
                               "data.tokenizer: tokenizer directory"),
    "not a saved dataset": (lambda d: {"paths": [(d / "dir").mkdir() or "dir"]}, {}, "dir: directory is not a saved"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, tokenizer_dir, capsys, case):
    make_source, extra, message = BAD_INPUTS[case]
    good = write_jsonl(tmp_path / "good.jsonl", GOOD)
    config = write_config(tmp_path, tokenizer_dir, {"fine": {"paths": [good]}, "broken": make_source(tmp_path)},
                          **extra)
    assert main(["prepare", "--config", str(config)]) == 2
    assert message in error_line(capsys.readouterr().err)
    assert not (tmp_path / "work").exists()


def test_bad_input_after_a_good_run_leaves_old_outputs(workspace, capsys):
    data = workspace.parent / "work" / "data"
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    (workspace.parent / "chat.jsonl").write_text('{"text": "broken\n')
    assert main(["prepare", "--config", str(workspace)]) == 2
    assert "chat.jsonl: cannot read" in error_line(capsys.readouterr().err)
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before


def test_train_tokenizer_refuses_a_foreign_directory(tmp_path, capsys):
    good = write_jsonl(tmp_path / "good.jsonl", GOOD)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    config = write_config(tmp_path, tmp_path / "mine", {"fine": {"paths": [good]}})
    assert main(["prepare", "--config", str(config), "--train-tokenizer"]) == 2
    assert "not a tokenizer trained by regmix-ds" in error_line(capsys.readouterr().err)
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
    assert not (tmp_path / "work").exists()


@pytest.mark.slow
def test_prepare_killed_at_any_instant_leaves_the_old_corpus_or_the_new(workspace, tmp_path):
    from tests.kills import kill_everywhere

    corpus = workspace.parent
    data, saved = corpus / "work" / "data", tmp_path / "saved-data"
    shutil.copytree(data, saved)
    changed = {}
    for name in ("news.jsonl", "target.jsonl"):  # a domain (train and valid shards) and a target set (valid only)
        path = corpus / name
        changed[path] = ("".join(path.read_text().splitlines(keepends=True)[1:]), path.stat().st_mtime_ns + 10**9)

    def reset():
        shutil.rmtree(data)
        shutil.copytree(saved, data)
        for path, (text, mtime) in changed.items():
            path.write_text(text)
            os.utime(path, ns=(mtime, mtime))  # the stamps record mtimes: every run must see the same ones

    config = ExperimentConfig.load(workspace)
    outputs = [data / path.name for path in saved.iterdir()]
    assert kill_everywhere(lambda: prepare(config), outputs, reset) >= 20
