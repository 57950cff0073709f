"""`data.shard_by: file`: one tokenize task and one shard per input file (or chunk), the tasks run in
any order or again, a killed one redone to the same bytes, and a merge that writes the manifest."""
import json
import os
import shutil
import signal
from collections import Counter

import numpy as np
import pytest
import yaml

from regmix_ds.core.config import ExperimentConfig
from regmix_ds.core.manifest import Manifest
from regmix_ds.data import parts
from regmix_ds.data.indexed import IndexedDataset
from regmix_ds.data.prepare import prepare, resolve_sources, run_array_task
from tests.helpers import run_cli


def texts_of(path):
    return [json.loads(line)["text"] for line in path.read_text().splitlines()]


def decoded(prefixes, tokenizer):
    """Every document of these shards, decoded, EOS checked and stripped."""
    documents = []
    for prefix in prefixes:
        dataset = IndexedDataset(prefix)
        for i in range(len(dataset)):
            ids = dataset[i].tolist()
            assert ids[-1] == tokenizer.eos_token_id
            documents.append(tokenizer.decode(ids[:-1]))
    return documents


def per_file_config(directory, tokenizer_dir, domains, targets=None, **data):
    config = {"work_dir": "work", "data": {"tokenizer": str(tokenizer_dir), "valid_documents": 6,
                                           "shard_by": "file", "domains": domains, **data}}
    if targets:
        config["data"]["targets"] = targets
    path = directory / "exp.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def write_jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return str(path)


