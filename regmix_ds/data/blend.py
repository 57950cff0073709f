"""The blended sampler: which domain sample sits at each global position, computed on the fly.

Two stateless pieces decide the stream; neither builds or stores an index per mixture:

- `BeattyTree` interleaves the domains. A Huffman tree over the positive weights splits the
  stream at every internal node by a Beatty sequence: of the first n positions that reach a
  node with left share p, the left child gets L(n) = floor(p*n + 1/2). A position finds its
  domain and that domain's draw counter in O(depth) integer steps, and after any prefix of t
  positions every domain's count is within 2 of w*t: each split on a leaf's path adds at most
  1/2 times the leaf's share of that node, and Huffman ancestors more than double every two
  levels, so the sum stays below 2 (about 1 in practice).
- `EpochShuffle` turns a domain's draw k into chunk perm_e(k mod n), e = k // n: a Feistel
  network with cycle-walking keyed by (seed, domain name, epoch), so each epoch reads every
  sample once, in a fresh order, with nothing stored.

`BlendedDataset` / `BlendedSampler` put them behind torch's Dataset/Sampler protocols: packed
samples of seq_len + 1 tokens, contiguous data-parallel shards, resume from a sample counter,
and the repetition cap checked before training starts. All arithmetic that decides the stream
is exact integer arithmetic, so a position maps to the same sample whether it is looked up
alone or in a batch, on any machine.
"""
from __future__ import annotations

import hashlib
import heapq
import math
import numbers
from collections.abc import Iterator, Mapping, Sequence
from fractions import Fraction

import numpy as np
import torch

from regmix_ds.core.errors import RegmixError
from regmix_ds.core.mixture import Mixture
from regmix_ds.data.indexed import ConcatenatedTokens

TokenStream = np.ndarray | ConcatenatedTokens
"""A domain's tokens: one memory-mapped shard, or a split's several prefixes read as one."""

MAX_POSITIONS = 2**32
"""Positions must fit in 32 bits for the exact 96-bit products of `BeattyTree`."""
DEFAULT_MAX_EPOCHS = 4.0
"""Up to about 4 epochs of repeated data cost little (Muennighoff et al. 2023); more is refused."""

_ONE = 1 << 64  # shares are fixed-point numerators over 2**64
_U32 = np.uint64(32)
_HALF = np.uint64(1 << 31)  # 1/2 in units of the upper word of a 96-bit product
_PACK = 40  # inside BeattyTree, a draw counter (< 2**32) is tagged with its domain above bit 40
_GOLDEN = 0x9E3779B97F4A7C15
_BLOCK = 16384  # positions per vectorised pass: its working arrays stay in a core's L2 cache


