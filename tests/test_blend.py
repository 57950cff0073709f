import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from regmix_ds.core.errors import RegmixError
from regmix_ds.core.mixture import Mixture
from regmix_ds.data.blend import (
    MAX_POSITIONS,
    BeattyTree,
    BlendedDataset,
    BlendedSampler,
    EpochShuffle,
    fixed_samples,
)

SEQ = 4


def random_weights(rng: np.random.Generator) -> np.ndarray:
    """Mixtures of every shape the sampler must handle: flat, peaked, with zeros and 1e-4s."""
    k = int(rng.integers(1, 21))
    weights = rng.dirichlet(np.full(k, rng.choice([0.05, 0.3, 1.0, 10.0])))
    weights[rng.random(k) < 0.2] = 0.0
    weights[rng.random(k) < 0.2] = 1e-4
    if weights.sum() == 0:
        weights[0] = 1.0
    return weights / weights.sum()


SKEWED = [
    np.r_[0.999, np.full(16, 0.001 / 16)],
    np.r_[0.5, 0.49, np.full(15, 0.01 / 15)],
    np.r_[1e-4, 1e-4, 1 - 2e-4],
    np.r_[0.0, 0.3, 0.0, 0.7, 0.0],
    np.full(7, 1 / 7),
]


def prefix_deviation(domains: np.ndarray, weights: np.ndarray) -> float:
    t = np.arange(1, domains.size + 1)
    return max(float(np.abs(np.cumsum(domains == i) - w * t).max()) for i, w in enumerate(weights))


def token_streams(sizes: dict[str, int]) -> dict[str, np.ndarray]:
    """Streams whose tokens spell (domain number, position), so a sample shows where it came from."""
    return {name: (np.arange(n) + 1_000_000 * i).astype(np.int32) for i, (name, n) in enumerate(sizes.items())}


def dataset(weights=None, sizes=None, num_samples=600, seed=3, **kwargs) -> BlendedDataset:
    sizes = sizes or {"code": 401, "math": 93, "web": 1601, "wiki": 9}
    weights = weights or {"code": 0.3, "math": 0.1, "web": 0.6, "wiki": 0.0}
    return BlendedDataset(token_streams(sizes), Mixture.from_weights(weights), SEQ, seed, num_samples, **kwargs)


# --- interleave -------------------------------------------------------------------------------

def test_every_prefix_is_within_two_samples_of_its_share():
    rng = np.random.default_rng(20240601)
    mixtures = [random_weights(rng) for _ in range(150)] + SKEWED
    positions = np.arange(6000)
    for weights in mixtures:
        domains, _ = BeattyTree(weights).route(positions)
        assert prefix_deviation(domains, weights) <= 2.0, weights
        assert not np.isin(domains, np.flatnonzero(weights == 0)).any()


def test_closed_form_counts_match_the_stream_and_stay_exact_up_to_2_to_32():
    rng = np.random.default_rng(7)
    for weights in [random_weights(rng) for _ in range(30)] + SKEWED:
        tree = BeattyTree(weights)
        domains, draws = tree.route(np.arange(3000))
        for t in rng.integers(0, 3000, 5).tolist() + [3000]:
            np.testing.assert_array_equal(tree.counts(t), np.bincount(domains[:t], minlength=weights.size))
        # each domain's draws are numbered 0, 1, 2, ... in stream order
        for i in np.unique(domains):
            np.testing.assert_array_equal(draws[domains == i], np.arange(np.sum(domains == i)))
        for t in rng.integers(0, MAX_POSITIONS, 20).tolist() + [MAX_POSITIONS]:
            counts = tree.counts(t)
            assert counts.sum() == t
            assert np.abs(counts - weights * t).max() <= 2.0


def test_positions_far_into_the_run_route_like_the_closed_form():
    weights = np.r_[0.999, np.full(16, 0.001 / 16)]
    tree = BeattyTree(weights)
    start = MAX_POSITIONS - 5000
    domains, draws = tree.route(np.arange(start, MAX_POSITIONS))
    before, after = tree.counts(start), tree.counts(MAX_POSITIONS)
    np.testing.assert_array_equal(np.bincount(domains, minlength=17), after - before)
    for i in np.unique(domains):
        np.testing.assert_array_equal(draws[domains == i], before[i] + np.arange(after[i] - before[i]))


# --- within-domain shuffle ----------------------------------------------------------------------

@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 63, 64, 65, 1000, 4097])
def test_every_epoch_is_a_fresh_permutation(size):
    shuffle = EpochShuffle([size, 17], [12345, 678])
    chunks = shuffle.chunks(np.zeros(3 * size, dtype=np.intp), np.arange(3 * size))
    epochs = chunks.reshape(3, size)
    for epoch in epochs:
        np.testing.assert_array_equal(np.sort(epoch), np.arange(size))
    if size >= 64:
        assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])


