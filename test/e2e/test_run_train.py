"""End to end: run_train.sh trains the debug model on the built-in corpus, then finetunes it on the
built-in conversations (train_configs/debug_sft.toml), and reports a config mistake in one line,
for one process as for two."""

import sys

import pytest
from helpers import run_command

from tinytitan.config import load_config
from tinytitan.optim import lr_at_step


def scalars(tensorboard_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tensorboard_dir))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, corpus_cache):
    """The debug recipe for 20 steps, saving its last checkpoint (the SFT test starts from it)."""
    dump = tmp_path_factory.mktemp("runs")
    result = run_command(
        "./run_train.sh",
        "--training.steps=20",
        f"--job.dump_folder={dump}",
        f"--data.cache_dir={corpus_cache}",
        "--metrics.log_freq=5",
        "--lr_scheduler.warmup_steps=5",
        "--checkpoint.enable=true",
    )
    return dump, result


def test_run_train_sh_trains_the_debug_model_and_the_loss_falls(pretrained, corpus_cache):
    tmp_path, result = pretrained
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


def test_debug_sft_finetunes_the_pretrained_model_on_answers_and_exports_its_template(pretrained, corpus_cache):
    """train_configs/debug_sft.toml from the pretraining run's checkpoint, shortened: the validation
    loss on the answers falls, and the export's tokenizer gives our template's ids in transformers."""
    dump, pretraining = pretrained
    assert pretraining.returncode == 0, pretraining.stderr[-3000:]
    result = run_command(
        "./run_train.sh",
        f"--job.dump_folder={dump}",
        f"--data.cache_dir={corpus_cache}",
        f"--checkpoint.initial_load_path={dump / 'debug/checkpoints/step-20'}",
        "--training.steps=8",
        "--training.global_batch_tokens=2048",
        "--validation.eval_freq=4",
        "--validation.eval_samples=8",
        "--checkpoint.enable=true",
        env={"CONFIG_FILE": "train_configs/debug_sft.toml"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "conversations in" in result.stdout and "(packed)" in result.stdout
    validation = scalars(dump / "debug_sft/tb")["val/chat/loss"]
    assert sorted(validation) == [4, 8] and validation[8] < validation[4] - 0.05, validation
    hf = dump / "hf"
    exported = run_command(
        sys.executable, "scripts/convert_dcp_to_hf.py", str(dump / "debug_sft/checkpoints/step-8"), str(hf)
    )
    assert exported.returncode == 0 and "chat template tinyllama" in exported.stdout, exported.stderr[-2000:]
    transformers = pytest.importorskip("transformers")
    from tinytitan.chat_templates import encode_chat
    from tinytitan.data.tokenizer import Tokenizer

    messages = [{"role": "user", "content": "What is a list?"}, {"role": "assistant", "content": "A sequence."}]
    ids = transformers.AutoTokenizer.from_pretrained(hf).apply_chat_template(messages)
    ids = list(ids if isinstance(ids, list) else ids["input_ids"])
    assert ids == encode_chat(Tokenizer(hf / "tokenizer.model"), messages)[0]


@pytest.mark.parametrize("ngpu", ["1", "2"])
def test_run_train_sh_reports_a_config_mistake_in_one_line(ngpu):
    result = run_command("./run_train.sh", "--training.stepz=3", env={"NGPU": ngpu})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: command line: unknown key 'training.stepz': expected one of training.steps, training.seq_len, "
        "training.global_batch_tokens, training.micro_batch_size, training.max_norm, training.mixed_precision, "
        "training.device, training.seed, training.skip_nonfinite_steps, training.loss_spike_stddevs, training.gc_freq"
    ]
