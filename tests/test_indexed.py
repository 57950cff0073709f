"""Megatron-core indexed files: read files built byte by byte from the format, write the same bytes."""
import os
import shutil
import stat
import struct
from pathlib import Path

import numpy as np
import pytest

from regmix_ds.core.errors import RegmixError
from regmix_ds.data.indexed import IndexedDataset, IndexedWriter, dtype_for_vocab, read_header, write_indexed

ROOT = Path(__file__).resolve().parents[1]
DOCS = [[5, 6, 7, 0], [9, 0], [1, 2, 3, 4, 65000, 0]]


def megatron_bytes(sequences, dtype_code, numpy_dtype, document_indices=None):
    """The .bin and .idx Megatron-LM's `_IndexWriter` produces, built here from the format alone."""
    if document_indices is None:
        document_indices = list(range(len(sequences) + 1))
    itemsize = np.dtype(numpy_dtype).itemsize
    lengths = [len(s) for s in sequences]
    pointers = [sum(lengths[:i]) * itemsize for i in range(len(lengths))]
    idx = b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", dtype_code)
    idx += struct.pack("<Q", len(sequences)) + struct.pack("<Q", len(document_indices))
    idx += struct.pack(f"<{len(lengths)}i", *lengths)
    idx += struct.pack(f"<{len(pointers)}q", *pointers)
    idx += struct.pack(f"<{len(document_indices)}q", *document_indices)
    fmt = {1: "B", 4: "i", 8: "H"}[dtype_code]
    data = b"".join(struct.pack(f"<{len(s)}{fmt}", *s) for s in sequences)
    return data, idx


def write_pair(prefix, data, idx):
    prefix.with_name(prefix.name + ".bin").write_bytes(data)
    prefix.with_name(prefix.name + ".idx").write_bytes(idx)
    return prefix


@pytest.fixture
def megatron_uint16(tmp_path):
    return write_pair(tmp_path / "mega", *megatron_bytes(DOCS, 8, np.uint16))


def test_reads_a_byte_built_megatron_file(megatron_uint16):
    dataset = IndexedDataset(megatron_uint16)
    assert len(dataset) == 3
    assert dataset.dtype == np.uint16
    assert dataset.num_tokens == sum(map(len, DOCS))
    for i, doc in enumerate(DOCS):
        assert dataset[i].tolist() == doc
    assert dataset[-1].tolist() == DOCS[-1]
    assert dataset.tokens.tolist() == [t for doc in DOCS for t in doc]
    assert isinstance(dataset.tokens, np.memmap)
    assert dataset.document_lengths.tolist() == [4, 2, 6]
    with pytest.raises(IndexError):
        dataset[3]


def test_reads_int32_and_multi_sentence_documents(tmp_path):
    # preprocess_data.py --split-sentences: document 0 is sequences 0 and 1.
    sequences = [[100000, 1], [2], [70000, 3, 0]]
    prefix = write_pair(tmp_path / "sent", *megatron_bytes(sequences, 4, np.int32, document_indices=[0, 2, 3]))
    dataset = IndexedDataset(prefix)
    assert dataset.dtype == np.int32
    assert len(dataset) == 2
    assert dataset[0].tolist() == [100000, 1, 2]
    assert dataset[1].tolist() == [70000, 3, 0]


@pytest.mark.parametrize(("vocab", "dtype"),
                         [(1024, np.uint16), (65499, np.uint16), (65500, np.int32), (128256, np.int32)])
def test_dtype_follows_megatron_threshold(vocab, dtype):
    assert dtype_for_vocab(vocab) == np.dtype(dtype)


@pytest.mark.parametrize(("dtype", "code"), [(np.uint16, 8), (np.int32, 4), (np.uint8, 1)])
def test_writer_produces_megatron_bytes(tmp_path, dtype, code):
    docs = [[t % 250 for t in doc] for doc in DOCS] if dtype == np.uint8 else DOCS
    write_indexed(tmp_path / "ours", docs, dtype)
    data, idx = megatron_bytes(docs, code, dtype)
    assert (tmp_path / "ours.bin").read_bytes() == data
    assert (tmp_path / "ours.idx").read_bytes() == idx


