"""The global sample stream, its mixing by weight, and the per-rank loader's exact resume."""

import shutil

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp

from tinytitan.config import Data, DataSource
from tinytitan.data.loader import DataLoader
from tinytitan.data.shards import write_shard
from tinytitan.data.sources import build_streams
from tinytitan.data.streams import MixedStream, SampleStream, SyntheticStream
from tinytitan.errors import UserError

SEQ = 10


@pytest.fixture
def shards(tmp_path):
    """Tiny shards of odd sizes, so that many windows cross shard boundaries."""
    rng = np.random.default_rng(0)
    paths, pieces = [], []
    for i, size in enumerate([7, 23, 1, 40, 13, 3]):
        pieces.append(rng.integers(0, 500, size=size))
        paths.append(tmp_path / f"s-{i}.bin")
        write_shard(paths[-1], pieces[-1], 1, 500)
    return paths, np.concatenate(pieces)


def window_start(sample: np.ndarray, all_tokens: np.ndarray) -> int:
    starts = [s for s in range(0, len(all_tokens) - SEQ, SEQ) if np.array_equal(all_tokens[s : s + SEQ + 1], sample)]
    assert len(starts) == 1
    return starts[0]


def test_each_epoch_visits_every_window_once_in_a_new_order(shards):
    paths, all_tokens = shards
    stream = SampleStream(paths, SEQ, seed=(3,))
    windows = stream.windows_per_epoch
    assert windows == (len(all_tokens) - 1) // SEQ
    epochs = [[window_start(stream.sample(e * windows + i), all_tokens) for i in range(windows)] for e in range(3)]
    for order in epochs:
        assert sorted(order) == list(range(0, windows * SEQ, SEQ))
    assert epochs[0] != epochs[1] or epochs[1] != epochs[2]
    in_order = SampleStream(paths, SEQ, seed=(), shuffle=False)
    assert [window_start(in_order.sample(i), all_tokens) for i in range(windows)] == list(range(0, windows * SEQ, SEQ))


def test_order_depends_on_the_seed_only(shards):
    paths, _ = shards
    a, b, c = SampleStream(paths, SEQ, (1,)), SampleStream(paths, SEQ, (1,)), SampleStream(paths, SEQ, (2,))
    first = [a.sample(i).tolist() for i in range(20)]
    assert first == [b.sample(i).tolist() for i in range(20)]
    assert first != [c.sample(i).tolist() for i in range(20)]


class Tagged:
    """A source whose k-th sample says which source and k it is, to check the mixing exactly."""

    def __init__(self, tag):
        self.tag = tag

    def sample(self, k):
        return np.array([self.tag, k] + [0] * (SEQ - 1))


def test_mixture_matches_the_weights_and_takes_each_source_in_order():
    weights = [0.693584, 0.306416]
    mixed = MixedStream([Tagged(0), Tagged(1)], weights, seed=(0,), names=["slim", "star"])
    samples = [mixed.sample(i) for i in range(10_000)]
    tags = np.array([s[0] for s in samples])
    assert np.mean(tags == 0) == pytest.approx(weights[0], abs=0.01 * weights[0])
    for tag in (0, 1):  # every source's own samples are consumed in order, none skipped or repeated
        assert [s[1] for s in samples if s[0] == tag] == list(range(np.count_nonzero(tags == tag)))
    assert tags[:50].tolist() != sorted(tags[:50].tolist())  # interleaved, not in runs
    random_access = MixedStream([Tagged(0), Tagged(1)], weights, seed=(0,), names=["slim", "star"])
    assert all(np.array_equal(random_access.sample(i), samples[i]) for i in (9_999, 17, 4_096, 4_095))


def test_a_vanishing_weight_is_refused():
    with pytest.raises(UserError, match="'tiny': weight 1e-05 is too small"):
        MixedStream([Tagged(0), Tagged(1)], [1.0, 1e-5], seed=(0,), names=["big", "tiny"])