def test_shuffled_order_is_not_close_to_sequential():
    size = 20000
    order = EpochShuffle([size], [99]).chunks(np.zeros(size, dtype=np.intp), np.arange(size))
    assert abs(np.corrcoef(np.arange(size), order)[0, 1]) < 0.05
    assert np.mean(np.abs(np.diff(order)) < size // 100) < 0.05
    other_seed = EpochShuffle([size], [100]).chunks(np.zeros(size, dtype=np.intp), np.arange(size))
    assert np.mean(order == other_seed) < 0.01


# --- dataset ----------------------------------------------------------------------------------

def test_samples_are_packed_windows_and_each_domain_epoch_has_no_repeats():
    ds = dataset(num_samples=1500, max_epochs=10)
    domains, chunks = ds.lookup(np.arange(len(ds)))
    assert ds.domains == ("code", "math", "web", "wiki")
    assert ds.samples_per_domain == (100, 23, 400, 2)
    for position in [0, 1, 2, 77, 1499]:
        sample = ds[position]
        d, c = int(domains[position]), int(chunks[position])
        domain_number = ["code", "math", "web", "wiki"].index(ds.domains[d])
        expected = 1_000_000 * domain_number + np.arange(c * SEQ, c * SEQ + SEQ + 1)
        assert sample.dtype == torch.int64 and sample.tolist() == expected.tolist()
    for d, n in enumerate(ds.samples_per_domain):
        drawn = chunks[domains == d]
        for first in range(0, drawn.size, n):
            epoch = drawn[first:first + n]
            assert np.unique(epoch).size == epoch.size and epoch.max() < n
    assert not np.any(domains == ds.domains.index("wiki"))


def test_batch_lookups_equal_single_lookups_in_any_order_and_across_epochs():
    ds = dataset(num_samples=1500, max_epochs=10)
    domains, chunks = ds.lookup(np.arange(len(ds)))
    rng = np.random.default_rng(0)
    picked = rng.integers(0, len(ds), 300)
    d, c = ds.lookup(picked)
    np.testing.assert_array_equal(d, domains[picked])
    np.testing.assert_array_equal(c, chunks[picked])
    for position in picked[:40].tolist():
        d1, c1 = ds.lookup([position])
        assert (d1[0], c1[0]) == (domains[position], chunks[position])
    batch = ds.__getitems__([5, 6, 700, 3])
    assert all(torch.equal(sample, ds[p]) for sample, p in zip(batch, [5, 6, 700, 3]))


def test_long_lookups_equal_piecewise_lookups():
    ds = dataset(num_samples=50_000, sizes={"code": 80_001, "math": 20_001, "web": 200_001, "wiki": 9})
    domains, chunks = ds.lookup(np.arange(50_000))
    pieces = [ds.lookup(np.arange(first, min(first + 777, 50_000))) for first in range(0, 50_000, 777)]
    np.testing.assert_array_equal(domains, np.concatenate([d for d, _ in pieces]))
    np.testing.assert_array_equal(chunks, np.concatenate([c for _, c in pieces]))
    grid = ds.lookup(np.arange(50_000).reshape(250, 200))
    assert grid[0].shape == (250, 200) and np.array_equal(grid[1].ravel(), chunks)


def test_stream_depends_on_names_not_on_key_order_or_run_length():
    a = dataset(num_samples=500)
    sizes = {"wiki": 9, "web": 1601, "math": 93, "code": 401}
    b = BlendedDataset(token_streams(sizes), Mixture.from_weights({"web": 0.6, "wiki": 0.0, "code": 0.3, "math": 0.1}),
                       SEQ, 3, 900)
    # token values encode the dict position, so compare (domain name, chunk)
    for ds_a_pos in range(0, 500, 7):
        da, ca = a.lookup([ds_a_pos])
        db, cb = b.lookup([ds_a_pos])
        assert (a.domains[da[0]], ca[0]) == (b.domains[db[0]], cb[0])
    other_seed = dataset(num_samples=500, seed=4)
    assert not np.array_equal(a.lookup(np.arange(500))[1], other_seed.lookup(np.arange(500))[1])


def test_epochs_and_repetition_cap():
    ds = dataset(num_samples=1000, max_epochs=math.inf)
    draws = ds._tree.counts(1000)
    epochs = ds.epochs()
    assert epochs["wiki"] == 0.0
    assert epochs["math"] == pytest.approx(draws[1] / 23) and epochs["math"] > 2
    dataset(num_samples=1000, max_epochs=epochs["math"])  # exactly at the cap is allowed
    expected = rf"^mixture: domain 'math' would be read {epochs['math']:.3g} epochs .* more than max_epochs 4$"
    with pytest.raises(RegmixError, match=expected):
        dataset(num_samples=1000, max_epochs=4)


def test_index_memory_does_not_grow_with_samples_or_data():
    small = dataset(num_samples=10)
    huge_streams = {name: np.broadcast_to(np.zeros(1, np.uint16), (n,))  # no memory behind them
                    for name, n in {"code": 10**13, "math": 10**12, "web": 10**13, "wiki": 9}.items()}
    big = BlendedDataset(huge_streams, Mixture.from_weights({"code": 0.3, "math": 0.1, "web": 0.6, "wiki": 0.0}),
                         2048, 3, MAX_POSITIONS)
    assert small.index_bytes == big.index_bytes < 2000
    assert big.lookup([MAX_POSITIONS - 1])[1][0] < big.samples_per_domain[big.lookup([MAX_POSITIONS - 1])[0][0]]


# --- sampler, DataLoader, resume ----------------------------------------------------------------

def rank_batches(ds, micro, world, rank, **loader_kwargs):
    sampler = BlendedSampler(ds, micro, world, rank)
    return list(DataLoader(ds, batch_size=micro, sampler=sampler, **loader_kwargs))


@pytest.mark.parametrize("world", [1, 2, 3])
def test_union_of_rank_shards_is_the_single_process_stream(world):
    ds = dataset(num_samples=100)
    micro = 4
    single = torch.cat(rank_batches(ds, micro * world, 1, 0))
    shards = [rank_batches(ds, micro, world, rank) for rank in range(world)]
    assert len({len(batches) for batches in shards}) == 1
    union = torch.cat([batch for step in zip(*shards) for batch in step])
    assert torch.equal(union, single)
    assert single.shape == ((100 // (micro * world)) * micro * world, SEQ + 1)
    positions = [list(BlendedSampler(ds, micro, world, rank)) for rank in range(world)]
    assert sum(len(p) for p in positions) == len(set().union(*positions)) == len(single)


def test_dataloader_workers_give_the_same_batches():
    ds = dataset(num_samples=64)
    assert all(torch.equal(a, b) for a, b in
               zip(rank_batches(ds, 4, 2, 1), rank_batches(ds, 4, 2, 1, num_workers=2)))


def test_resume_from_state_dict_continues_identically():
    ds = dataset(num_samples=200)
    sampler = BlendedSampler(ds, micro_batch_size=2, world_size=2, rank=1)
    uninterrupted = list(sampler)
    sampler.advance(12)  # three optimizer steps of 2 x 2 samples
    state = sampler.state_dict()
    assert state["consumed_samples"] == 12 and state["mixture_hash"] == ds.mixture_hash and state["seed"] == 3
    resumed = BlendedSampler(dataset(num_samples=200), micro_batch_size=2, world_size=2, rank=1)
    resumed.load_state_dict(state)
    assert list(resumed) == uninterrupted[6:] and len(resumed) == len(uninterrupted) - 6
    loader = DataLoader(resumed.dataset, batch_size=2, sampler=resumed)
    assert torch.equal(torch.cat(list(loader)), torch.stack([ds[p] for p in uninterrupted[6:]]))


@pytest.mark.parametrize("change, problem", [
    ({"weights": {"code": 0.35, "math": 0.05, "web": 0.6, "wiki": 0.0}}, "mixture_hash"),
    ({"seed": 4}, "seed"),
    ({"sizes": {"code": 401, "math": 97, "web": 1601, "wiki": 9}}, "samples_per_domain"),
])
def test_resume_with_another_stream_is_refused(change, problem):
    state = BlendedSampler(dataset(), 2).state_dict()
    with pytest.raises(RegmixError, match=rf"^checkpoint: sampler state was saved with {problem} ") as info:
        BlendedSampler(dataset(**change), 2).load_state_dict(state)
    assert "\n" not in str(info.value)


def test_fixed_samples_take_the_first_windows():
    stream = np.arange(30, dtype=np.uint16)
    batch = fixed_samples(stream, SEQ, 3, "valid/web")
    assert batch.dtype == torch.int64 and batch.tolist() == [list(range(i * 4, i * 4 + 5)) for i in range(3)]
    assert fixed_samples(stream, SEQ, 100, "valid/web").shape == (7, SEQ + 1)
    with pytest.raises(RegmixError, match=r"^valid/web: validation stream has 4 tokens, fewer than"):
        fixed_samples(stream[:4], SEQ, 3, "valid/web")


# --- bad inputs ---------------------------------------------------------------------------------

BAD_DATASETS = [
    (lambda: dataset(weights={"code": -0.3, "math": 0.7, "web": 0.6, "wiki": 0.0}), "negative"),
    (lambda: dataset(weights={"code": 0.3, "math": 0.1, "web": 0.6, "wiki": 0.0, "law": 0.0}), "unknown domain"),
    (lambda: dataset(weights={"code": 0.4, "web": 0.6}), "lacks domain"),
    (lambda: dataset(sizes={"code": 0, "math": 93, "web": 1601, "wiki": 9}), "'code' is empty"),
    (lambda: dataset(sizes={"code": 4, "math": 93, "web": 1601, "wiki": 9}), "'code' has 4 tokens, fewer than"),
    (lambda: dataset(num_samples=2000), "would be read .* epochs"),
    (lambda: dataset(num_samples=0), "^num_samples: must be in"),
    (lambda: dataset(num_samples=MAX_POSITIONS + 1), "^num_samples: must be in"),
    (lambda: dataset(num_samples=10.0), "^num_samples: must be an integer"),
    (lambda: dataset(seed=-1), "^seed: must be in"),
    (lambda: dataset(max_epochs=0), "^max_epochs: must be a positive number"),
    (lambda: dataset(max_epochs=float("nan")), "^max_epochs: must be a positive number"),
    (lambda: BlendedDataset({"a": np.zeros(9, np.int32)}, Mixture.from_weights({"a": 1.0}), 0, 0, 5), "^seq_len"),
    (lambda: BlendedDataset({"a": np.zeros(9, np.float32)}, Mixture.from_weights({"a": 1.0}), 2, 0, 5),
     "1-D integer array"),
    (lambda: BlendedDataset({"a": np.zeros((3, 3), np.int32)}, Mixture.from_weights({"a": 1.0}), 2, 0, 5),
     "1-D integer array"),
    (lambda: BlendedSampler(dataset(), 0), "^micro_batch_size: must be"),
    (lambda: BlendedSampler(dataset(), 2, world_size=2, rank=2), r"^rank: must be in \[0, 1\]"),
    (lambda: BlendedSampler(dataset(), 2).advance(601), "^sampler: cannot consume 601 samples"),
    (lambda: BlendedSampler(dataset(), 2).load_state_dict({"seed": 3}), "lacks 'consumed_samples'"),
    (lambda: BlendedSampler(dataset(), 2).load_state_dict(
        {"consumed_samples": 601, "mixture_hash": dataset().mixture_hash, "seed": 3}), "^checkpoint: .*601, outside"),
    (lambda: fixed_samples(np.zeros(0, np.int32), SEQ, 2, "valid/x"), "^valid/x: validation stream is empty"),
    (lambda: fixed_samples(np.zeros(9, np.int32), SEQ, 0, "valid/x"), "^count: must be"),
]


@pytest.mark.parametrize("make, problem", BAD_DATASETS)
def test_bad_inputs_are_one_line_errors(make, problem):
    with pytest.raises(RegmixError, match=problem) as info:
        make()
    assert "\n" not in str(info.value)


def test_positions_outside_the_blend_are_index_errors():
    ds = dataset(num_samples=50)
    with pytest.raises(IndexError):
        ds[50]
    with pytest.raises(IndexError):
        ds.lookup([-1])


# --- DeepSpeed --------------------------------------------------------------------------------

def test_deepspeed_dataloader_takes_the_sampler():
    # the loader that engine.deepspeed_io builds
    from deepspeed.runtime.dataloader import DeepSpeedDataLoader

    ds = dataset(num_samples=64)
    sampler = BlendedSampler(ds, 4, world_size=2, rank=1)
    loader = DeepSpeedDataLoader(ds, batch_size=4, pin_memory=False, local_rank=0, tput_timer=None,
                                 data_sampler=sampler, data_parallel_world_size=2, data_parallel_rank=1)
    assert len(loader) == 8
    batches = list(loader)
    assert all(torch.equal(a, b) for a, b in zip(batches, rank_batches(ds, 4, 2, 1), strict=True))


def test_token_ids_outside_the_vocabulary_name_their_shard():
    good, bad = np.arange(41, dtype=np.int32), np.arange(41, dtype=np.int32)
    bad[5] = 999
    streams, mixture = {"code": good, "web": bad}, Mixture.from_weights({"code": 0.5, "web": 0.5})
    data = BlendedDataset(streams, mixture, SEQ, 0, 10, vocab_size=500, sources={"web": "data/web_train.bin"})
    with pytest.raises(RegmixError, match=r"^data/web_train\.bin: token id 999 is outside the vocabulary \[0, 500\)"):
        data.__getitems__(list(range(10)))
    assert len(BlendedDataset(streams, mixture, SEQ, 0, 10, vocab_size=1000).__getitems__(list(range(10)))) == 10
    with pytest.raises(RegmixError, match=r"^valid/x: token id 999 is outside"):
        fixed_samples(bad, SEQ, 3, "valid/x", vocab_size=500)
