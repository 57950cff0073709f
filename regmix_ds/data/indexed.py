"""Megatron-core indexed datasets: `<prefix>.bin` (token ids) + `<prefix>.idx` (where each document is).

The format is Megatron-LM's (`megatron/core/datasets/indexed_dataset.py`), so shards written
here train under Megatron and shards from its `preprocess_data.py` train here:

    .idx  b"MMIDIDX\\x00\\x00"            9-byte magic
          uint64 version = 1
          uint8  dtype code             (see DTYPE_CODES)
          uint64 sequence count S
          uint64 document-index count D + 1
          int32[S]   sequence lengths   (tokens)
          int64[S]   sequence pointers  (byte offsets into .bin)
          int64[D+1] document indices   (first sequence of each document, then S)
    .bin  every sequence's tokens, back to back, in the dtype

We write one sequence per document (document indices 0, 1, ..., S); Megatron files made with
`--split-sentences` have several sequences per document, and a document is then the
concatenation of its sequences. Megatron's multimodal shards append an int8 mode per sequence
after the document indices; they are refused by name.

Two ways in: `IndexedDataset` maps a shard and checks its whole index (what a training run opens);
`read_header` checks what the header and the two files' sizes promise with a few small reads, so
registering a terabyte of existing shards costs milliseconds per prefix. `open_split` gives a
manifest split's token stream, several prefixes read as one (`ConcatenatedTokens`).
"""
from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np

from regmix_ds.core import faults
from regmix_ds.core.errors import RegmixError
from regmix_ds.core.files import OutputSet, settle
from regmix_ds.core.manifest import Split

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER = struct.Struct("<9sQBQQ")
DTYPE_CODES: dict[int, np.dtype] = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.int8),
    3: np.dtype(np.int16),
    4: np.dtype(np.int32),
    5: np.dtype(np.int64),
    6: np.dtype(np.float64),
    7: np.dtype(np.float32),
    8: np.dtype(np.uint16),
}
CODE_OF_DTYPE = {dtype: code for code, dtype in DTYPE_CODES.items()}
# Megatron's own threshold (DType.optimal_dtype), kept so our shards match its choice exactly.
UINT16_VOCAB_LIMIT = 65500


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 when every token id fits (vocabulary below 65,500, as Megatron decides), else int32."""
    return np.dtype(np.uint16) if vocab_size < UINT16_VOCAB_LIMIT else np.dtype(np.int32)


def paths_of(prefix: str | os.PathLike) -> tuple[Path, Path]:
    """The (.bin, .idx) pair of a Megatron prefix."""
    prefix = Path(prefix)
    return prefix.with_name(prefix.name + ".bin"), prefix.with_name(prefix.name + ".idx")


class IndexedWriter:
    """Write one indexed dataset as part of an output set: nothing appears under `prefix` unless
    the set commits.

    Tokens stream into the staged .bin and the index goes to the staged .idx. With `into` (an
    entered `OutputSet` that lists both files) the pair commits with the rest of that set, so a
    stage's shards, stamps and manifest change together; without it, the pair is a set of its
    own, committed when the `with` block succeeds. Readers (`IndexedDataset`, `read_header`)
    settle a commit that a kill interrupted, so at every instant they see the old pair or the new one.
    """

    def __init__(self, prefix: str | os.PathLike, dtype: np.dtype | type, into: OutputSet | None = None):
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_OF_DTYPE:
            raise RegmixError(prefix, f"dtype {self.dtype} has no Megatron dtype code")
        self.bin_path, self.idx_path = paths_of(prefix)
        self._lengths: list[np.ndarray] = []
        self.num_tokens = 0
        self.num_documents = 0
        self._into = into
        self._own_set = contextlib.ExitStack()
        self._bin: BinaryIO | None = None

    def __enter__(self) -> IndexedWriter:
        if self._into is None:
            self._into = self._own_set.enter_context(OutputSet([self.bin_path, self.idx_path]))
        self._bin = open(self._into.staged(self.bin_path), "wb")
        return self

    def add_document(self, tokens: Sequence[int] | np.ndarray) -> None:
        """Append one document (one Megatron sequence)."""
        tokens = np.asarray(tokens)
        self.add_documents(tokens, np.array([tokens.size], dtype=np.int64))

    def add_documents(self, flat_tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append many documents at once: their tokens back to back, and each one's length."""
        flat_tokens = np.asarray(flat_tokens)
        lengths = np.asarray(lengths, dtype=np.int64)
        if int(lengths.sum()) != flat_tokens.size:
            raise ValueError(f"lengths sum to {int(lengths.sum())} but {flat_tokens.size} tokens were given")
        if lengths.size and int(lengths.max()) > np.iinfo(np.int32).max:
            raise RegmixError(self.bin_path, "a document is longer than 2**31-1 tokens (int32 lengths)")
        _check_fits(flat_tokens, self.dtype, self.bin_path)
        flat_tokens.astype(self.dtype, copy=False).tofile(self._bin)
        self._lengths.append(lengths)
        self.num_tokens += flat_tokens.size
        self.num_documents += lengths.size

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._bin.close()
        if exc_type is None:
            try:
                self._write_index()
            except BaseException as err:
                self._own_set.__exit__(type(err), err, err.__traceback__)
                raise
        self._own_set.__exit__(exc_type, exc, tb)

    def _write_index(self) -> None:
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, dtype=np.int64)
        count = lengths.size
        pointers = np.zeros(count, dtype=np.int64)
        np.cumsum(lengths[:-1] * self.dtype.itemsize, out=pointers[1:])
        document_indices = np.arange(count + 1, dtype=np.int64)
        with open(self._into.staged(self.idx_path), "wb") as handle:
            handle.write(HEADER.pack(MAGIC, VERSION, CODE_OF_DTYPE[self.dtype], count, count + 1))
            handle.write(lengths.astype(np.int32).tobytes())
            handle.write(pointers.tobytes())
            handle.write(document_indices.tobytes())
        faults.reached(f"stage {self.idx_path.name}")


