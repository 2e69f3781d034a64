"""Any shape from the [model] keys, end to end: a run of a custom shape takes its vocabulary from
the Llama 2 tokenizer and saves the resolved shape; bad shapes stop before training, in one line."""

import pytest
import torch
import transformers
from helpers import LLAMA2_TOKENIZER, REPO_ROOT, run_command, run_python, small_run

from tinytitan.config import load_config, model_args
from tinytitan.model_files import load_model
from tinytitan.models.args import FLAVORS
from tinytitan.run_folder import RunFolder

SHAPE = (
    "--model.dim=128",
    "--model.n_layers=2",
    "--model.n_heads=4",
    "--model.n_kv_heads=2",
    "--model.ffn_hidden_dim=344",
)


@pytest.mark.skipif(not LLAMA2_TOKENIZER.is_file(), reason="the Llama 2 tokenizer is not beside the checkout")
def test_a_custom_shape_trains_with_the_vocabulary_of_the_llama2_tokenizer(tmp_path, corpus_cache):
    args = small_run(
        tmp_path,
        corpus_cache,
        "--training.steps=4",
        "--lr_scheduler.warmup_steps=1",
        "--validation.eval_freq=0",
        f"--data.tokenizer_path={LLAMA2_TOKENIZER}",
        *SHAPE,
    )
    result = run_command("./run_train.sh", *args, "--checkpoint.export_dtype=float32")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "dim 128, 2 layers, 4 heads of 32 (2 kv), ffn 344, vocab 32000" in result.stdout
    run = RunFolder(tmp_path / "debug")
    saved = load_config([f"--job.config_file={run.config}"])
    assert model_args(saved.model) == model_args(load_config(list(SHAPE)).model, tokenizer_vocab=32000)
    # and its export loads in transformers with our logits
    exported = run_python("scripts/convert_dcp_to_hf.py", str(run.export(4)), str(tmp_path / "hf"))
    assert exported.returncode == 0, exported.stderr[-2000:]
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    ours, _ = load_model(run.export(4), "cpu", torch.float32)
    ids = torch.randint(0, 32000, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (ours(ids) - theirs(ids).logits).abs().max().item() <= 1e-4
    assert theirs.config.vocab_size == 32000 and theirs.config.hidden_size == 128


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--model.n_heads=3",), "error: model.dim=256, n_heads=3: expected dim divisible by n_heads"),
        (("--model.rope_scaling_type=dynamic",), 'error: model.rope_scaling_type="dynamic"'),
        (("--model.head_dim=9",), "error: model.head_dim=9: expected a positive even integer"),
        (("--model.vocab_size=1000",), "error: model.vocab_size = 1000: expected at least the tokenizer's 4096"),
    ],
)
def test_a_bad_shape_is_one_line_and_exit_2(tmp_path, corpus_cache, extra, message):
    result = run_command("./run_train.sh", *small_run(tmp_path, corpus_cache, *extra))
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr[-2000:]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("flavor", [name for name in FLAVORS if name.startswith("llama_")])
def test_the_ladder_recipe_takes_each_rung(flavor):
    config = load_config([f"--job.config_file={REPO_ROOT / 'train_configs/ladder.toml'}", f"--model.flavor={flavor}"])
    assert model_args(config.model) == FLAVORS[flavor]