def test_labels_are_the_inputs_shifted_by_one(shards):
    paths, _ = shards
    stream = SampleStream(paths, SEQ, (0,))
    inputs, labels = next(DataLoader(stream, micro_batch_size=3))
    assert inputs.shape == labels.shape == (3, SEQ) and inputs.dtype == torch.int64
    for row in range(3):
        sample = torch.from_numpy(stream.sample(row).astype(np.int64))
        assert torch.equal(inputs[row], sample[:-1]) and torch.equal(labels[row], sample[1:])


def batches(loader, n):
    return [next(loader)[0] for _ in range(n)]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_restored_state_continues_exactly_as_an_uninterrupted_run(shards, num_workers):
    paths, _ = shards
    stream = SampleStream(paths, SEQ, (0,))
    expected = batches(DataLoader(stream, 3, num_workers=num_workers), 9)
    first = DataLoader(stream, 3, num_workers=num_workers)
    got = batches(first, 4)  # the workers have prefetched further than this
    state = first.state_dict()
    first.close()
    resumed = DataLoader(SampleStream(paths, SEQ, (0,)), 3, num_workers=num_workers)
    resumed.load_state_dict(state)
    got += batches(resumed, 5)
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)])
def test_elastic_resume_on_another_number_of_ranks_continues_the_single_rank_stream(shards, before, after):
    """Global batch of 4 samples per step: ranks x micro-batch = 4 before and after."""
    paths, _ = shards
    stream = SampleStream(paths, SEQ, (0,))
    single = batches(DataLoader(stream, 4), 6)

    def run(world_size, steps, state=None):
        loaders = [DataLoader(stream, 4 // world_size, rank, world_size, num_workers=1) for rank in range(world_size)]
        for loader in loaders:
            if state:
                loader.load_state_dict(state)
        per_step = [[next(loader)[0] for loader in loaders] for _ in range(steps)]
        for rank_batches in per_step:  # the ranks never overlap
            rows = [tuple(row.tolist()) for b in rank_batches for row in b]
            assert len(set(rows)) == len(rows)
        states = [loader.state_dict() for loader in loaders]
        assert all(s == states[0] for s in states)  # the same on every rank
        return [torch.cat(b) for b in per_step], states[0]

    head, state = run(before, 3)
    tail, _ = run(after, 3, state)
    assert all(torch.equal(a, b) for a, b in zip(head + tail, single, strict=True))


def test_synthetic_stream_is_seeded_and_in_range():
    a, b = SyntheticStream(1000, SEQ, (1,)), SyntheticStream(1000, SEQ, (2,))
    assert np.array_equal(a.sample(5), SyntheticStream(1000, SEQ, (1,)).sample(5))
    assert not np.array_equal(a.sample(5), b.sample(5)) and a.sample(5).max() < 1000 and len(a.sample(0)) == SEQ + 1


def test_too_little_data_is_refused(tmp_path):
    write_shard(tmp_path / "tiny.bin", [1, 2, 3], 1, 10)
    with pytest.raises(UserError, match="3 tokens in 1 shards .*expected more than seq_len=10"):
        SampleStream([tmp_path / "tiny.bin"], SEQ, (0,))
    with pytest.raises(UserError, match="no token shards"):
        SampleStream([], SEQ, (0,))


# ---- what a saved position means: the settings of its stream ----


def stream_of(corpus_cache, builtin_corpus, seq_len=SEQ, seed=0, dataset="builtin", weights=None, moved=None):
    """The training stream build_streams makes for a run (its settings filled in as for training)."""
    data = Data(dataset=dataset, cache_dir=str(corpus_cache))
    if weights:
        folders = {name: (moved or {}).get(name, path) for name, path in builtin_corpus.sources.items()}
        sources = [DataSource(name, str(folders[name]), weight) for name, weight in weights.items()]
        data = Data(dataset="sources", sources=sources, tokenizer_path=str(builtin_corpus.tokenizer_path))
    return build_streams(data, 4096, seq_len, seed)[0]


def saved_state(stream, samples=6):
    loader = DataLoader(stream, 3)
    batches(loader, samples // 3)
    return loader.state_dict()


@pytest.mark.parametrize(
    "changed, key, saved, new",
    [
        ({"seq_len": 12}, "training.seq_len", "10", "12"),
        ({"seed": 1}, "training.seed", "0", "1"),
        ({"dataset": "synthetic"}, "data.dataset", '"builtin"', '"synthetic"'),
    ],
)
def test_a_position_saved_under_other_stream_settings_is_refused(
    corpus_cache, builtin_corpus, changed, key, saved, new
):
    state = saved_state(stream_of(corpus_cache, builtin_corpus))
    resumed = DataLoader(stream_of(corpus_cache, builtin_corpus, **changed), 3)
    message = f"resume: {key} = {new}: the checkpoint's data position counts samples of a stream with {key} = {saved}"
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        resumed.load_state_dict(state)


@pytest.mark.parametrize("weights", [{"prose": 0.5, "code": 0.5}, {"prose": 1.0}, {"code": 0.3, "prose": 0.7}])
def test_other_sources_or_weights_are_refused_and_a_moved_folder_is_not(
    tmp_path, corpus_cache, builtin_corpus, weights
):
    original = {"prose": 0.7, "code": 0.3}
    state = saved_state(stream_of(corpus_cache, builtin_corpus, weights=original))
    with pytest.raises(UserError, match=r"resume: data.sources = .*: .* with data.sources = \"prose weight 0.7 "):
        DataLoader(stream_of(corpus_cache, builtin_corpus, weights=weights), 3).load_state_dict(state)
    moved = {name: shutil.copytree(path, tmp_path / name) for name, path in builtin_corpus.sources.items()}
    resumed = DataLoader(stream_of(corpus_cache, builtin_corpus, weights={"prose": 7, "code": 3}, moved=moved), 3)
    resumed.load_state_dict(state)  # the same data elsewhere, and the same shares of the weights
    assert resumed.position == 6


def test_a_changed_global_batch_continues_the_global_stream_exactly(shards):
    """4 samples a step, then 6 (on two ranks of 3): no sample skipped or repeated."""
    paths, _ = shards
    stream = SampleStream(paths, SEQ, (0,))
    single = torch.cat(batches(DataLoader(stream, 1), 4 * 3 + 6 * 3))
    first = DataLoader(stream, 4)
    got = batches(first, 3)
    loaders = [DataLoader(stream, 3, rank, 2) for rank in range(2)]
    for loader in loaders:
        loader.load_state_dict(first.state_dict())
    got += [batch for _ in range(3) for loader in loaders for batch in batches(loader, 1)]
    assert torch.equal(torch.cat(got), single)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_a_checkpoint_saved_before_settings_were_recorded_resumes(tmp_path, corpus_cache, builtin_corpus):
    """Its loader state is a bare integer under "position": DCP loads it into today's loader."""
    dcp.save({"dataloader": {"position": 6}}, checkpoint_id=str(tmp_path / "old"), no_dist=True)
    stream = stream_of(corpus_cache, builtin_corpus)
    resumed = DataLoader(stream, 3)
    dcp.load({"dataloader": resumed}, checkpoint_id=str(tmp_path / "old"), no_dist=True)
    expected = batches(DataLoader(stream, 3), 4)[2:]
    assert all(torch.equal(a, b) for a, b in zip(batches(resumed, 2), expected, strict=True))
    # and a checkpoint of today refuses through DCP too, with the loader's own line
    dcp.save({"dataloader": resumed}, checkpoint_id=str(tmp_path / "new"), no_dist=True)
    other = DataLoader(stream_of(corpus_cache, builtin_corpus, seq_len=12), 3)
    with pytest.raises(UserError, match="resume: training.seq_len = 12"):
        dcp.load({"dataloader": other}, checkpoint_id=str(tmp_path / "new"), no_dist=True)