def write_indexed(prefix: str | os.PathLike, documents: Iterable[Sequence[int] | np.ndarray],
                  dtype: np.dtype | type) -> None:
    """Write `documents` (one token sequence each) as `<prefix>.bin/.idx`, atomically."""
    with IndexedWriter(prefix, dtype) as writer:
        for document in documents:
            writer.add_document(document)


def _check_fits(tokens: np.ndarray, dtype: np.dtype, where: Path) -> None:
    if tokens.size == 0 or tokens.dtype == dtype or dtype.kind == "f":
        return
    info = np.iinfo(dtype)
    low, high = int(tokens.min()), int(tokens.max())
    if low < info.min or high > info.max:
        raise RegmixError(where, f"token id {high if high > info.max else low} does not fit in {dtype}")


class IndexedDataset:
    """A read-only, memory-mapped view of `<prefix>.bin/.idx` (ours or Megatron-LM's).

    Opening checks the whole index against the .bin (magic, version, dtype, sizes, that
    sequences tile the .bin in order), so a truncated or inconsistent shard fails here, with
    its path, rather than as garbage tokens mid-training.
    """

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = Path(prefix)
        self.bin_path, self.idx_path = paths_of(prefix)
        self.dtype, lengths, pointers, document_indices = _read_index(self.idx_path)
        self.sequence_lengths = lengths
        self.document_indices = document_indices
        expected_bytes = int(lengths.sum(dtype=np.int64)) * self.dtype.itemsize
        _check_sequences_tile_bin(self.bin_path, self.idx_path, lengths, pointers, self.dtype, expected_bytes)
        self.tokens = _map_tokens(self.bin_path, self.dtype)
        """All documents' tokens back to back (EOS included): the packed stream the sampler draws from."""
        token_starts = np.zeros(lengths.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=token_starts[1:])
        self._document_starts = token_starts[document_indices]

    def __len__(self) -> int:
        """The number of documents."""
        return self.document_indices.size - 1

    def __getitem__(self, i: int) -> np.ndarray:
        """Document `i`'s tokens (a view into the memory map)."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"document {i} out of range for {len(self)} documents in {self.idx_path}")
        i %= len(self)
        return self.tokens[self._document_starts[i] : self._document_starts[i + 1]]

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.size)

    @property
    def document_lengths(self) -> np.ndarray:
        """Tokens in each document (int64)."""
        return np.diff(self._document_starts)


def _read_index(idx_path: Path) -> tuple[np.dtype, np.ndarray, np.ndarray, np.ndarray]:
    settle(idx_path)  # a commit of this pair that a kill interrupted is finished before it is read
    try:
        size = idx_path.stat().st_size
        # Mapped, not read: the index of a large corpus is gigabytes and every rank opens it.
        raw = np.memmap(idx_path, dtype=np.uint8, mode="r") if size >= HEADER.size else None
    except FileNotFoundError:
        raise RegmixError(idx_path, "index file not found") from None
    except OSError as err:
        raise RegmixError(idx_path, f"cannot read ({err.strerror})") from None
    if raw is None:
        raise RegmixError(idx_path, f"truncated index: {size} bytes, header alone is {HEADER.size}")
    dtype, sequences, _ = _check_header(idx_path, raw[: HEADER.size].tobytes(), raw.size)
    body = raw[HEADER.size :]
    lengths = body[: 4 * sequences].view(np.int32)
    pointers = body[4 * sequences : 12 * sequences].view(np.int64)
    document_indices = body[12 * sequences :].view(np.int64)
    _check_document_indices(idx_path, document_indices, sequences)
    if lengths.size and int(lengths.min()) < 0:
        raise RegmixError(idx_path, "inconsistent index: negative sequence length")
    return dtype, lengths, pointers, document_indices


def _check_header(idx_path: Path, header: bytes, size: int) -> tuple[np.dtype, int, int]:
    """(dtype, sequence count, document-index count) from a 34-byte header and the .idx size."""
    magic, version, code, sequences, documents = HEADER.unpack(header)
    if magic != MAGIC:
        raise RegmixError(idx_path, f"not a Megatron index (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise RegmixError(idx_path, f"unsupported index version {version} (expected {VERSION})")
    if code not in DTYPE_CODES:
        raise RegmixError(idx_path, f"unknown dtype code {code}")
    expected = HEADER.size + 12 * sequences + 8 * documents
    if size == expected + sequences and sequences:
        raise RegmixError(idx_path, f"a Megatron multimodal index ({sequences} mode bytes, one per sequence, "
                                    "after the document indices): multimodal shards are not supported, only text")
    if size != expected:
        problem = "truncated" if size < expected else "trailing bytes in"
        raise RegmixError(idx_path, f"{problem} index: {size} bytes, header promises {expected}")
    if documents < 1:
        raise RegmixError(idx_path, "document index is empty (expected at least the leading 0)")
    return DTYPE_CODES[code], sequences, documents


def _check_document_indices(idx_path: Path, document_indices: np.ndarray, sequences: int) -> None:
    if document_indices[0] != 0 or document_indices[-1] != sequences:
        raise RegmixError(
            idx_path,
            f"inconsistent index: document indices run {document_indices[0]}..{document_indices[-1]}, "
            f"expected 0..{sequences}",
        )
    if np.any(np.diff(document_indices) < 0):
        raise RegmixError(idx_path, "inconsistent index: document indices decrease")


def _check_sequences_tile_bin(
    bin_path: Path, idx_path: Path, lengths: np.ndarray, pointers: np.ndarray, dtype: np.dtype, expected_bytes: int
) -> None:
    byte_lengths = lengths.astype(np.int64) * dtype.itemsize
    starts = np.zeros(lengths.size, dtype=np.int64)
    np.cumsum(byte_lengths[:-1], out=starts[1:])
    if not np.array_equal(starts, pointers):
        raise RegmixError(idx_path, "inconsistent index: sequence pointers do not follow the sequence lengths")
    try:
        actual = bin_path.stat().st_size
    except FileNotFoundError:
        raise RegmixError(bin_path, "data file not found (its .idx exists)") from None
    if actual != expected_bytes:
        problem = "truncated" if actual < expected_bytes else "longer than its index says"
        raise RegmixError(bin_path, f"{problem}: {actual} bytes, {idx_path.name} promises {expected_bytes}")


def _map_tokens(bin_path: Path, dtype: np.dtype) -> np.ndarray:
    # np.memmap refuses empty files; an empty shard is still a valid (if useless) dataset.
    if bin_path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(bin_path, dtype=dtype, mode="r")


# ---- shards read without their whole index: registration, and splits of several prefixes ---------


@dataclass(frozen=True)
class ShardHeader:
    """What a shard's .idx header and its two files' sizes say, checked with a few small reads."""

    prefix: Path
    dtype: np.dtype
    sequences: int
    documents: int
    tokens: int

    @property
    def bin_path(self) -> Path:
        return paths_of(self.prefix)[0]

    @property
    def idx_path(self) -> Path:
        return paths_of(self.prefix)[1]

    def document_starts(self, first: int, stop: int) -> np.ndarray:
        """Token offsets where documents first..stop begin (`stop` == documents: the end of the .bin),
        from index entries first..stop only: O(stop - first) reads however large the shard."""
        if not 0 <= first <= stop <= self.documents:
            raise IndexError(f"documents {first}..{stop} outside 0..{self.documents} of {self.idx_path}")
        s = self.sequences
        sequence = _read_at(self.idx_path, HEADER.size + 12 * s + 8 * first, stop + 1 - first, np.int64)
        if np.any(sequence < 0) or np.any(sequence > s) or np.any(np.diff(sequence) < 0):
            raise RegmixError(self.idx_path, "inconsistent index: document indices out of order or range")
        inside = sequence[sequence < s]
        starts = np.full(sequence.size, self.tokens, dtype=np.int64)
        if inside.size:  # the pointers of a contiguous run of sequences, one read
            low, high = int(inside[0]), int(inside[-1])
            pointers = _read_at(self.idx_path, HEADER.size + 4 * s + 8 * low, high + 1 - low, np.int64)
            starts[sequence < s] = pointers[inside - low] // self.dtype.itemsize
        return starts

    def tokens_at(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of the .bin, read with one pread (a memory map's page faults read ahead
        megabytes, which across many small samples of many files costs far more)."""
        return _read_at(self.bin_path, start * self.dtype.itemsize, stop - start, self.dtype)


