"""The [model] keys: the flavor as the starting point, each shape key an override, resolved in one
place (model_args) and refused in one line naming the keys."""

import dataclasses

import pytest

from tinytitan.config import ConfigError, describe_shape, load_config, model_args, to_toml, with_shape
from tinytitan.models.args import FLAVORS


def test_no_overrides_is_the_flavor():
    for name in FLAVORS:
        assert model_args(load_config([f"--model.flavor={name}"]).model) == FLAVORS[name]


def test_each_key_overrides_its_argument_and_head_dim_follows_the_new_width():
    config = load_config(
        ["--model.dim=128", "--model.n_layers=2", "--model.n_heads=4", "--model.n_kv_heads=1",
         "--model.ffn_hidden_dim=344", "--model.rope_theta=500000", "--model.tie_embeddings=true",
         "--model.rope_scaling_type=llama3", "--model.rope_scaling_factor=8", "--model.rope_original_max_seq_len=512"]
    )  # fmt: skip
    args = model_args(config.model)
    expected = dataclasses.replace(
        FLAVORS["debug"], dim=128, n_layers=2, n_heads=4, n_kv_heads=1, ffn_hidden_dim=344, rope_theta=500000.0,
        tie_embeddings=True, head_dim=32, rope_scaling_type="llama3", rope_scaling_factor=8.0,
        rope_original_max_seq_len=512,
    )  # fmt: skip
    assert args == expected
    assert "4 heads of 32 (1 kv)" in describe_shape(args) and "llama3" in describe_shape(args)


def test_vocab_size_zero_is_the_tokenizers_and_a_smaller_one_is_refused():
    model = load_config([]).model
    assert model_args(model).vocab_size == FLAVORS["debug"].vocab_size  # no tokenizer known: the flavor's
    assert model_args(model, tokenizer_vocab=32000).vocab_size == 32000
    assert model_args(load_config(["--model.vocab_size=32768"]).model, 32000).vocab_size == 32768
    with pytest.raises(ConfigError, match="model.vocab_size = 4000: expected at least the tokenizer's 4096 pieces"):
        model_args(load_config(["--model.vocab_size=4000"]).model, 4096)


def test_the_resolved_shape_saved_in_config_toml_reads_back_to_the_same_arguments(tmp_path):
    config = load_config(["--model.flavor=llama_20m", "--model.n_layers=3", "--model.head_dim=96"])
    args = model_args(config.model, 4096)
    config.model = with_shape(config.model, args)
    saved = tmp_path / "config.toml"
    saved.write_text(to_toml(config))
    assert model_args(load_config([f"--job.config_file={saved}"]).model) == args  # without the tokenizer


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model.n_heads=3"], "model.dim=256, n_heads=3: expected dim divisible by n_heads .*n_heads = 3"),
        (["--model.n_kv_heads=3"], "model.n_heads=8, n_kv_heads=3: expected n_heads divisible by n_kv_heads"),
        (["--model.head_dim=10", "--model.dim=64"], None),  # an explicit head_dim need not divide dim
        (["--model.head_dim=7"], "model.head_dim=7: expected a positive even integer"),
        (["--model.rope_scaling_type=dynamic"], 'model.rope_scaling_type="dynamic": its tables change'),
        (["--model.rope_scaling_type=yarn"], "model.rope_scaling_type='yarn': expected one of default"),
        (["--model.rope_scaling_type=llama3", "--model.rope_low_freq_factor=8"], "expected 0 < low < high"),
        (["--model.max_seq_len=128"], "training.seq_len = 256: expected at most 128, model.max_seq_len"),
        (["--model.flavor=llama_20m", "--training.seq_len=4096"], "the max_seq_len of flavor 'llama_20m'"),
    ],
)
def test_bad_shapes_are_one_line_naming_the_keys(argv, message):
    if message is None:
        assert model_args(load_config(argv).model).head_dim == 10
        return
    with pytest.raises(ConfigError, match=message) as error:
        load_config(argv)  # checked when the config is loaded: the launcher's pre-check refuses it
    assert "\n" not in str(error.value)
