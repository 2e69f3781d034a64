"""Continuing a model at a longer context: a debug model trained at seq_len 256 (max_seq_len 256)
goes on at 512 with linear RoPE scaling x2 (position interpolation) and max_seq_len 512, through
checkpoint.initial_load_path with checkpoint.initial_load_extends_context; its validation loss at
512 is logged. Without the opt-in, and at a resume of the same run, the changed fields are refused."""

import math

import pytest
from helpers import finish, launch, micro_batch, run_command
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

FRESH_LOSS = math.log(4096)  # an untrained model's loss over the debug vocabulary: ~8.32


def run(root, corpus_cache, name, seq_len, steps, *extra):
    return [
        f"--job.dump_folder={root}",
        f"--job.name={name}",
        "--model.flavor=debug",  # named, so the checkpoint's arguments are checked against it (not adopted)
        f"--data.cache_dir={corpus_cache}",
        "--data.num_workers=0",
        f"--training.steps={steps}",
        f"--training.seq_len={seq_len}",
        f"--model.max_seq_len={seq_len}",
        f"--training.global_batch_tokens={8 * seq_len}",
        "--metrics.log_freq=1",
        "--lr_scheduler.warmup_steps=1",
        "--checkpoint.enable",
        f"--checkpoint.interval={steps}",
        *extra,
    ]


def scalars(run_dir) -> dict[str, dict[int, float]]:
    """Every TensorBoard scalar of a run folder: {tag: {step: value}}."""
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


LONGER = ("--model.rope_scaling_type=linear", "--model.rope_scaling_factor=2")


@pytest.fixture(scope="module")
def short(tmp_path_factory, corpus_cache):
    """A debug model trained 12 steps at seq_len 256 = its max_seq_len."""
    root = tmp_path_factory.mktemp("long_context")
    finish(launch(run(root, corpus_cache, "short", 256, 12)))
    return root, scalars(root / "short")["loss"][12]


def test_a_model_trained_at_256_continues_at_512_with_linear_scaling(short, corpus_cache):
    root, last_short_loss = short
    start = f"--checkpoint.initial_load_path={root / 'short/checkpoints/step-12'}"
    extension = (start, "--checkpoint.initial_load_extends_context", *LONGER)
    args = run(
        root, corpus_cache, "long", 512, 2, *extension, "--validation.eval_freq=2", "--validation.eval_samples=8"
    )
    output = finish(launch(args))
    assert (
        f"context extension from {root / 'short/checkpoints/step-12'}: max_seq_len 256 -> 512, "
        "rope_scaling_type 'default' -> 'linear', rope_scaling_factor 1.0 -> 2.0" in output
    )
    logged = scalars(root / "long")
    validation = {tag: values[2] for tag, values in logged.items() if tag.startswith("val/") and tag.endswith("/loss")}
    assert set(validation) == {"val/prose/loss", "val/code/loss"}, logged.keys()
    assert all(math.isfinite(loss) for loss in validation.values()), validation
    # The weights and the interpolated positions carried over: the first step at 512 starts where the
    # model at 256 ended, far below a fresh model.
    first_long_loss = logged["loss"][1]
    assert abs(first_long_loss - last_short_loss) < 0.5, (first_long_loss, last_short_loss)
    assert first_long_loss < FRESH_LOSS - 1.0, first_long_loss

    # A resume of that run with the RoPE changed again is refused, opt-in or not: its own checkpoints
    # were saved with its model.
    again = run(root, corpus_cache, "long", 512, 3, *extension[:2], "--model.rope_scaling_type=linear")
    result = run_command("./run_train.sh", *again, "--model.rope_scaling_factor=4", micro_batch(1))
    assert result.returncode == 2, result.stdout[-2000:]
    assert result.stderr.strip() == (
        f"error: checkpoint {root / 'long/checkpoints/step-2'}: rope_scaling_factor = 2.0 in the checkpoint's "
        "model_args.json, 4.0 in this run's model (a run resumes with the model it was started with: set those "
        "[model] keys back, or train in another job.name)"
    )


def test_without_the_opt_in_a_longer_context_is_refused_naming_the_fields(short, corpus_cache):
    root, _ = short
    start = f"--checkpoint.initial_load_path={root / 'short/checkpoints/step-12'}"
    result = run_command("./run_train.sh", *run(root, corpus_cache, "refused", 512, 2, start, *LONGER), micro_batch(1))
    assert result.returncode == 2, result.stdout[-2000:]
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(
        f"error: checkpoint.initial_load_path {root / 'short/checkpoints/step-12'}: max_seq_len = 256 in the "
        "checkpoint's model_args.json, 512 in this run's model; rope_scaling_type = 'default' in the checkpoint's "
        "model_args.json, 'linear' in this run's model; rope_scaling_factor = 1.0 in the checkpoint's "
        "model_args.json, 2.0 in this run's model ("
    )
    assert "checkpoint.initial_load_extends_context = true" in line
    assert not (root / "refused/checkpoints/step-2").exists()


def test_the_opt_in_still_refuses_a_shorter_context_and_other_fields(short, corpus_cache):
    root, _ = short
    start = f"--checkpoint.initial_load_path={root / 'short/checkpoints/step-12'}"
    opt_in = (start, "--checkpoint.initial_load_extends_context")
    shorter = run(root, corpus_cache, "shorter", 128, 2, *opt_in)
    other = run(root, corpus_cache, "other", 256, 2, *opt_in, "--model.norm_eps=1e-6")
    for args, field in (
        (shorter, "max_seq_len = 256 in the checkpoint's model_args.json, 128 in this run's model"),
        (other, "norm_eps = 1e-05 in the checkpoint's model_args.json, 1e-06 in this run's model"),
    ):
        result = run_command("./run_train.sh", *args, micro_batch(1))
        assert result.returncode == 2, result.stdout[-2000:]
        [line] = result.stderr.strip().splitlines()
        assert line.startswith(f"error: checkpoint.initial_load_path {root / 'short/checkpoints/step-12'}: {field} (")
