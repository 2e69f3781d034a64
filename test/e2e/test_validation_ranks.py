"""Validation is a fixed set of samples over all ranks: one rank and two give the same loss."""

import pytest
from helpers import run_command, small_run


def validation_losses(run_dir) -> dict[tuple[str, int], float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    tags = [tag for tag in events.Tags()["scalars"] if tag.startswith("val/") and tag.endswith("/loss")]
    return {(tag, event.step): event.value for tag in tags for event in events.Scalars(tag)}


@pytest.mark.parametrize(
    "one, two",
    [
        # a sample count that divides into neither the ranks' micro-batches nor evenly between ranks
        (
            ["--training.micro_batch_size=8", "--validation.eval_samples=13"],
            ["--training.micro_batch_size=4", "--validation.eval_samples=13"],
        ),
    ],
)
def test_one_and_two_ranks_give_the_same_validation_loss(tmp_path, corpus_cache, one, two):
    runs = {}
    for ranks, extra in ((1, one), (2, two)):
        result = run_command(
            "./run_train.sh", *small_run(tmp_path / str(ranks), corpus_cache, *extra), env={"NGPU": str(ranks)}
        )
        assert result.returncode == 0, result.stderr[-2000:]
        runs[ranks] = validation_losses(tmp_path / str(ranks) / "debug")
    assert sorted(runs[1]) == sorted(runs[2]) and {step for _, step in runs[1]} == {5, 10}
    for key, loss in runs[1].items():
        assert runs[2][key] == pytest.approx(loss, rel=1e-5, abs=1e-5), key