class BeattyTree:
    """The interleave across domains: a Huffman tree of Beatty splits, stateless and exact."""

    def __init__(self, weights: Sequence[float]):
        weights = [Fraction(float(w)) for w in weights]
        if not any(w > 0 for w in weights):
            raise ValueError("BeattyTree needs at least one positive weight")
        self.num_domains = len(weights)
        self._shares, self._children, self._leaf_domain, self._root = _huffman_tree(weights)
        self._share_halves = [(np.uint64(s >> 32), np.uint64(s & 0xFFFFFFFF)) for s in self._shares]

    @property
    def nbytes(self) -> int:
        """Size of the tree as 64-bit words (share, two children, leaf domain per node): O(domains)."""
        return 4 * 8 * len(self._shares)

    def route(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(domain index, that domain's 0-based draw counter) for each position (< 2**32).

        Positions are processed as runs of consecutive integers: a contiguous batch costs one
        pass down the tree, with one node's constants per vectorised split.
        """
        positions = np.asarray(positions, dtype=np.int64)
        flat = positions.ravel()
        breaks = (np.flatnonzero(np.diff(flat) != 1) + 1).tolist()
        runs = [
            self._interleave(self._root, int(flat[a]), int(flat[a]) + b - a)
            for a, b in zip([0] + breaks, breaks + [flat.size]) if b > a
        ]
        packed = runs[0] if len(runs) == 1 else np.concatenate(runs + [np.empty(0, dtype=np.int64)])
        domain = (packed >> _PACK).reshape(positions.shape)
        return domain, (packed & ((1 << _PACK) - 1)).reshape(positions.shape)

    def _interleave(self, node: int, start: int, stop: int) -> np.ndarray:
        """Packed (domain, draw) of a node's local positions [start, stop)."""
        domain = self._leaf_domain[node]
        if domain >= 0:
            return np.arange(start, stop, dtype=np.int64) | np.int64(domain << _PACK)
        if start == stop:
            return np.empty(0, dtype=np.int64)
        index = np.arange(start, stop + 1, dtype=np.uint64)
        left_counts = self._left_counts(node, index)
        left_start, left_stop = int(left_counts[0]), int(left_counts[-1])
        left_child, right_child = self._children[node]
        both = np.concatenate((
            self._interleave(left_child, left_start, left_stop),
            self._interleave(right_child, start - left_start, stop - left_stop),
        ))
        # n goes right iff L(n+1) == L(n). It then holds right value n - L(n) - (start -
        # L(start)), stored after the left_stop - left_start left values; otherwise left value
        # L(n) - L(start). Selecting by multiplying with the 0/1 flag avoids a branch per
        # element on the irregular left/right pattern; uint64 arithmetic wraps harmlessly.
        left_count, pick = left_counts[:-1], index[:-1]
        goes_right = left_counts[1:] == left_count
        pick -= left_count
        pick -= left_count
        pick += np.uint64((left_stop + left_start - start) % _ONE)
        pick *= goes_right
        pick += left_count
        pick -= np.uint64(left_start)
        return both.take(pick.view(np.int64))

    def _left_counts(self, node: int, index: np.ndarray) -> np.ndarray:
        """L(n) = floor(p*n + 1/2) for each local index n <= 2**32, exactly."""
        # p = share / 2**64, so L(n) is the top 32 bits of the 96-bit share*n + 2**63, built
        # from the products of share's two 32-bit halves with n.
        share_high, share_low = self._share_halves[node]
        low = share_low * index
        low >>= _U32
        result = share_high * index
        result += low
        result += _HALF
        result >>= _U32
        return result

    def counts(self, prefix: int) -> np.ndarray:
        """How many of the first `prefix` positions each domain gets (closed form, exact)."""
        counts = np.zeros(self.num_domains, dtype=np.int64)
        pending = [(self._root, int(prefix))]
        while pending:
            node, count = pending.pop()
            if self._leaf_domain[node] >= 0:
                counts[self._leaf_domain[node]] = count
                continue
            left_count = (self._shares[node] * count + (1 << 63)) >> 64
            left, right = self._children[node]
            pending += [(left, left_count), (right, count - left_count)]
        return counts


def _huffman_tree(weights: Sequence[Fraction]) -> tuple[list[int], list[tuple[int, int]], list[int], int]:
    """Node tables (left share over 2**64, (left, right) children, leaf domain or -1) and root.

    Zero-weight domains get no leaf, so they are never drawn. Ties break by weight, then
    domain index; merged nodes sort after leaves of equal weight.
    """
    shares: list[int] = []
    children: list[tuple[int, int]] = []
    leaf_domain: list[int] = []

    def add(share: int, child_nodes: tuple[int, int], domain: int) -> int:
        shares.append(share)
        children.append(child_nodes)
        leaf_domain.append(domain)
        return len(shares) - 1

    heap = [(w, index, add(0, (-1, -1), index)) for index, w in enumerate(weights) if w > 0]
    heapq.heapify(heap)
    order = len(weights)
    while len(heap) > 1:
        w_left, _, left = heapq.heappop(heap)
        w_right, _, right = heapq.heappop(heap)
        total = w_left + w_right
        heapq.heappush(heap, (total, order, add(_fixed_point(w_left / total), (left, right), -1)))
        order += 1
    return shares, children, leaf_domain, heap[0][2]


def _fixed_point(share: Fraction) -> int:
    # Clamped into [1, 2**64 - 1]: a share too small to show up in 2**32 positions stays legal.
    return min(max(round(share * _ONE), 1), _ONE - 1)


class EpochShuffle:
    """A seeded bijection on each domain's samples, fresh every epoch, computed per draw.

    Domain i's draw k is chunk perm(k mod n_i) of epoch k // n_i. perm is a 4-round
    alternating Feistel network on rows x columns, columns = 2**c with c about half the bits
    of n_i and rows = ceil(n_i / columns), so the grid exceeds n_i by less than one row and
    cycle-walking (permuting again while the value is >= n_i) is rarely needed. The column
    half is XORed with a keyed hash of the row; the row half gets a keyed hash of the column
    added modulo rows. The key of an epoch is (domain key + epoch) times an odd constant,
    the domain key a hash of (seed, domain name).
    """

    _MULTIPLIERS = tuple(np.uint64(c) for c in (
        0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93))

    def __init__(self, sizes: Sequence[int], keys: Sequence[int]):
        sizes = [int(n) for n in sizes]
        bits = [max(max(n - 1, 0).bit_length() // 2, 1) for n in sizes]
        self._sizes = np.array(sizes, dtype=np.int64)
        self._keys = np.array(keys, dtype=np.uint64)
        self._column_bits = np.array(bits, dtype=np.uint64)
        self._rows = np.array([-(-n >> c) for n, c in zip(sizes, bits)], dtype=np.uint64)

    @property
    def nbytes(self) -> int:
        """Memory of the per-domain constants: O(domains)."""
        return self._sizes.nbytes + self._keys.nbytes + self._column_bits.nbytes + self._rows.nbytes

    def chunks(self, domain: np.ndarray, draw: np.ndarray) -> np.ndarray:
        """Chunk index of each (domain, draw): perm_{domain, epoch}(draw mod size)."""
        size = self._sizes[domain]
        epoch, offset = np.divmod(draw, size)
        # (domain key + epoch) times an odd constant: distinct epochs get distinct, spread keys.
        key = epoch.view(np.uint64)
        key += self._keys[domain]
        key *= np.uint64(_GOLDEN)
        shape = (key, self._column_bits[domain], self._rows[domain])
        value = self._permute(offset.view(np.uint64), *shape).view(np.int64)
        outside = np.flatnonzero(value >= size)
        while outside.size:  # cycle-walk back into [0, size)
            value[outside] = self._permute(value[outside].view(np.uint64), *(part[outside] for part in shape))
            outside = outside[value[outside] >= size[outside]]
        return value

    def _permute(self, value: np.ndarray, key: np.ndarray, bits: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The keyed bijection on [0, rows * 2**bits), element-wise; `value` is overwritten."""
        column = np.left_shift(np.uint64(1), bits)
        column -= np.uint64(1)
        column &= value
        row = np.right_shift(value, bits, out=value)
        hash_shift = np.subtract(np.uint64(64), bits)
        scratch = np.empty_like(value)
        for multiplier_column, multiplier_row in zip(self._MULTIPLIERS[::2], self._MULTIPLIERS[1::2]):
            np.bitwise_xor(row, key, out=scratch)  # column ^= top `bits` bits of hash(row)
            scratch *= multiplier_column
            scratch >>= hash_shift
            column ^= scratch
            np.bitwise_xor(column, key, out=scratch)  # row += 32-bit hash(column) scaled to [0, rows)
            scratch *= multiplier_row
            scratch >>= _U32
            scratch *= rows
            scratch >>= _U32
            row += scratch
            np.subtract(row, rows, out=scratch)  # row mod rows: a wrapped difference is huge
            np.minimum(row, scratch, out=row)
        row <<= bits
        row |= column
        return row


def domain_key(seed: int, name: str) -> int:
    """The shuffle key of a domain: from the seed and the domain's name, not its position."""
    digest = hashlib.blake2b(f"{seed}\0{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class BlendedDataset(torch.utils.data.Dataset):
    """Packed samples of seq_len + 1 tokens from several domain streams, blended by a mixture.

    Position t of the blend (0 <= t < num_samples) is a deterministic function of (mixture,
    seed, each domain's sample count): domain order is by name, so neither the mixture file's
    nor the manifest's key order changes the stream. Sample j of a domain is its tokens
    [j*seq_len, j*seq_len + seq_len + 1). Domains with weight 0 are never read and may be
    short or empty. A domain given as several prefixes is one stream, their tokens back to back
    (`ConcatenatedTokens`): a sample may run from one prefix into the next, as it runs across
    documents.
    """

    def __init__(
        self,
        streams: Mapping[str, TokenStream],
        mixture: Mixture,
        seq_len: int,
        seed: int,
        num_samples: int,
        max_epochs: float = DEFAULT_MAX_EPOCHS,
        where: str = "mixture",
        vocab_size: int | None = None,
        sources: Mapping[str, str] | None = None,
    ):
        """`vocab_size`, if given, is checked against every sample read (a corrupted shard fails
        with an error naming its `sources[domain]` file instead of deep inside the model)."""
        mixture.check_domains(streams, where)
        _check_int("seq_len", seq_len, 1)
        _check_int("seed", seed, 0, _ONE - 1)
        _check_int("num_samples", num_samples, 1, MAX_POSITIONS)
        _check_max_epochs(max_epochs)
        self.domains = tuple(sorted(streams))
        self.seq_len, self.seed, self.num_samples = seq_len, seed, num_samples
        self.vocab_size = vocab_size
        self._sources = [(sources or {}).get(name, f"domain {name!r}") for name in self.domains]
        self.mixture_hash = mixture.content_hash()
        weights = mixture.vector(self.domains)
        self._streams = [_checked_stream(f"domain {name!r}", streams[name], seq_len, w > 0, where)
                         for name, w in zip(self.domains, weights)]
        self.samples_per_domain = tuple(max(len(s) - 1, 0) // seq_len for s in self._streams)
        self._tree = BeattyTree(weights)
        self._shuffle = EpochShuffle(
            [max(n, 1) for n in self.samples_per_domain], [domain_key(seed, name) for name in self.domains])
        self._draws = self._tree.counts(num_samples)
        self._check_repetition(max_epochs, where)

    def _check_repetition(self, max_epochs: float, where: str) -> None:
        for name, epochs in self.epochs().items():
            if epochs > max_epochs:
                raise RegmixError(
                    where, f"domain {name!r} would be read {epochs:.3g} epochs over {self.num_samples} "
                    f"samples ({self.samples_per_domain[self.domains.index(name)]} samples per epoch), "
                    f"more than max_epochs {max_epochs:g}")

    def epochs(self) -> dict[str, float]:
        """How many epochs of each domain the blend reads over num_samples (0 if never drawn)."""
        return {name: int(draws) / n if draws else 0.0
                for name, draws, n in zip(self.domains, self._draws, self.samples_per_domain)}

    @property
    def index_bytes(self) -> int:
        """Memory that decides the stream: O(domains), independent of the number of samples."""
        return self._tree.nbytes + self._shuffle.nbytes

    def __len__(self) -> int:
        return self.num_samples

    def lookup(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(domain index into `domains`, chunk index in that domain) for each position."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size and (positions.min() < 0 or positions.max() >= self.num_samples):
            raise IndexError(f"positions must lie in [0, {self.num_samples})")
        domain = np.empty(positions.shape, dtype=np.int64)
        chunk = np.empty(positions.shape, dtype=np.int64)
        flat_positions, flat_domain, flat_chunk = positions.reshape(-1), domain.reshape(-1), chunk.reshape(-1)
        for first in range(0, positions.size, _BLOCK):
            block = slice(first, first + _BLOCK)
            flat_domain[block], draw = self._tree.route(flat_positions[block])
            flat_chunk[block] = self._shuffle.chunks(flat_domain[block], draw)
        return domain, chunk

    def __getitems__(self, positions: Sequence[int]) -> list[torch.Tensor]:
        """The samples at `positions`, one int64 tensor of seq_len + 1 tokens each."""
        domain, chunk = self.lookup(np.asarray(positions, dtype=np.int64).reshape(-1))
        tokens = np.empty((domain.size, self.seq_len + 1), dtype=np.int64)
        offsets = np.arange(self.seq_len + 1)
        for index in np.unique(domain).tolist():
            rows = np.flatnonzero(domain == index)
            positions = chunk[rows, None] * self.seq_len + offsets
            tokens[rows] = self._streams[index][positions]
            _check_read(tokens[rows], positions, self.vocab_size, self._streams[index], self._sources[index])
        return list(torch.from_numpy(tokens))

    def __getitem__(self, position: int) -> torch.Tensor:
        return self.__getitems__([position])[0]


class BlendedSampler(torch.utils.data.Sampler[int]):
    """This rank's positions of the blend, from `consumed_samples` on, in whole micro-steps.

    Micro-step m covers global positions [c + m*micro*world, c + (m+1)*micro*world), where c
    is consumed_samples when iteration starts; rank r takes the contiguous slice starting at
    c + m*micro*world + r*micro. Use with a DataLoader of batch_size=micro_batch_size.
    """

    def __init__(self, dataset: BlendedDataset, micro_batch_size: int, world_size: int = 1, rank: int = 0):
        _check_int("micro_batch_size", micro_batch_size, 1)
        _check_int("world_size", world_size, 1)
        _check_int("rank", rank, 0, world_size - 1)
        self.dataset = dataset
        self.micro_batch_size, self.world_size, self.rank = micro_batch_size, world_size, rank
        self.consumed_samples = 0

    def _micro_steps_left(self) -> int:
        return (self.dataset.num_samples - self.consumed_samples) // (self.micro_batch_size * self.world_size)

    def __len__(self) -> int:
        return self._micro_steps_left() * self.micro_batch_size

    def __iter__(self) -> Iterator[int]:
        step = self.micro_batch_size * self.world_size
        first = self.consumed_samples + self.rank * self.micro_batch_size
        for micro_step in range(self._micro_steps_left()):
            start = first + micro_step * step
            yield from range(start, start + self.micro_batch_size)

    def advance(self, samples: int) -> None:
        """Count `samples` more global samples as consumed (the global batch, after a step)."""
        _check_int("samples", samples, 0)
        if self.consumed_samples + samples > self.dataset.num_samples:
            raise RegmixError("sampler", f"cannot consume {self.consumed_samples + samples} samples: "
                              f"the blend holds {self.dataset.num_samples}")
        self.consumed_samples += samples

    def state_dict(self) -> dict:
        """What a checkpoint needs to resume the stream exactly."""
        return {
            "consumed_samples": self.consumed_samples,
            "mixture_hash": self.dataset.mixture_hash,
            "seed": self.dataset.seed,
            "seq_len": self.dataset.seq_len,
            "samples_per_domain": dict(zip(self.dataset.domains, self.dataset.samples_per_domain)),
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Resume from `state_dict()`; refuse a checkpoint of a different stream."""
        for key in ("consumed_samples", "mixture_hash", "seed"):
            if key not in state:
                raise RegmixError("checkpoint", f"sampler state lacks {key!r}")
        for key, value in self.state_dict().items():
            if key != "consumed_samples" and key in state and state[key] != value:
                raise RegmixError("checkpoint", f"sampler state was saved with {key} {state[key]!r}, "
                                  f"this run has {value!r}: resume with the same data, mixture and seed")
        consumed = state["consumed_samples"]
        if isinstance(consumed, bool) or not isinstance(consumed, (int, np.integer)) \
                or not 0 <= consumed <= self.dataset.num_samples:
            raise RegmixError("checkpoint", f"sampler state has consumed_samples {consumed!r}, "
                              f"outside [0, {self.dataset.num_samples}]")
        self.consumed_samples = int(consumed)


def fixed_samples(stream: TokenStream, seq_len: int, count: int, where: str,
                  vocab_size: int | None = None) -> torch.Tensor:
    """The first min(count, available) packed samples of a validation stream: [rows, seq_len+1]."""
    _check_int("seq_len", seq_len, 1)
    _check_int("count", count, 1)
    stream = _checked_stream("validation stream", stream, seq_len, True, where)
    rows = min(count, (len(stream) - 1) // seq_len)
    index = np.arange(rows)[:, None] * seq_len + np.arange(seq_len + 1)
    samples = np.asarray(stream[index], dtype=np.int64)
    _check_read(samples, index, vocab_size, stream, where)
    return torch.from_numpy(samples)


def check_token_ids(tokens: np.ndarray, vocab_size: int | None, where: object) -> None:
    """Every id must index the embedding table (no check without a `vocab_size`)."""
    if vocab_size is None or tokens.size == 0:
        return
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= vocab_size:
        raise RegmixError(where, f"token id {high if high >= vocab_size else low} is outside the vocabulary "
                                 f"[0, {vocab_size}): the shard is corrupted or from another tokenizer")


def _check_read(tokens: np.ndarray, positions: np.ndarray, vocab_size: int | None, stream: TokenStream,
                where: object) -> None:
    """`check_token_ids`, naming the very file a bad id came from when the stream spans several."""
    try:
        check_token_ids(tokens, vocab_size, where)
    except RegmixError:
        if not isinstance(stream, ConcatenatedTokens):
            raise
        flat = tokens.reshape(-1)
        bad = int(np.flatnonzero((flat < 0) | (flat >= vocab_size))[0])
        check_token_ids(flat[bad : bad + 1], vocab_size, stream.source_of(int(positions.reshape(-1)[bad])))


def _checked_stream(what: str, stream: TokenStream, seq_len: int, read: bool, where: str) -> TokenStream:
    """A 1-D integer token array (or several read as one); one that is read must hold at least one sample."""
    if not isinstance(stream, (np.ndarray, ConcatenatedTokens)) or stream.ndim != 1 or stream.dtype.kind not in "iu":
        raise RegmixError(where, f"{what}: tokens must be a 1-D integer array")
    if read and len(stream) == 0:
        raise RegmixError(where, f"{what} is empty (0 tokens)")
    if read and len(stream) < seq_len + 1:
        raise RegmixError(where, f"{what} has {len(stream)} tokens, fewer than the "
                          f"seq_len + 1 = {seq_len + 1} of one sample")
    return stream


def _check_int(name: str, value: object, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise RegmixError(name, f"must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise RegmixError(name, f"must be {bound}, got {value}")


def _check_max_epochs(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value) or value <= 0:
        raise RegmixError("max_epochs", f"must be a positive number (inf for no cap), got {value!r}")