def _read_at(path: Path, offset: int, count: int, dtype: np.dtype | type) -> np.ndarray:
    """`count` items of `dtype` at byte `offset` of `path`; a short read is a RegmixError naming it."""
    size = count * np.dtype(dtype).itemsize
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            data = os.pread(fd, size, offset)
        finally:
            os.close(fd)
    except OSError as err:
        raise RegmixError(path, f"cannot read ({err.strerror})") from None
    if len(data) != size:
        raise RegmixError(path, f"truncated: {size} bytes wanted at offset {offset}, {len(data)} there")
    return np.frombuffer(data, dtype=dtype)


def read_header(prefix: str | os.PathLike) -> ShardHeader:
    """Open a shard's header and sizes: magic, version, dtype, that the .idx is exactly as long as its
    header promises, and that the .bin ends where the last sequence's pointer and length say.
    A few dozen bytes read, whatever the shard's size (a training run checks the rest when it opens it)."""
    bin_path, idx_path = paths_of(prefix)
    settle(idx_path)
    try:
        size = idx_path.stat().st_size
        with open(idx_path, "rb") as handle:
            header = handle.read(HEADER.size)
    except FileNotFoundError:
        raise RegmixError(idx_path, "index file not found") from None
    except OSError as err:
        raise RegmixError(idx_path, f"cannot read ({err.strerror})") from None
    if len(header) < HEADER.size:
        raise RegmixError(idx_path, f"truncated index: {size} bytes, header alone is {HEADER.size}")
    dtype, sequences, documents = _check_header(idx_path, header, size)
    try:
        bin_bytes = bin_path.stat().st_size
    except FileNotFoundError:
        raise RegmixError(bin_path, "data file not found (its .idx exists)") from None
    base = HEADER.size + 12 * sequences
    first, last = (int(_read_at(idx_path, base + 8 * i, 1, np.int64)[0]) for i in (0, documents - 1))
    if first != 0 or last != sequences:
        raise RegmixError(idx_path, f"inconsistent index: document indices run {first}..{last}, "
                                    f"expected 0..{sequences}")
    expected = 0
    if sequences:
        last_length = int(_read_at(idx_path, HEADER.size + 4 * (sequences - 1), 1, np.int32)[0])
        last_pointer = int(_read_at(idx_path, HEADER.size + 4 * sequences + 8 * (sequences - 1), 1, np.int64)[0])
        expected = last_pointer + last_length * dtype.itemsize
    if bin_bytes != expected:
        problem = "truncated" if bin_bytes < expected else "longer than its index says"
        raise RegmixError(bin_path, f"{problem}: {bin_bytes} bytes, {idx_path.name} promises {expected}")
    return ShardHeader(Path(prefix), dtype, sequences, documents - 1, bin_bytes // dtype.itemsize)


class ConcatenatedTokens:
    """Several token arrays read as one 1-D array: the stream of a split with several prefixes.

    What the blended sampler needs of a stream: `len`, `dtype`, `ndim`, indexing by an integer
    array of any shape (a sample may run across two prefixes), and `source_of(position)`, the
    file a token came from, for error messages.
    """

    ndim = 1

    def __init__(self, parts: Sequence[np.ndarray], sources: Sequence[str]):
        self._parts, self._sources = list(parts), list(sources)
        self._starts = np.zeros(len(self._parts) + 1, dtype=np.int64)
        np.cumsum([len(part) for part in self._parts], out=self._starts[1:])
        self.dtype = np.result_type(*(part.dtype for part in self._parts))
        self.size = int(self._starts[-1])
        self.shape = (self.size,)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index, dtype=np.int64)
        if index.size and (int(index.min()) < 0 or int(index.max()) >= self.size):
            raise IndexError(f"token positions must lie in [0, {self.size})")
        part = np.searchsorted(self._starts, index, side="right") - 1
        out = np.empty(index.shape, dtype=self.dtype)
        for p in np.unique(part).tolist():
            where = part == p
            out[where] = self._parts[p][index[where] - self._starts[p]]
        return out

    def source_of(self, position: int) -> str:
        """The file holding token `position` of the stream."""
        return self._sources[int(np.searchsorted(self._starts, position, side="right")) - 1]


