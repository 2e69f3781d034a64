"""Any Llama shape from the arguments: the size ladder against transformers' own parameter count,
the argument checks, tied embeddings (one tensor, counted once) and the RoPE scaling tables."""

import dataclasses
import math

import pytest
import torch

from tinytitan.errors import UserError
from tinytitan.hf.mapping import to_hf_config
from tinytitan.kernels.rotary import model_rotary_tables, rotary_tables
from tinytitan.metrics import flops_per_token
from tinytitan.models.llama import FLAVORS, ModelArgs, Transformer, build_model, count_parameters

transformers = pytest.importorskip("transformers")

TIED = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=97, ffn_hidden_dim=160, tie_embeddings=True)


def hf_parameter_count(args: ModelArgs) -> int:
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**to_hf_config(args)))
    return sum(p.numel() for p in model.parameters())  # parameters() counts a tied weight once


@pytest.mark.parametrize("name", sorted(FLAVORS))
def test_each_flavor_has_the_parameter_count_of_transformers_llama(name):
    args = FLAVORS[name]
    with torch.device("meta"):
        model = Transformer(args)
    assert count_parameters(model) == hf_parameter_count(args)


@pytest.mark.parametrize(
    "name, low, high",
    [("llama_20m", 15e6, 25e6), ("llama_60m", 50e6, 70e6), ("llama_160m", 140e6, 180e6), ("llama_410m", 380e6, 440e6)],
)
def test_the_ladder_is_near_its_names(name, low, high):
    assert low < hf_parameter_count(FLAVORS[name]) < high


def test_the_named_llama_shapes_are_theirs():
    assert hf_parameter_count(FLAVORS["openllama_3b"]) == 3_426_473_600
    assert hf_parameter_count(FLAVORS["llama2_7b"]) == 6_738_415_616  # Llama-2-7b-hf's count


def test_other_shapes_count_like_transformers():
    for args in (
        TIED,
        dataclasses.replace(TIED, head_dim=24),  # head_dim != dim / n_heads: projections of n_heads x head_dim
        dataclasses.replace(TIED, tie_embeddings=False, n_kv_heads=1),
    ):
        with torch.device("meta"):
            assert count_parameters(Transformer(args)) == hf_parameter_count(args)


def test_a_tied_model_holds_the_weight_once_under_the_embedding_name():
    torch.manual_seed(0)
    model = build_model(TIED, "cpu")
    state = model.state_dict()
    assert "output.weight" not in state and state["tok_embeddings.weight"].shape == (97, 64)
    assert [name for name, _ in model.named_parameters() if "embeddings" in name or "output" in name] == [
        "tok_embeddings.weight"
    ]
    # TinyLlama's std for the shared weight, drawn once
    assert model.tok_embeddings.weight.std().item() == pytest.approx(math.sqrt(2 / (5 * 64)), rel=0.1)
    tokens = torch.randint(0, 97, (2, 9))
    logits = model(tokens)
    assert torch.allclose(
        logits,
        model.norm(
            model.layers["1"](
                model.layers["0"](model.tok_embeddings(tokens), model.rope_cos[:9], model.rope_sin[:9]),
                model.rope_cos[:9],
                model.rope_sin[:9],
            )
        )
        @ model.tok_embeddings.weight.T,
        atol=1e-5,
    )
    model(tokens, torch.randint(0, 97, (2, 9))).backward()  # the head's gradient lands on the one weight
    assert model.tok_embeddings.weight.grad is not None


def test_flops_count_a_tied_weight_once_as_the_output_projection():
    untied = dataclasses.replace(TIED, tie_embeddings=False)
    with torch.device("meta"):
        tied_model, untied_model = Transformer(TIED), Transformer(untied)
    # untied: every parameter but the lookup table; tied: every parameter (the table is the head)
    assert count_parameters(untied_model, exclude_embedding=True) == count_parameters(untied_model) - 97 * 64
    assert count_parameters(tied_model, exclude_embedding=True) == count_parameters(tied_model)
    assert count_parameters(tied_model) == count_parameters(untied_model) - 97 * 64
    matmul_params = count_parameters(tied_model, exclude_embedding=True)
    assert flops_per_token(TIED, matmul_params, 32) == flops_per_token(untied, matmul_params, 32)


def test_flops_use_the_attention_width():
    wide = dataclasses.replace(TIED, head_dim=24)
    assert flops_per_token(wide, 0, 32) == 12 * 2 * 4 * 24 * 32


@pytest.mark.parametrize(
    "change, message",
    [
        ({"dim": 0}, "dim=0: expected a positive integer"),
        ({"n_heads": 5, "head_dim": 0}, "dim divisible by n_heads"),
        ({"n_kv_heads": 3}, "n_heads divisible by n_kv_heads"),
        ({"head_dim": 15}, "head_dim=15: expected a positive even integer"),
        ({"vocab_size": -1}, "vocab_size=-1"),
        ({"rope_theta": 0.0}, "rope_theta=0.0"),
        ({"rope_scaling_type": "dynamic"}, 'rope_scaling_type="dynamic"'),
        ({"rope_scaling_type": "yarn"}, "rope_scaling_type='yarn'"),
        ({"rope_scaling_type": "linear", "rope_scaling_factor": 0.0}, "rope_scaling_factor=0.0"),
        ({"rope_scaling_type": "llama3", "rope_low_freq_factor": 4.0}, "expected 0 < low < high"),
        ({"rope_scaling_type": "llama3", "rope_original_max_seq_len": 0}, "rope_original_max_seq_len=0"),
    ],
)
def test_bad_arguments_are_one_line(change, message):
    with pytest.raises(UserError, match=message) as error:
        dataclasses.replace(TIED, **change)
    assert "\n" not in str(error.value)


def test_arguments_round_trip_through_asdict():
    for args in (*FLAVORS.values(), dataclasses.replace(TIED, head_dim=24, rope_scaling_type="llama3")):
        assert ModelArgs(**dataclasses.asdict(args)) == args
    # head_dim left out is dim // n_heads, and equals the same arguments with it spelt out
    assert dataclasses.replace(TIED, head_dim=16) == TIED


def test_scaled_tables_match_transformers_rotary_embedding():
    for scaling in (
        {"rope_scaling_type": "linear", "rope_scaling_factor": 4.0},
        {"rope_scaling_type": "llama3", "rope_scaling_factor": 8.0, "rope_original_max_seq_len": 64},
    ):
        args = dataclasses.replace(TIED, max_seq_len=256, rope_theta=500000.0, head_dim=32, **scaling)
        config = transformers.LlamaConfig(**to_hf_config(args))
        rotary = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(config)
        positions = torch.arange(256)[None]
        cos, sin = rotary(torch.zeros(1, 256, 32), positions)
        ours_cos, ours_sin = model_rotary_tables(args)
        assert torch.allclose(ours_cos, cos[0], atol=1e-5) and torch.allclose(ours_sin, sin[0], atol=1e-5)
        plain_cos, _ = rotary_tables(32, 256, 500000.0)
        assert not torch.allclose(ours_cos, plain_cos, atol=1e-3)  # the scaling changed something
