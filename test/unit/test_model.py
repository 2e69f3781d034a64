import math

import pytest
import torch
import torch.nn.functional as F

from tinytitan.errors import UserError
from tinytitan.kernels.cross_entropy import cross_entropy_reference
from tinytitan.kernels.rmsnorm import rms_norm_reference
from tinytitan.kernels.rotary import rotary_reference, rotary_tables
from tinytitan.kernels.swiglu import swiglu_reference
from tinytitan.models.llama import FLAVORS, Attention, ModelArgs, Transformer, build_model, count_parameters

SMALL = ModelArgs(dim=96, n_layers=3, n_heads=6, n_kv_heads=2, vocab_size=301, ffn_hidden_dim=200, max_seq_len=64)


def expected_parameter_count(a: ModelArgs) -> int:
    attention = 2 * a.dim * a.n_heads * a.head_dim + 2 * a.dim * a.n_kv_heads * a.head_dim
    block = attention + 3 * a.dim * a.ffn_hidden_dim + 2 * a.dim
    return a.n_layers * block + 2 * a.vocab_size * a.dim + a.dim


def test_tinyllama_has_exactly_1_100_048_384_parameters_built_on_meta():
    with torch.device("meta"):
        model = Transformer(FLAVORS["tinyllama_1b"])
    assert all(p.is_meta for p in model.parameters())  # no memory spent
    assert count_parameters(model) == 1_100_048_384 == expected_parameter_count(FLAVORS["tinyllama_1b"])


def test_debug_flavor_is_a_few_million_parameters():
    with torch.device("meta"):
        model = Transformer(FLAVORS["debug"])
    assert 2_000_000 < count_parameters(model) == expected_parameter_count(FLAVORS["debug"]) < 10_000_000


def test_init_follows_tinyllama_standard_deviations():
    args = ModelArgs(dim=512, n_layers=4, n_heads=8, n_kv_heads=2, vocab_size=1000, ffn_hidden_dim=1376)
    torch.manual_seed(0)
    model = build_model(args, "cpu")
    init_std, out_std = math.sqrt(2 / (5 * 512)), 1 / math.sqrt(512) / 4
    block = model.layers["2"]
    for weight in (
        model.tok_embeddings.weight,
        model.output.weight,
        block.attention.wq.weight,
        block.attention.wk.weight,
        block.feed_forward.w1.weight,
        block.feed_forward.w3.weight,
    ):
        assert weight.std().item() == pytest.approx(init_std, rel=0.03)
        assert abs(weight.mean().item()) < init_std / 20
    for weight in (block.attention.wo.weight, block.feed_forward.w2.weight):
        assert weight.std().item() == pytest.approx(out_std, rel=0.03)
    assert torch.equal(block.ffn_norm.weight, torch.ones(512)) and torch.equal(model.norm.weight, torch.ones(512))
    cos, sin = rotary_tables(args.head_dim, args.max_seq_len, args.rope_theta)
    assert torch.equal(model.rope_cos, cos) and torch.equal(model.rope_sin, sin)


def test_init_is_reproducible_from_the_seed():
    def weights(seed):
        torch.manual_seed(seed)
        return build_model(SMALL, "cpu").state_dict()

    a, b, c = weights(1), weights(1), weights(2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["layers.0.attention.wq.weight"], c["layers.0.attention.wq.weight"])


def test_logits_are_causal():
    torch.manual_seed(0)
    model = build_model(SMALL, "cpu")
    tokens = torch.randint(0, SMALL.vocab_size, (2, 29))
    changed = tokens.clone()
    changed[:, 17:] = torch.randint(0, SMALL.vocab_size, (2, 12))
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    assert torch.allclose(a[:, :17], b[:, :17], atol=1e-6)
    assert not torch.allclose(a[:, 17:], b[:, 17:], atol=1e-3)


