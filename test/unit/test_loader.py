"""The global sample stream, its mixing by weight, and the per-rank loader's exact resume."""

import json
import shutil

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp

from tinytitan.config import Data, DataSource
from tinytitan.config.schedules import schedule_value
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


def test_a_checkpoint_saved_before_plans_refuses_other_weights_and_a_moved_folder_resumes(
    tmp_path, corpus_cache, builtin_corpus
):
    """Its settings name the sources with their shares: other weights cannot be placed in a plan."""
    state = saved_state(stream_of(corpus_cache, builtin_corpus, weights={"prose": 0.7, "code": 0.3}))
    saved = json.loads(state["position"])
    state = {"position": json.dumps({key: saved[key] for key in ("sample", "settings")})}
    with pytest.raises(UserError, match=r"resume: data.sources = .*: .* with data.sources = \"prose weight 0.7 "):
        DataLoader(stream_of(corpus_cache, builtin_corpus, weights={"prose": 0.5, "code": 0.5}), 3).load_state_dict(
            state
        )
    scheduled = stream_of(corpus_cache, builtin_corpus, weights={"prose": [[0, 0.7]], "code": 0.3})
    with pytest.raises(UserError, match=r"resume: data.sources = .*prose weight \[\[0, 0.7\]\]"):
        DataLoader(scheduled, 3).load_state_dict(state)  # the same mixture, but not one the checkpoint can tell
    moved = {name: shutil.copytree(path, tmp_path / name) for name, path in builtin_corpus.sources.items()}
    resumed = DataLoader(stream_of(corpus_cache, builtin_corpus, weights={"prose": 7, "code": 3}, moved=moved), 3)
    resumed.load_state_dict(state)  # the same data elsewhere, and the same shares of the weights
    assert resumed.position == 6


def test_a_re_prepared_source_of_the_same_name_is_refused(corpus_cache, builtin_corpus):
    state = saved_state(stream_of(corpus_cache, builtin_corpus, weights={"prose": 0.7, "code": 0.3}))
    saved = json.loads(state["position"])
    saved["plan"][-1]["sources"]["code"]["data"] = "12 train tokens, tokenizer 0123456789ab"
    resumed = DataLoader(stream_of(corpus_cache, builtin_corpus, weights={"prose": 0.7, "code": 0.3}), 3)
    with pytest.raises(UserError, match=r"resume: data source 'code': \d+ train tokens.* read it as 12 train tokens"):
        resumed.load_state_dict({"position": json.dumps(saved)})


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


# ---- weight schedules, and plans changed at resume ----


class SmallBlocks(MixedStream):
    """Blocks of 16 samples, so that a ramp spans many blocks in a few hundred samples."""

    BLOCK = 16


RAMP = [[0, 0.0], [40, 3.0]]  # 0 -> 3 over 40 steps, then 3
FALL = [[10, 2.0], [30, 0.0]]  # 2 until step 10, 0 from step 30 on


def scheduled(samples_per_step=6, block_class=SmallBlocks, weights=(RAMP, 1.0, FALL)):
    names = ["ramp", "flat", "fall"][: len(weights)]
    return block_class([Tagged(i) for i in range(len(weights))], list(weights), (5,), names, samples_per_step)


@pytest.mark.parametrize("block_class", [SmallBlocks, MixedStream])
def test_each_block_holds_each_scheduled_share_to_within_one_sample(block_class):
    # a step a block (SmallBlocks), or about 8 steps a block: either way the ramps end inside the sample
    block, blocks, samples_per_step = (16, 60, 16) if block_class is SmallBlocks else (4096, 6, 500)
    stream = scheduled(samples_per_step, block_class)
    tags = np.array([stream.sample(i)[0] for i in range(blocks * block)]).reshape(blocks, block)
    for b in range(blocks):
        step = b * block // samples_per_step  # the step the block's first sample is trained in (0-based)
        weights = [schedule_value(w, step) for w in stream.weights]
        for source, weight in enumerate(weights):
            assert abs(np.count_nonzero(tags[b] == source) - weight / sum(weights) * block) < 1, (b, source)
    samples = [stream.sample(i) for i in range(blocks * block)]
    for tag in range(3):  # each source's samples in order, none skipped or repeated
        assert [s[1] for s in samples if s[0] == tag] == list(range(np.count_nonzero(tags == tag)))
    assert np.count_nonzero(tags[0] == 0) == 0 and np.count_nonzero(tags[-1] == 2) == 0  # the ends of the ramps
    fresh = scheduled(samples_per_step, block_class)  # random access, without the earlier blocks
    assert all(np.array_equal(fresh.sample(i), samples[i]) for i in (blocks * block - 1, 5 * block + 3, 17))


def per_step(loaders, steps):
    """`steps` global batches from loaders of every rank, checking that the ranks never overlap."""
    got = []
    for _ in range(steps):
        rank_batches = [next(loader)[0] for loader in loaders]
        rows = [tuple(row.tolist()) for b in rank_batches for row in b]
        assert len(set(rows)) == len(rows)
        got.append(torch.cat(rank_batches))
    return got


