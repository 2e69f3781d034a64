"""The training loop in this process on the debug model and the built-in corpus: gradient
accumulation, mixed sources and their validation, synthetic tokens, and setups refused."""

import pytest
from helpers import LLAMA2_TOKENIZER, debug_config

from tinytitan.errors import UserError
from tinytitan.optim import lr_at_step
from tinytitan.train import train


def losses(records):
    return {record["step"]: record["loss"] for record in records}


def losses_with_micro_batch(tmp_path, corpus_cache, micro_batch_size: int) -> dict[int, float]:
    """4 steps of 512 tokens each, made of micro-batches of this size."""
    return losses(
        train(
            debug_config(
                tmp_path,
                corpus_cache,
                "--training.steps=4",
                "--lr_scheduler.warmup_steps=3",
                f"--training.micro_batch_size={micro_batch_size}",
                "--training.global_batch_tokens=512",
            )
        )
    )


def test_gradient_accumulation_matches_one_big_micro_batch(tmp_path, corpus_cache):
    whole = losses_with_micro_batch(tmp_path, corpus_cache, 8)
    accumulated = losses_with_micro_batch(tmp_path, corpus_cache, 2)
    assert sorted(whole) == [1, 2, 3, 4]
    for step in whole:
        assert accumulated[step] == pytest.approx(whole[step], rel=1e-4)
    assert whole[4] != whole[1]


def test_training_mixes_prepared_sources_and_validates_each(tmp_path, builtin_corpus):
    """Code's weight is scheduled from 0: all 4 steps (32 samples) lie in the first block, at step 0."""
    sources = ", ".join(
        f'{{name="{name}", path="{path}", weight={w}}}'
        for (name, path), w in zip(builtin_corpus.sources.items(), (3, "[[0, 0.0], [100, 1.0]]"))
    )
    records = train(
        debug_config(
            tmp_path,
            "unused",
            "--training.steps=4",
            "--lr_scheduler.warmup_steps=3",
            "--training.global_batch_tokens=512",
            "--data.dataset=sources",
            f"--data.sources=[{sources}]",
            "--validation.eval_freq=2",
            "--validation.eval_steps=2",
            f"--data.tokenizer_path={builtin_corpus.tokenizer_path}",
        )
    )
    assert [record["step"] for record in records] == [1, 2, 3, 4]
    assert [(r["data/prose/samples"], r["data/prose/tokens_seen"], r["data/code/samples"]) for r in records] == [
        (8 * step, 8 * step * 64, 0) for step in (1, 2, 3, 4)
    ]
    for step in (2, 4):
        assert {"val/prose/loss", "val/code/loss", "val/prose/perplexity"} <= set(records[step - 1])
    assert records[3]["val/prose/loss"] < records[1]["val/prose/loss"]  # it learns
    assert "val/prose/loss" not in records[0]


def test_synthetic_tokens_need_no_tokenizer_and_cover_the_vocabulary(tmp_path):
    records = train(
        debug_config(
            tmp_path,
            "unused",
            "--training.steps=2",
            "--lr_scheduler.warmup_steps=1",
            "--training.global_batch_tokens=512",
            "--data.dataset=synthetic",
        )
    )
    assert records[0]["loss"] > 8.0  # uniform tokens over 4096 ids: ln(4096) = 8.32, nothing to learn


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["--training.global_batch_tokens=1000"],
            "expected a multiple of micro_batch_size x seq_len x ranks = 8 x 64 x 1 = 512",
        ),
        (["--data.dataset=sources", '--data.sources=[{name="x", path="EMPTY"}]'], "manifest.json: no such file"),
        (
            [
                "--data.dataset=sources",
                '--data.sources=[{name="x", path="PROSE"}]',
                f"--data.tokenizer_path={LLAMA2_TOKENIZER}",
            ],
            "tokenized with sha256",
        ),
    ],
)
def test_bad_setups_are_user_errors(tmp_path, corpus_cache, builtin_corpus, overrides, message):
    if not LLAMA2_TOKENIZER.is_file() and any(str(LLAMA2_TOKENIZER) in o for o in overrides):
        pytest.skip("needs a second tokenizer: the Llama 2 one")
    overrides = [
        o.replace("EMPTY", str(tmp_path)).replace("PROSE", str(builtin_corpus.sources["prose"])) for o in overrides
    ]
    with pytest.raises(UserError, match=message):
        train(debug_config(tmp_path, corpus_cache, "--training.steps=1", "--lr_scheduler.warmup_steps=0", *overrides))


@pytest.mark.skipif(not LLAMA2_TOKENIZER.is_file(), reason="the Llama 2 tokenizer is not beside the checkout")
def test_tokenizer_larger_than_the_model_vocabulary_is_refused(tmp_path):
    # refused by the shape's resolution, before any data source is read (model.vocab_size names the key)
    with pytest.raises(UserError, match=r"model.vocab_size = 4096: expected at least the tokenizer's 32000 pieces"):
        train(
            debug_config(
                tmp_path,
                tmp_path / "cache",
                "--training.steps=1",
                "--lr_scheduler.warmup_steps=0",
                f"--data.tokenizer_path={LLAMA2_TOKENIZER}",
                "--model.vocab_size=4096",  # an explicit vocabulary: 0 would take the tokenizer's
            )
        )


