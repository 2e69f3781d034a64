"""train_configs/tinyllama_1b_long_context.toml loads and resolves to TinyLlama's model at 8192
positions with linear RoPE scaling x4 (position interpolation), trained and validated at 8192, from
an initial checkpoint with the context extension opted in."""

import dataclasses

from helpers import REPO_ROOT

from tinytitan.config import accumulation_steps, check_runtime, load_config, model_args
from tinytitan.models.args import FLAVORS

RECIPE = REPO_ROOT / "train_configs/tinyllama_1b_long_context.toml"


def test_the_long_context_recipe_resolves_to_tinyllama_stretched_to_8192():
    config = load_config([f"--job.config_file={RECIPE}"])
    tinyllama = FLAVORS["tinyllama_1b"]
    expected = dataclasses.replace(tinyllama, max_seq_len=8192, rope_scaling_type="linear", rope_scaling_factor=4.0)
    assert model_args(config.model) == expected
    # position interpolation: the new length divided by the factor is the length TinyLlama was trained at
    assert config.training.seq_len == expected.max_seq_len == tinyllama.max_seq_len * expected.rope_scaling_factor
    assert config.checkpoint.initial_load_path and config.checkpoint.initial_load_extends_context
    assert config.validation.eval_freq and config.checkpoint.enable
    # one node of 8 GPUs, as the launcher's pre-check sees it: 8 micro-steps of 8192 tokens per GPU
    check_runtime(config, 8, 8, 8)
    assert accumulation_steps(config.training, 8) == 8