@pytest.mark.parametrize("before, after, workers, stop", [(1, 2, 0, 7), (2, 3, 0, 23), (3, 1, 0, 41), (1, 3, 2, 30)])
def test_a_scheduled_mixture_resumes_exactly_on_any_ranks_and_workers(before, after, workers, stop):
    """6 samples a step: ramp and fall span steps 0..40 (15 blocks); stops mid-ramp and after it."""
    single = per_step([DataLoader(scheduled(), 6)], 50)

    def loaders(world_size, state=None):
        made = [DataLoader(scheduled(), 6 // world_size, r, world_size, num_workers=workers) for r in range(world_size)]
        for loader in made if state else []:
            loader.load_state_dict(state)
        return made

    first = loaders(before)
    head = per_step(first, stop)
    states = [loader.state_dict() for loader in first]
    assert all(state == states[0] for state in states)
    resumed = loaders(after, states[0])
    tail = per_step(resumed, 50 - stop)
    for loader in first + resumed:
        loader.close()
    assert all(torch.equal(a, b) for a, b in zip(head + tail, single, strict=True))


def test_a_resume_with_other_weights_and_a_new_source_continues_each_source(capsys):
    """Saved at step 7 (sample 42) with two sources; resumed with other weights and a third source,
    then saved and resumed again inside the new segment (exact, O(1))."""
    first = DataLoader(scheduled(weights=(RAMP, 1.0)), 6)
    before = per_step([first], 7)
    changed = dict(weights=(1.0, [[0, 1.0], [20, 4.0]], 2.0))  # ramp is constant now, flat scheduled, fall new
    resumed = DataLoader(scheduled(**changed), 6)
    resumed.load_state_dict(first.state_dict())
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(
        "resume: data source 'ramp': weight [[0, 0.0], [40, 3.0]] -> 1.0 from sample 42 (step 7)"
    )
    assert "'flat': weight 1.0 -> [[0, 1.0], [20, 4.0]]" in lines[1] and "'fall' is new" in lines[2]
    after = per_step([resumed], 23)
    rows = torch.cat(before + after)[:, :2].tolist()
    for tag in range(3):  # no sample of any source skipped or repeated across the change; the new one from 0
        assert [k for t, k in rows if t == tag] == list(range(sum(t == tag for t, _ in rows)))
    shares = scheduled(samples_per_step=6, block_class=SmallBlocks, weights=changed["weights"])
    for b in range(1, 8):  # the new segment's blocks follow the new weights at their steps
        block = [t for t, _ in rows[42 + 16 * b : 42 + 16 * (b + 1)]]
        step = 7 + 16 * b // 6
        weights = [schedule_value(w, step) for w in shares.weights]
        for source, weight in enumerate(weights):
            assert abs(block.count(source) - weight / sum(weights) * 16) < 1, (b, source)
    again = DataLoader(scheduled(**changed), 6)  # a checkpoint inside the new segment
    again.load_state_dict(resumed.state_dict())
    again_rows = torch.cat(per_step([again], 5))
    assert torch.equal(again_rows, torch.cat(per_step([resumed], 5)))
    assert json.loads(resumed.state_dict()["position"])["plan"][1]["start"] == 42
    assert capsys.readouterr().out == ""  # the same plan: nothing changes, nothing said
    assert resumed.source_counters()["data/fall/samples"] == sum(t == 2 for t, _ in rows) + sum(
        row[0] == 2 for row in again_rows.tolist()
    )


def test_a_changed_global_batch_continues_each_source_and_keeps_the_schedules_on_their_steps(capsys):
    """6 samples a step for 9 steps, then 12: the ramp's steps stay the run's steps."""
    first = DataLoader(scheduled(), 6)
    before = per_step([first], 9)
    resumed = DataLoader(scheduled(samples_per_step=12), 12)
    resumed.load_state_dict(first.state_dict())
    assert capsys.readouterr().out.strip() == (
        "resume: 6 -> 12 samples per step (training.global_batch_tokens / seq_len) from sample 54 (step 9): "
        "each source continues at its next sample"
    )
    rows = torch.cat(before + per_step([resumed], 12))[:, :2].tolist()
    for tag in range(3):
        assert [k for t, k in rows if t == tag] == list(range(sum(t == tag for t, _ in rows)))
    for b in range(8):  # block b of the new segment starts at step 9 + 16 b / 12
        block = [t for t, _ in rows[54 + 16 * b : 54 + 16 * (b + 1)]]
        weights = [schedule_value(w, 9 + 16 * b // 12) for w in (RAMP, 1.0, FALL)]
        for source, weight in enumerate(weights):
            assert abs(block.count(source) - weight / sum(weights) * 16) < 1, (b, source)


def test_a_source_left_out_at_resume_gives_no_more_samples_and_keeps_its_count(capsys):
    first = DataLoader(scheduled(), 6)
    before = torch.cat(per_step([first], 8))[:, :2].tolist()
    resumed = DataLoader(scheduled(weights=(RAMP, 1.0)), 6)
    resumed.load_state_dict(first.state_dict())
    given = sum(t == 2 for t, _ in before)
    assert (
        capsys.readouterr().out.strip()
        == f"resume: data source 'fall' is left out from sample 48 (step 8), after {given} samples"
    )
    after = torch.cat(per_step([resumed], 8))[:, :2].tolist()
    assert all(t != 2 for t, _ in after)
    for tag in range(2):
        assert [k for t, k in before + after if t == tag] == list(range(sum(t == tag for t, _ in before + after)))
    assert resumed.source_counters()["data/fall/samples"] == given  # and in the checkpoint, for the next resume
    again = DataLoader(scheduled(weights=(RAMP, 1.0)), 6)
    again.load_state_dict(resumed.state_dict())
    assert json.loads(again.state_dict()["position"])["consumed"]["fall"] == given