def test_batched_documents_match_single_ones(tmp_path):
    flat = np.array([t for doc in DOCS for t in doc], dtype=np.uint16)
    with IndexedWriter(tmp_path / "batched", np.uint16) as writer:
        writer.add_documents(flat[:6], np.array([4, 2]))
        writer.add_documents(flat[6:], np.array([6]))
    assert (writer.num_tokens, writer.num_documents) == (12, 3)
    write_indexed(tmp_path / "single", DOCS, np.uint16)
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"batched{suffix}").read_bytes() == (tmp_path / f"single{suffix}").read_bytes()


def test_empty_dataset_round_trips(tmp_path):
    write_indexed(tmp_path / "empty", [], np.uint16)
    dataset = IndexedDataset(tmp_path / "empty")
    assert len(dataset) == 0 and dataset.num_tokens == 0


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), IndexedWriter(tmp_path / "crash", np.uint16) as writer:
        writer.add_document([1, 2, 3])
        raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []


def test_rewrite_replaces_the_old_pair(tmp_path):
    write_indexed(tmp_path / "shard", DOCS, np.uint16)
    write_indexed(tmp_path / "shard", [[4, 4]], np.uint16)
    dataset = IndexedDataset(tmp_path / "shard")
    assert len(dataset) == 1 and dataset[0].tolist() == [4, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard.bin", "shard.idx"]


def test_token_too_large_for_dtype_writes_nothing(tmp_path):
    with pytest.raises(RegmixError, match="does not fit in uint16"):
        write_indexed(tmp_path / "big", [[1, 70000]], np.uint16)
    assert list(tmp_path.iterdir()) == []


def corrupt(prefix, suffix, edit):
    path = prefix.with_name(prefix.name + suffix)
    path.write_bytes(edit(path.read_bytes()))
    return path


def idx_field(offset, fmt, value):
    return lambda raw: raw[:offset] + struct.pack(fmt, value) + raw[offset + struct.calcsize(fmt) :]


# Offsets in the .idx: magic 0-8, version 9, dtype 17, sequences 18, documents 26, lengths 34, ...
BAD_FILES = {
    "wrong magic": (".idx", lambda raw: b"NOTANIDX\x00" + raw[9:], "not a Megatron index"),
    "bad version": (".idx", idx_field(9, "<Q", 2), "unsupported index version 2"),
    "unknown dtype": (".idx", idx_field(17, "<B", 9), "unknown dtype code 9"),
    "truncated idx": (".idx", lambda raw: raw[:-5], "truncated index"),
    "idx shorter than header": (".idx", lambda raw: raw[:20], "truncated index"),
    "idx with trailing bytes": (".idx", lambda raw: raw + b"\x00", "trailing bytes"),
    "multimodal index": (".idx", lambda raw: raw + bytes([0, 1, 0]), "multimodal shards are not supported"),
    "sequence count lies": (".idx", idx_field(18, "<Q", 4), "truncated index"),
    "pointer off": (".idx", idx_field(34 + 3 * 4 + 8, "<q", 10), "pointers do not follow"),
    "document indices end early": (".idx", idx_field(34 + 3 * 12 + 3 * 8, "<q", 2), "document indices run 0..2"),
    "negative length": (".idx", idx_field(34, "<i", -4), "negative sequence length"),
    "document count lies": (".idx", idx_field(26, "<Q", 9), "truncated index"),
    "first length corrupt": (".idx", idx_field(34, "<i", 5), "pointers do not follow"),
    "truncated bin": (".bin", lambda raw: raw[:-2], "truncated"),
    "bin too long": (".bin", lambda raw: raw + b"\x00\x00", "longer than its index says"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_is_a_one_line_error_naming_it(megatron_uint16, case):
    suffix, edit, problem = BAD_FILES[case]
    path = corrupt(megatron_uint16, suffix, edit)
    with pytest.raises(RegmixError, match=problem) as err:
        IndexedDataset(megatron_uint16)
    assert err.value.where == str(path)
    assert "\n" not in str(err.value)


HEADER_ONLY = sorted(set(BAD_FILES) - {"pointer off", "negative length", "first length corrupt"})
"""The damage `read_header` finds from the header, both sizes and the index's two ends (the other
three need the whole index, which a training run reads when it opens the shard)."""


@pytest.mark.parametrize("case", HEADER_ONLY)
def test_header_checks_find_damage_without_reading_the_index(megatron_uint16, case):
    suffix, edit, problem = BAD_FILES[case]
    path = corrupt(megatron_uint16, suffix, edit)
    with pytest.raises(RegmixError, match=problem) as err:
        read_header(megatron_uint16)
    assert err.value.where == str(path)


def test_header_counts_and_document_starts_match_the_full_index(tmp_path):
    sequences = [[100000, 1], [2], [70000, 3, 0], [4, 4]]
    prefix = write_pair(tmp_path / "sent", *megatron_bytes(sequences, 4, np.int32, document_indices=[0, 2, 3, 4]))
    header, dataset = read_header(prefix), IndexedDataset(prefix)
    assert (header.documents, header.tokens, header.sequences, header.dtype) == (3, 8, 4, np.int32)
    assert (header.documents, header.tokens) == (len(dataset), dataset.num_tokens)
    assert header.document_starts(0, 3).tolist() == [0, 3, 6, 8]
    assert header.document_starts(2, 2).tolist() == [6]
    assert header.tokens_at(3, 6).tolist() == dataset[1].tolist()


@pytest.mark.parametrize("missing", [".bin", ".idx"])
def test_missing_file_is_named(megatron_uint16, missing):
    path = megatron_uint16.with_name(megatron_uint16.name + missing)
    path.unlink()
    with pytest.raises(RegmixError, match="not found") as err:
        IndexedDataset(megatron_uint16)
    assert err.value.where == str(path)


@pytest.mark.parametrize("case", ["truncated bin", "truncated idx", "wrong magic", "first length corrupt"])
def test_a_damaged_shard_stops_training_before_it_starts(tiny_manifest, tmp_path, capsys, case):
    """Through a real start of train.py: exit 2 and one line naming the shard, before any output exists."""
    from regmix_ds.commands import train as trainer
    from regmix_ds.core.manifest import Manifest
    from regmix_ds.core.mixture import Mixture

    data = Path(shutil.copytree(tiny_manifest.parent, tmp_path / "data"))
    shutil.copytree(tiny_manifest.parent.parent / "tokenizer", tmp_path / "tokenizer")  # the manifest says ../tokenizer
    manifest = Manifest.load(data / "manifest.json")
    suffix, edit, problem = BAD_FILES[case]
    path = corrupt(manifest.train["code"].prefix, suffix, edit)
    mixture = tmp_path / "mixture.json"
    Mixture.from_weights(manifest.token_prior(), renormalize=True).save(mixture)
    out = tmp_path / "run"
    code = trainer.main(["--manifest", str(manifest.path), "--mixture", str(mixture), "--deepspeed_config",
                         str(ROOT / "ds_configs" / "zero0.json"), "--preset", "tiny", "--seq-len", "32",
                         "--steps", "4", "--out", str(out)])
    error = capsys.readouterr().err.strip()
    assert code == 2 and error.startswith(f"train.py: error: {path}: ") and problem in error
    assert "\n" not in error and not out.exists()


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_shards_follow_the_umask_like_any_other_output(tmp_path, umask):
    """A team's shared work dir: shards are not private 0600 files (mkstemp's mode) but what open() makes."""
    previous = os.umask(umask)
    try:
        with IndexedWriter(tmp_path / "shard", np.uint16) as writer:
            writer.add_document([1, 2, 3])
    finally:
        os.umask(previous)
    for suffix in (".bin", ".idx"):
        assert stat.S_IMODE((tmp_path / f"shard{suffix}").stat().st_mode) == 0o666 & ~umask