@pytest.fixture(scope="module")
def file_mode(tiny_corpus_config, tiny_manifest, tmp_path_factory):
    """The tiny corpus prepared with shard_by: file, its larger jsonl files cut into 60 kB chunks."""
    root = tmp_path_factory.mktemp("file_mode")
    shutil.copytree(tiny_corpus_config.parent, root, dirs_exist_ok=True, symlinks=True)
    config = yaml.safe_load((root / "exp.yaml").read_text())
    config["work_dir"] = "work_file"
    config["data"].update(shard_by="file", chunk_bytes=60_000)
    (root / "exp.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    experiment = ExperimentConfig.load(root / "exp.yaml")
    return experiment, prepare(experiment)


def test_chunks_hold_every_line_once(tmp_path, tokenizer_dir):
    lines = [json.dumps({"text": "x" * n}) + "\n" for n in (3, 70, 1, 0, 150, 9, 40)]
    (tmp_path / "a.jsonl").write_text("".join(lines))
    for chunk in (1, 7, 64, 200, 10_000):
        experiment = ExperimentConfig.load(per_file_config(tmp_path, tokenizer_dir, {"a": {"paths": ["a.jsonl"]}},
                                                           chunk_bytes=chunk))
        tasks = parts.plan_tasks(experiment, resolve_sources(experiment))
        pieces = []
        for task in tasks:
            scratch = tmp_path / f"scratch-{chunk}"
            parts.clear(scratch)
            file = parts.task_input(task, scratch)
            pieces.append("" if file is None else file.read_text())
        assert "".join(pieces) == "".join(lines), chunk
        assert [t.index for t in tasks] == list(range(1, len(tasks) + 1))
        assert sum(t.valid for t in tasks) == 6


def test_every_document_lands_once_and_validation_is_drawn_per_task(file_mode, tokenizer):
    experiment, manifest = file_mode
    corpus = experiment.resolve(".")
    tasks = parts.plan_tasks(experiment, resolve_sources(experiment))
    assert len(tasks) > len(manifest.valid)  # some files were cut into chunks
    for name in manifest.domains:
        train = decoded([s.prefix for s in manifest.train[name].shards], tokenizer)
        valid = decoded([s.prefix for s in manifest.valid[name].shards], tokenizer)
        assert Counter(train) + Counter(valid) == Counter(texts_of(corpus / f"{name}.jsonl"))
        assert len(valid) == experiment.data.valid_documents
        mine = parts.parts_of(tasks, name)
        assert len(manifest.train[name].shards) == len(mine)
        stamps = [json.loads(experiment.work.data.part_stamp(name, t.part).read_text()) for t in mine]
        held = [stamp["splits"].get("valid", {"documents": 0})["documents"] for stamp in stamps]
        assert held == [t.valid for t in mine]  # each task holds out its share of the bytes
    target = decoded([s.prefix for s in manifest.valid["target"].shards], tokenizer)
    assert target == texts_of(corpus / "target.jsonl")  # a target keeps its order


def test_tasks_merge_when_the_last_one_finishes_and_running_them_again_does_nothing(tmp_path, tokenizer_dir):
    domains = {"web": {"paths": [write_jsonl(tmp_path / f"web{i}.jsonl", [f"web {i} page {j}" for j in range(9)])
                                 for i in range(3)]},
               "code": {"paths": [write_jsonl(tmp_path / "code.jsonl", [f"def f{j}(): pass" for j in range(12)])]}}
    experiment = ExperimentConfig.load(per_file_config(tmp_path, tokenizer_dir, domains))
    order = [3, 1, 4, 2]
    for index in order[:-1]:
        report = run_array_task(experiment, index)
        assert report.wrote and report.manifest is None and report.tasks == 4
    assert not experiment.work.manifest.exists()
    last = run_array_task(experiment, order[-1])
    assert last.manifest is not None and last.manifest.domains == ("web", "code")
    assert len(last.manifest.train["web"].shards) == 3
    data = experiment.work.data.path
    before = {str(p): p.stat().st_mtime_ns for p in data.rglob("*")}
    for index in order:
        again = run_array_task(experiment, index)
        assert not again.wrote and again.manifest == last.manifest
    assert {str(p): p.stat().st_mtime_ns for p in data.rglob("*")} == before


@pytest.mark.slow
def test_the_last_task_killed_at_any_instant_leaves_its_part_and_the_corpus_old_or_new(tmp_path, tokenizer_dir):
    from tests.kills import kill_everywhere

    domains = {name: {"paths": [write_jsonl(tmp_path / f"{name}.jsonl", [f"{name} text {j}" for j in range(12)])]}
               for name in ("web", "code")}
    experiment = ExperimentConfig.load(per_file_config(tmp_path, tokenizer_dir, domains))
    assert run_array_task(experiment, 1).manifest is None  # web's part; code's task (2) is the last
    data, saved = experiment.work.data.path, tmp_path / "saved"
    shutil.copytree(data, saved)

    def reset():
        shutil.rmtree(data)
        shutil.copytree(saved, data)

    part = [data / "code" / name for name in ("part-00000.json", "train-00000.bin", "train-00000.idx",
                                              "valid-00000.bin", "valid-00000.idx")]
    merged = [data / "manifest.json", *(data / f"{name}.prepared.json" for name in domains),
              *(data / f"{name}_valid.{kind}" for name in domains for kind in ("bin", "idx"))]
    assert kill_everywhere(lambda: run_array_task(experiment, 2), part, reset, also=[merged]) >= 20


def test_a_task_killed_mid_shard_is_redone_to_the_same_bytes(tmp_path, tokenizer_dir):
    many = [f"document {j} with a few words" for j in range(2500)]  # 3 map batches: 3 blocks in the shard
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    for directory in (killed, reference):
        directory.mkdir()
        domains = {"big": {"paths": [write_jsonl(directory / "big.jsonl", many)]},
                   "small": {"paths": [write_jsonl(directory / "small.jsonl", many[:40])]}}
        per_file_config(directory, tokenizer_dir, domains)
    prepare(ExperimentConfig.load(reference / "exp.yaml"))

    env = {**os.environ, "REGMIX_FAULT": "shard@2"}
    dead = run_cli("prepare", "--config", killed / "exp.yaml", "--task", 1, env=env)
    assert dead.returncode == -signal.SIGKILL, dead.stderr
    part_dir = killed / "work" / "data" / "big"
    assert [p.name for p in part_dir.iterdir() if p.name.startswith(".train-00000.bin.")]  # the half-staged .bin
    assert not (part_dir / "part-00000.json").exists() and not (part_dir / "train-00000.bin").exists()

    for task in (1, 2):
        done = run_cli("prepare", "--config", killed / "exp.yaml", "--task", task)
        assert done.returncode == 0, done.stderr
    assert "manifest.json: 2 domains" in done.stdout
    assert not list((killed / "work").rglob("*.stage")) and not list((killed / "work").rglob("*.tmp"))

    def shards(directory):
        data = directory / "work" / "data"
        return {str(p.relative_to(data)): p.read_bytes() for p in data.rglob("*") if p.suffix in (".bin", ".idx")}

    assert shards(killed) == shards(reference)
    assert len(Manifest.load(killed / "work" / "data" / "manifest.json").train["big"].shards) == 1
    assert np.array_equal(IndexedDataset(part_dir / "train-00000").tokens[:5],
                          IndexedDataset(reference / "work" / "data" / "big" / "train-00000").tokens[:5])
