import numpy as np
import pytest
import torch

from tinytitan.data.loader import DataLoader, SampleStream
from tinytitan.data.shards import write_shard
from tinytitan.errors import UserError

SEQ = 10


@pytest.fixture
def shards(tmp_path):
    """Tiny shards of odd sizes, so that many windows cross shard boundaries."""
    rng = np.random.default_rng(0)
    sizes = [7, 23, 1, 40, 13, 3]
    paths, pieces = [], []
    for i, size in enumerate(sizes):
        tokens = rng.integers(0, 500, size=size)
        write_shard(tmp_path / f"s-{i}.bin", tokens, 1, 500)
        paths.append(tmp_path / f"s-{i}.bin")
        pieces.append(tokens)
    return paths, np.concatenate(pieces)


def window_start(sample: np.ndarray, all_tokens: np.ndarray) -> int:
    starts = [s for s in range(0, len(all_tokens) - SEQ, SEQ) if np.array_equal(all_tokens[s : s + SEQ + 1], sample)]
    assert len(starts) == 1
    return starts[0]


def test_each_epoch_visits_every_window_once_in_a_new_order(shards):
    paths, all_tokens = shards
    stream = SampleStream(paths, SEQ, seed=3)
    windows = stream.windows_per_epoch
    assert windows == (len(all_tokens) - 1) // SEQ
    epochs = [[window_start(stream.sample(e * windows + i), all_tokens) for i in range(windows)] for e in range(3)]
    for order in epochs:
        assert sorted(order) == list(range(0, windows * SEQ, SEQ))
    assert epochs[0] != epochs[1] or epochs[1] != epochs[2]


def test_order_depends_on_the_seed_only(shards):
    paths, _ = shards
    a, b, c = SampleStream(paths, SEQ, 1), SampleStream(paths, SEQ, 1), SampleStream(paths, SEQ, 2)
    first = [a.sample(i).tolist() for i in range(20)]
    assert first == [b.sample(i).tolist() for i in range(20)]
    assert first != [c.sample(i).tolist() for i in range(20)]


def test_labels_are_the_inputs_shifted_by_one(shards):
    paths, _ = shards
    stream = SampleStream(paths, SEQ, 0)
    inputs, labels = next(DataLoader(stream, micro_batch_size=3))
    assert inputs.shape == labels.shape == (3, SEQ) and inputs.dtype == torch.int64
    for row in range(3):
        sample = torch.from_numpy(stream.sample(row).astype(np.int64))
        assert torch.equal(inputs[row], sample[:-1]) and torch.equal(labels[row], sample[1:])


def test_ranks_take_disjoint_slices_of_the_single_process_stream(shards):
    paths, _ = shards
    stream = SampleStream(paths, SEQ, 0)
    single = DataLoader(stream, micro_batch_size=4)
    ranks = [DataLoader(stream, micro_batch_size=2, rank=r, world_size=2) for r in range(2)]
    for _ in range(5):
        together = next(single)[0]
        assert torch.equal(torch.cat([next(loader)[0] for loader in ranks]), together)


def test_restored_state_continues_the_same_stream(shards):
    paths, _ = shards
    stream = SampleStream(paths, SEQ, 0)
    uninterrupted = DataLoader(stream, micro_batch_size=3)
    expected = [next(uninterrupted)[0] for _ in range(8)]
    first = DataLoader(stream, micro_batch_size=3)
    got = [next(first)[0] for _ in range(3)]
    resumed = DataLoader(SampleStream(paths, SEQ, 0), micro_batch_size=3)
    resumed.load_state_dict(first.state_dict())
    got += [next(resumed)[0] for _ in range(5)]
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_too_little_data_is_refused(tmp_path):
    write_shard(tmp_path / "tiny.bin", [1, 2, 3], 1, 10)
    with pytest.raises(UserError, match="3 tokens in 1 shards: expected more than seq_len=10"):
        SampleStream([tmp_path / "tiny.bin"], SEQ, 0)
    with pytest.raises(UserError, match="no token shards"):
        SampleStream([], SEQ, 0)
