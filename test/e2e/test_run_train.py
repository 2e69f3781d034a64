"""End to end: run_train.sh trains the debug model on the built-in corpus, and reports a config
mistake in one line, for one process as for two."""

import pytest
from helpers import run_command

from tinytitan.config import load_config
from tinytitan.optim import lr_at_step


def scalars(tensorboard_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tensorboard_dir))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def test_run_train_sh_trains_the_debug_model_and_the_loss_falls(tmp_path, corpus_cache):
    result = run_command(
        "./run_train.sh",
        "--training.steps=20",
        f"--job.dump_folder={tmp_path}",
        f"--data.cache_dir={corpus_cache}",
        "--metrics.log_freq=5",
        "--lr_scheduler.warmup_steps=5",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "done: steps 1..20 in" in result.stdout
    run_dir = tmp_path / "debug"
    values = scalars(run_dir / "tb")
    assert {"loss", "lr", "grad_norm", "tokens_per_second", "memory_gib"} <= set(values)
    loss = values["loss"]
    assert sorted(loss) == [1, 5, 10, 15, 20]
    assert loss[20] < loss[1] - 1.0, loss  # from about ln(4096) = 8.3
    config = load_config([f"--job.config_file={run_dir / 'config.toml'}"])
    assert config.training.steps == 20 and config.data.cache_dir == str(corpus_cache)
    for step, lr in values["lr"].items():
        assert lr == pytest.approx(lr_at_step(step, config.optimizer.lr, config.lr_scheduler, 20), rel=1e-6)


@pytest.mark.parametrize("ngpu", ["1", "2"])
def test_run_train_sh_reports_a_config_mistake_in_one_line(ngpu):
    result = run_command("./run_train.sh", "--training.stepz=3", env={"NGPU": ngpu})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: command line: unknown key 'training.stepz': expected one of training.steps, training.seq_len, "
        "training.global_batch_tokens, training.micro_batch_size, training.max_norm, training.mixed_precision, "
        "training.device, training.seed, training.skip_nonfinite_steps, training.loss_spike_stddevs, training.gc_freq"
    ]
