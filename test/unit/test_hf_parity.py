"""Our Llama against Hugging Face transformers' LlamaForCausalLM on the same weights."""

import dataclasses
import re

import pytest
import torch

from tinytitan.errors import UserError
from tinytitan.hf.mapping import (
    from_hf_config,
    from_hf_state_dict,
    to_hf_config,
    to_hf_name,
    to_hf_state_dict,
)
from tinytitan.models.llama import FLAVORS, ModelArgs, build_model

transformers = pytest.importorskip("transformers")

# Awkward sizes: head_dim 16, 3 query heads per KV head, odd vocabulary, non-default eps and theta.
ARGS = ModelArgs(
    dim=96,
    n_layers=3,
    n_heads=6,
    n_kv_heads=2,
    vocab_size=301,
    ffn_hidden_dim=200,
    norm_eps=1e-6,
    rope_theta=5000.0,
    max_seq_len=64,
)


def random_model(args: ModelArgs, seed: int):
    torch.manual_seed(seed)
    model = build_model(args, "cpu")
    with torch.no_grad():  # norms start at 1; make them random too so their mapping is tested
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
    return model.eval()


def hf_model(args: ModelArgs, state_dict, attention: str):
    config = transformers.LlamaConfig(**to_hf_config(args), attn_implementation=attention)
    model = transformers.LlamaForCausalLM(config).eval()
    hf_state = to_hf_state_dict(state_dict)
    if args.tie_embeddings:  # transformers' own state dict names the tied weight twice
        assert "lm_head.weight" not in hf_state
        hf_state["lm_head.weight"] = hf_state["model.embed_tokens.weight"]
    model.load_state_dict(hf_state, strict=True)
    if args.tie_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied by transformers
    return model