def test_triton_kernels_on_cpu_need_the_interpreter(tmp_path, corpus_cache, monkeypatch):
    monkeypatch.setattr("tinytitan.kernels._common.INTERPRET", False)
    with pytest.raises(UserError, match='model.kernels = "triton": the device is cpu'):
        train(
            debug_config(
                tmp_path, corpus_cache, "--training.steps=1", "--lr_scheduler.warmup_steps=0", "--model.kernels=triton"
            )
        )


# ---- continued pretraining: a resume with a changed plan, and a cooldown from a stable checkpoint ----

TINY = [
    "--model.dim=64",
    "--model.n_layers=2",
    "--model.n_heads=4",
    "--model.n_kv_heads=2",
    "--model.ffn_hidden_dim=128",
    "--training.global_batch_tokens=256",
    "--training.micro_batch_size=4",
    "--data.num_workers=0",
    "--checkpoint.enable",
    "--checkpoint.keep_latest_k=0",
]


def tiny_run(tmp_path, corpus_cache, *overrides):
    return train(debug_config(tmp_path, corpus_cache, *TINY, *overrides))


def test_a_resume_with_more_steps_another_lr_and_schedule_runs_the_new_formula(
    tmp_path, corpus_cache, capsys, one_torch_thread
):
    tiny_run(tmp_path, corpus_cache, "--training.steps=4", "--lr_scheduler.warmup_steps=2", "--checkpoint.interval=4")
    changed = ["--training.steps=8", "--optimizer.lr=8e-4", "--lr_scheduler.decay_type=wsd"]
    changed += ["--lr_scheduler.decay_steps=3", "--optimizer.weight_decay=0.05", "--lr_scheduler.warmup_steps=2"]
    config = debug_config(tmp_path, corpus_cache, *TINY, *changed)
    records = train(config)
    assert [r["step"] for r in records] == list(range(5, 9))
    for record in records:  # the first resumed step included: never the checkpoint's lr
        assert record["lr"] == lr_at_step(record["step"], 8e-4, config.lr_scheduler, 8)
    out = capsys.readouterr().out
    assert "resume: training.steps 4 -> 8: the lr follows the config's schedule from step 5" in out
    assert "resume: optimizer.lr 0.003 -> 0.0008" in out and "resume: lr_scheduler.decay_type cosine -> wsd" in out
    assert "resume: optimizer weight_decay 0.1 -> 0.05 (the config's) from the next step" in out


def test_a_cooldown_from_a_stable_checkpoint_is_the_uninterrupted_decay_bit_for_bit(
    tmp_path, corpus_cache, one_torch_thread
):
    """6 steps of WSD (decay over the last 2) against the same run's step-4 checkpoint cooled down
    in a new run of 2 steps, carrying the optimizer state and the data position."""
    wsd = ["--lr_scheduler.decay_type=wsd", "--lr_scheduler.decay_steps=2", "--lr_scheduler.decay_shape=1-sqrt"]
    whole = tiny_run(
        tmp_path,
        corpus_cache,
        "--training.steps=6",
        "--lr_scheduler.warmup_steps=1",
        "--checkpoint.interval=4",
        "--checkpoint.export_dtype=float32",
        *wsd,
    )
    stable = tmp_path / "debug/checkpoints/step-4"
    cooldown = [f"--checkpoint.initial_load_path={stable}", "--checkpoint.initial_load_data", "--training.steps=2"]
    cooldown += ["--lr_scheduler.warmup_steps=0", *wsd]
    carried = tiny_run(tmp_path, corpus_cache, "--job.name=cool", "--checkpoint.initial_load_optimizer", *cooldown)
    for key in ("loss", "grad_norm", "lr", "data/prose/tokens_seen", "data/code/samples"):
        assert [r[key] for r in carried] == [r[key] for r in whole[4:]], key
    assert whole[-1]["data/prose/tokens_seen"] + whole[-1]["data/code/tokens_seen"] == 6 * 256
    fresh_moments = tiny_run(tmp_path, corpus_cache, "--job.name=fresh", *cooldown)
    assert fresh_moments[0]["loss"] == whole[4]["loss"] and fresh_moments[1]["loss"] != whole[5]["loss"]
    export = tmp_path / "debug/checkpoints/step-6-model"  # weights only: no optimizer state to carry
    with pytest.raises(UserError, match=r"initial_load_path .*step-6-model: holds no optimizer state"):
        tiny_run(
            tmp_path,
            corpus_cache,
            "--job.name=x",
            "--checkpoint.initial_load_optimizer",
            *cooldown[1:],
            f"--checkpoint.initial_load_path={export}",
        )