def open_split(split: Split) -> np.ndarray | ConcatenatedTokens:
    """A manifest split's tokens as one stream: each shard's first `tokens` tokens, in order.

    Each prefix is opened whole (`IndexedDataset`: its index checked against its .bin) and must
    still hold the documents the manifest counted; a shard replaced since `prepare` fails here.
    """
    parts = [_shard_tokens(shard.prefix, shard.tokens, shard.documents) for shard in split.shards]
    if len(parts) == 1:
        return parts[0]
    return ConcatenatedTokens(parts, [str(paths_of(shard.prefix)[0]) for shard in split.shards])


def split_files(split: Split) -> str:
    """How an error names a split's data: its .bin, or the first of several."""
    first = str(paths_of(split.shards[0].prefix)[0])
    return first if len(split.shards) == 1 else f"{first} (+{len(split.shards) - 1} more prefixes)"


def _shard_tokens(prefix: Path, tokens: int, documents: int) -> np.ndarray:
    dataset = IndexedDataset(prefix)
    if len(dataset) < documents or int(dataset._document_starts[documents]) != tokens:
        raise RegmixError(dataset.idx_path, f"holds {len(dataset)} documents, {dataset.num_tokens} tokens, not the "
                                            f"{documents} documents of {tokens} tokens the manifest counted "
                                            "(changed since prepare?): run regmix-ds prepare again")
    return dataset.tokens if tokens == dataset.num_tokens else dataset.tokens[:tokens]
