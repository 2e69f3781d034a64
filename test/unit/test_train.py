"""The training loop in this process on the debug model and the built-in corpus: gradient
accumulation, mixed sources and their validation, synthetic tokens, and setups refused."""

import pytest
from helpers import LLAMA2_TOKENIZER, debug_config

from tinytitan.errors import UserError
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
    sources = ", ".join(
        f'{{name="{name}", path="{path}", weight={w}}}'
        for (name, path), w in zip(builtin_corpus.sources.items(), (3, 1))
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