# Every shape option, each against transformers' own reading of the config.json we write.
VARIANTS = {
    "tied": dataclasses.replace(ARGS, tie_embeddings=True),
    "linear_scaling": dataclasses.replace(ARGS, rope_scaling_type="linear", rope_scaling_factor=4.0),
    "llama3_scaling": dataclasses.replace(
        ARGS,
        rope_theta=500000.0,
        rope_scaling_type="llama3",
        rope_scaling_factor=8.0,
        rope_low_freq_factor=1.0,
        rope_high_freq_factor=4.0,
        rope_original_max_seq_len=16,  # short, so that all three frequency bands occur at head_dim 16
    ),
    "theta_500000": dataclasses.replace(ARGS, rope_theta=500000.0),
    "head_dim_24": dataclasses.replace(ARGS, head_dim=24),
    "one_kv_head": dataclasses.replace(ARGS, n_kv_heads=1),
    "kv_heads_equal_heads": dataclasses.replace(ARGS, n_kv_heads=6),
    "odd_vocabulary": dataclasses.replace(ARGS, vocab_size=1009),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_float32_logits_match_transformers_for_every_shape_option(variant):
    args = VARIANTS[variant]
    ours = random_model(args, 7)
    theirs = hf_model(args, ours.state_dict(), "eager")
    assert from_hf_config(theirs.config.to_dict()) == args  # transformers' config reads back to the same shape
    tokens = torch.randint(0, args.vocab_size, (2, 64), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = theirs(tokens).logits
        got = ours(tokens)
    assert (got - expected).abs().max().item() <= 1e-4
    assert expected.abs().max().item() > 0.1
    back = from_hf_state_dict(theirs.state_dict(), tied=args.tie_embeddings)
    assert set(back) == set(ours.state_dict())


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("seed, batch, seq", [(0, 3, 37), (1, 1, 64), (2, 4, 1)])
def test_float32_logits_match_transformers(attention, seed, batch, seq):
    ours = random_model(ARGS, seed)
    theirs = hf_model(ARGS, ours.state_dict(), attention)
    tokens = torch.randint(0, ARGS.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(seed + 100))
    with torch.no_grad():
        expected = theirs(tokens).logits
        got = ours(tokens)
    assert got.shape == expected.shape == (batch, seq, ARGS.vocab_size)
    assert (got - expected).abs().max().item() <= 1e-4
    assert expected.abs().max().item() > 0.1  # the comparison is not between near-zero tensors


def test_state_dict_round_trips_through_transformers_names():
    ours = random_model(ARGS, 3)
    theirs = hf_model(ARGS, ours.state_dict(), "eager")
    back = from_hf_state_dict(theirs.state_dict())
    assert set(back) == set(ours.state_dict())
    assert all(torch.equal(back[name], tensor) for name, tensor in ours.state_dict().items())


def test_config_round_trips_through_a_transformers_config():
    for args in (ARGS, FLAVORS["tinyllama_1b"]):
        config = transformers.LlamaConfig(**to_hf_config(args))
        assert from_hf_config(config.to_dict()) == args
        assert from_hf_config(to_hf_config(args)) == args


@pytest.mark.parametrize(
    "config, message",
    [
        ({"model_type": "gpt2"}, "model_type='gpt2': expected 'llama' (or 'mistral')"),
        (
            {**to_hf_config(ARGS), "model_type": "mistral", "sliding_window": 32},
            "sliding_window=32: expected null or at least max_position_embeddings=64",
        ),
        ({**to_hf_config(ARGS), "mlp_bias": True}, "mlp_bias=true: expected no biases"),
        ({"model_type": "llama", "hidden_size": 64}, "no 'num_attention_heads'"),
        ({**to_hf_config(ARGS), "head_dim": 15}, "head_dim=15: expected a positive even integer"),
        ({**to_hf_config(ARGS), "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "has no 'low_freq_factor'"),
        ({**to_hf_config(ARGS), "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope type 'yarn'"),
        (
            {**to_hf_config(ARGS), "rope_parameters": {"rope_type": "default"}, "rope_scaling": {"type": "dynamic"}},
            "rope type 'dynamic'",
        ),
        ({**to_hf_config(ARGS), "hidden_act": "gelu"}, "hidden_act='gelu': expected 'silu'"),
        ({**to_hf_config(ARGS), "attention_bias": True}, "attention_bias=true: expected no biases"),
    ],
)
def test_unsupported_configs_are_refused(config, message):
    with pytest.raises(UserError, match=re.escape(message) if "(" in message else message) as error:
        from_hf_config(config)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("window", [None, 64, 4096])
def test_a_mistral_without_a_sliding_window_is_llama(window):
    """MistralForCausalLM with no window, or one covering max_position_embeddings, is the same model."""
    config = transformers.MistralConfig(**{**to_hf_config(ARGS), "model_type": "mistral"}, sliding_window=window)
    torch.manual_seed(11)
    theirs = transformers.MistralForCausalLM(config).eval()
    args = from_hf_config(config.to_dict())
    assert args == ARGS
    ours = build_model(args, "cpu").eval()
    ours.load_state_dict(from_hf_state_dict(theirs.state_dict()))
    tokens = torch.randint(0, ARGS.vocab_size, (2, 64), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert (ours(tokens) - theirs(tokens).logits).abs().max().item() <= 1e-4


def test_a_tied_folder_that_stores_lm_head_is_read_as_one_embedding(tmp_path):
    """Some tied checkpoints save lm_head.weight too (a copy of the embedding): it is dropped, not
    read as an untied output head that the model does not have."""
    import json

    from safetensors.torch import save_file

    from tinytitan.hf.folder import read_hf_folder

    args = VARIANTS["tied"]
    state = {name: tensor.clone() for name, tensor in to_hf_state_dict(random_model(args, 2).state_dict()).items()}
    state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(to_hf_config(args)))
    read_args, tensors = read_hf_folder(tmp_path)
    assert read_args == args
    assert set(tensors) == set(random_model(args, 2).state_dict())  # no output.weight


def test_unknown_names_are_refused():
    with pytest.raises(UserError, match="layers.0.attention.wz.weight"):
        to_hf_name("layers.0.attention.wz.weight")
    with pytest.raises(UserError, match="not a Hugging Face"):
        from_hf_state_dict({"model.layers.0.self_attn.q_norm.weight": torch.ones(1)})