def rotary_by_complex_numbers(x, theta):
    """Independent RoPE: pair dimension i with i + half as the complex number x_i + j x_{i+half}."""
    seq, half = x.shape[1], x.shape[-1] // 2
    inv_freq = theta ** (-torch.arange(half, dtype=torch.float64) * 2 / x.shape[-1])
    rotation = torch.polar(
        torch.ones(seq, half, dtype=torch.float64), torch.outer(torch.arange(seq, dtype=torch.float64), inv_freq)
    )
    z = torch.complex(x[..., :half].double(), x[..., half:].double()) * rotation[:, None, :]
    return torch.cat((z.real, z.imag), dim=-1).float()


def test_rotary_matches_complex_rotation_on_odd_shapes():
    x = torch.randn(3, 37, 5, 22)
    cos, sin = rotary_tables(22, 64, 500.0)
    assert torch.allclose(rotary_reference(x, cos[:37], sin[:37]), rotary_by_complex_numbers(x, 500.0), atol=1e-5)


def naive_attention(attention: Attention, x, cos, sin):
    b, t, _ = x.shape
    q = rotary_by_complex_numbers(attention.wq(x).view(b, t, attention.n_heads, -1), 10000.0).transpose(1, 2)
    k = rotary_by_complex_numbers(attention.wk(x).view(b, t, attention.n_kv_heads, -1), 10000.0).transpose(1, 2)
    v = attention.wv(x).view(b, t, attention.n_kv_heads, -1).transpose(1, 2)
    groups = attention.n_heads // attention.n_kv_heads
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    out = scores.softmax(-1) @ v
    return attention.wo(out.transpose(1, 2).reshape(b, t, -1))


def test_grouped_query_attention_matches_a_naive_implementation():
    torch.manual_seed(0)
    model = build_model(SMALL, "cpu")
    attention = model.layers["1"].attention
    x = torch.randn(2, 23, SMALL.dim)
    with torch.no_grad():
        ours = attention(x, model.rope_cos[:23], model.rope_sin[:23])
        assert torch.allclose(ours, naive_attention(attention, x, None, None), atol=1e-5)


def test_rms_norm_and_swiglu_references():
    x, w = torch.randn(7, 33), torch.randn(33)
    assert torch.allclose(rms_norm_reference(x, w, 1e-5), F.rms_norm(x, (33,), w, 1e-5), atol=1e-6)
    gate, up = torch.randn(5, 19), torch.randn(5, 19)
    assert torch.allclose(swiglu_reference(gate, up), gate * torch.sigmoid(gate) * up, atol=1e-6)


def test_cross_entropy_averages_non_ignored_labels_and_is_zero_when_all_are_ignored():
    logits, labels = torch.randn(4, 9, 50) * 10, torch.randint(0, 50, (4, 9))
    labels[0, :5] = -100
    kept = labels != -100
    expected = F.cross_entropy(logits[kept], labels[kept])
    assert torch.allclose(cross_entropy_reference(logits, labels), expected, atol=1e-6)
    all_ignored = torch.full_like(labels, -100)
    logits.requires_grad_(True)
    loss = cross_entropy_reference(logits, all_ignored)
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(logits.grad) == 0


def test_forward_with_labels_returns_the_loss_of_the_logits():
    torch.manual_seed(0)
    model = build_model(SMALL, "cpu")
    tokens, labels = torch.randint(0, SMALL.vocab_size, (2, 13)), torch.randint(0, SMALL.vocab_size, (2, 13))
    with torch.no_grad():
        expected = F.cross_entropy(model(tokens).flatten(0, 1), labels.flatten())
        assert torch.allclose(model(tokens, labels), expected, atol=1e-6)


def test_too_long_sequences_and_bad_arguments_are_refused():
    model = build_model(SMALL, "cpu")
    with pytest.raises(ValueError, match="longer than max_seq_len=64"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(UserError, match="n_heads divisible by n_kv_heads"):
        ModelArgs(dim=96, n_layers=1, n_heads=6, n_kv_heads=4, vocab_size=10, ffn_hidden_dim=10)
    with pytest.raises(UserError, match="head_dim=15: expected a positive even integer"):
        ModelArgs(dim=90, n_layers=1, n_heads=6, n_kv_heads=6, vocab_size=10, ffn_hidden_dim=10)
