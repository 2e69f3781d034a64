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


# ---- no flavor: the shape of checkpoint.initial_load_path (e.g. a converted Hugging Face model) ----

CONVERTED = dataclasses.replace(
    FLAVORS["debug"], dim=96, n_heads=6, n_kv_heads=1, head_dim=24, vocab_size=5003, norm_eps=1e-6,
    rope_theta=500000.0, tie_embeddings=True, max_seq_len=512, rope_scaling_type="linear", rope_scaling_factor=2.0,
)  # fmt: skip


@pytest.fixture
def converted(tmp_path):
    """A checkpoint folder with the model_args.json a conversion writes (written by model_files)."""
    from tinytitan.model_files import write_model_args_file

    write_model_args_file(tmp_path, CONVERTED, None)
    return tmp_path


def resolved(*argv):
    config = load_config(list(argv))
    return model_args(config.model, 4096, config.checkpoint)


def test_no_flavor_takes_the_initial_load_paths_arguments(converted):
    assert resolved(f"--checkpoint.initial_load_path={converted}") == CONVERTED
    assert resolved(f"--checkpoint.initial_load_path={converted}", "--model.dim=96", "--model.head_dim=24") == CONVERTED
    assert resolved() == dataclasses.replace(FLAVORS["debug"], vocab_size=4096)  # no checkpoint: debug's
    assert resolved(f"--checkpoint.initial_load_path={converted / 'elsewhere'}").dim == FLAVORS["debug"].dim
    named = resolved(f"--checkpoint.initial_load_path={converted}", "--model.flavor=debug")
    assert named == dataclasses.replace(
        FLAVORS["debug"], vocab_size=4096
    )  # a named flavor is the start (checked at load)
    # the pre-check measures seq_len against the checkpoint's max_seq_len, not debug's
    load_config([f"--checkpoint.initial_load_path={converted}", "--training.seq_len=512"])


@pytest.mark.parametrize(
    "key, message",
    [
        ("--model.dim=128", "model.dim = 128: differs from 96 in "),
        ("--model.norm_eps=1e-05", "model.norm_eps = 1e-05: differs from 1e-06 in "),
        ("--model.rope_scaling_type=default", 'model.rope_scaling_type = "default": differs from "linear" in '),
        ("--model.max_seq_len=1024", "model.max_seq_len = 1024: differs from 512 in "),
    ],
)
def test_a_key_conflicting_with_the_checkpoints_arguments_is_one_line_naming_it(converted, key, message):
    with pytest.raises(ConfigError, match=message) as error:
        load_config([f"--checkpoint.initial_load_path={converted}", key])
    assert str(converted / "model_args.json") in str(error.value) and "\n" not in str(error.value)


def test_a_tokenizer_larger_than_the_checkpoints_vocabulary_is_refused(converted):
    config = load_config([f"--checkpoint.initial_load_path={converted}"])
    with pytest.raises(ConfigError, match="its vocab_size 5003 is smaller than the tokenizer's 32000 pieces"):
        model_args(config.model, 32000, config.checkpoint)


def test_the_saved_config_of_a_run_from_a_checkpoint_reads_back_alike(converted, tmp_path):
    config = load_config([f"--checkpoint.initial_load_path={converted}"])
    config.model = with_shape(config.model, model_args(config.model, 4096, config.checkpoint))
    saved = tmp_path / "config.toml"
    saved.write_text(to_toml(config))
    again = load_config([f"--job.config_file={saved}"])
    assert model_args(again.model) == model_args(again.model, 4096, again.checkpoint) == CONVERTED
