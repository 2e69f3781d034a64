"""Batched and speculative generation against one prompt at a time and the target's own decoding:
left padding leaves every real position's logits as they are alone (rotary embeddings are
relative), batched greedy equals one-by-one with rows ending at different times, speculative greedy
equals the target's greedy for any draft, and speculative sampling draws from the target's exact
distribution (a chi-square test that the draft's own distribution fails)."""

import math

import pytest
import torch

from tinytitan.errors import UserError
from tinytitan.generation import (
    PAD_ID,
    Sampling,
    accept_guesses,
    generate,
    generate_batch,
    generate_speculative,
    probabilities,
)
from tinytitan.models.llama import KVCache, ModelArgs, build_model

VOCAB = 97


def tiny_model(seed: int, n_layers: int = 2, dim: int = 64, vocab: int = VOCAB, **extra):
    torch.manual_seed(seed)
    args = ModelArgs(dim=dim, n_layers=n_layers, n_heads=4, n_kv_heads=2, vocab_size=vocab, ffn_hidden_dim=96, **extra)
    return build_model(args, "cpu").eval()


@pytest.fixture(scope="module")
def target(one_torch_thread):
    return tiny_model(0, max_seq_len=96)


def random_prompts(lengths, seed=1, vocab=VOCAB):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab, (n,), generator=generator).tolist() for n in lengths]


@torch.no_grad()
def test_left_padding_leaves_each_rows_logits_as_they_are_alone(target):
    """The claim that lets batched decoding skip per-row position shifts: a row that starts at
    position 9 sees the attention scores it would see starting at 0 (float rounding aside)."""
    prompts = random_prompts([10, 1, 4, 7])
    width = 10
    padded = torch.tensor([[PAD_ID] * (width - len(p)) + p for p in prompts])
    cache = KVCache(target.args, len(prompts), width, "cpu")
    cache.mask_padding(padded == PAD_ID)  # the prompts hold no PAD_ID: their tokens start at 1
    batched = target(padded, cache=cache)
    for row, prompt in enumerate(prompts):
        alone = target(torch.tensor([prompt]))[0]
        shifted = batched[row, width - len(prompt) :]
        assert (shifted - alone).abs().max().item() < 2e-5 * alone.abs().max().item()
    assert torch.isfinite(batched).all()  # the padding rows of attention see themselves: no NaN


def test_batched_greedy_generation_equals_one_by_one_with_rows_stopping_on_their_own(target):
    prompts = random_prompts([5, 1, 12, 3, 8], seed=2)
    alone = [generate(target, prompt, 20) for prompt in prompts]
    assert generate_batch(target, prompts, 20) == alone
    # An end of sequence that some rows reach early and others never: each row stops by itself.
    eos = alone[0][4]
    expected = [row[: row.index(eos) + 1] if eos in row else row for row in alone]
    assert len({len(row) for row in expected}) > 1
    assert generate_batch(target, prompts, 20, eos_id=eos) == expected
    assert [generate(target, prompt, 20, eos_id=eos, use_cache=False) for prompt in prompts] == expected


def test_speculative_greedy_is_the_targets_greedy_for_any_draft(target):
    untrained = tiny_model(5, n_layers=1, dim=32, max_seq_len=96)  # another shape, other weights
    prompts = random_prompts([6, 1], seed=3)
    expected = [generate(target, prompt, 12) for prompt in prompts]
    for draft_tokens in (1, 4, 8):
        by_itself = [generate_speculative(target, target, prompt, 12, draft_tokens) for prompt in prompts]
        by_untrained = [generate_speculative(target, untrained, prompt, 12, draft_tokens) for prompt in prompts]
        assert [result.tokens for result in by_itself] == expected, draft_tokens
        assert [result.tokens for result in by_untrained] == expected, draft_tokens
        assert all(result.acceptance_rate == 1.0 for result in by_itself)
        assert sum(r.accepted for r in by_untrained) / sum(r.proposed for r in by_untrained) < 0.5
    # ending at an end of sequence in the middle of a round of guesses
    eos = expected[0][5]
    result = generate_speculative(target, untrained, prompts[0], 12, 8, eos_id=eos)
    assert result.tokens == generate(target, prompts[0], 12, eos_id=eos)


def joint_distribution(model, prompt, sampling) -> torch.Tensor:
    """The exact probability of each pair of first two new tokens [vocab, vocab]."""
    with torch.no_grad():
        first = probabilities(model(torch.tensor([prompt]))[0, -1], sampling)
        tokens = torch.tensor([prompt + [a] for a in range(first.shape[0])])
        second = probabilities(model(tokens)[:, -1], sampling)
    first, second = first / first.sum(), second / second.sum(-1, keepdim=True)
    return first[:, None] * second


def chi_square(counts: torch.Tensor, expected_probs: torch.Tensor) -> tuple[float, float]:
    """The statistic over the cells of nonzero expectation, and its 0.9995 quantile for that many
    degrees of freedom (Wilson-Hilferty: accurate to a few percent there)."""
    total = counts.sum().item()
    cells = expected_probs > 0
    assert counts[~cells].sum() == 0, "a token pair the distribution cannot give was drawn"
    expected = expected_probs[cells] * total
    statistic = ((counts[cells] - expected) ** 2 / expected).sum().item()
    df = cells.sum().item() - 1
    z = 3.29  # the standard normal's 0.9995 quantile
    return statistic, df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def test_the_acceptance_rule_gives_the_targets_distribution():
    """One guess drawn from q, kept or replaced by accept_guesses: distributed as p, whatever q is."""
    p = torch.tensor([0.05, 0.4, 0.25, 0.3, 0.0])
    q = torch.tensor([0.5, 0.1, 0.1, 0.2, 0.1])  # guesses a token p never gives, and overweights others
    generator, draws = torch.Generator().manual_seed(0), 4000
    counts = torch.zeros(5)
    for _ in range(draws):
        guess = int(torch.multinomial(q, 1, generator=generator))
        kept, replacement = accept_guesses([guess], torch.stack([p, p]), [q], generator)
        counts[guess if kept else replacement] += 1
    statistic, limit = chi_square(counts, p)
    assert statistic < limit
    assert chi_square(counts, q)[0] > 10 * limit  # the test can tell q from p


def test_speculative_sampling_draws_from_the_targets_distribution(one_torch_thread):
    """The whole loop (guesses, rollbacks, rounds): 500 draws of the first two new tokens of a
    4-token vocabulary (16 cells), hot and top-p cut; plain sampling beside it."""
    vocab, runs, prompt = 4, 500, [1, 3, 2]
    small_target = tiny_model(10, n_layers=1, dim=32, vocab=vocab)
    small_draft = tiny_model(11, n_layers=1, dim=32, vocab=vocab)
    # Larger logits than an initialised model has, so that the two models' distributions differ.
    for model, scale in ((small_target, 2.0), (small_draft, -2.0)):
        with torch.no_grad():
            model.output.weight.mul_(scale)
    sampling = Sampling(temperature=1.3, top_p=0.95)
    exact = joint_distribution(small_target, prompt, sampling)
    generator = torch.Generator().manual_seed(0)
    speculative, plain = torch.zeros(vocab, vocab), torch.zeros(vocab, vocab)
    accepted = 0
    for _ in range(runs):
        result = generate_speculative(small_target, small_draft, prompt, 3, 2, sampling, generator)
        speculative[result.tokens[0], result.tokens[1]] += 1
        accepted += result.accepted
    for first, second in generate_batch(small_target, [prompt] * runs, 2, sampling, generator):
        plain[first, second] += 1

    statistic, limit = chi_square(speculative, exact)
    assert statistic < limit
    assert chi_square(plain, exact)[0] < limit
    # The test can tell: the draft's own distribution (always accepting its guesses) fails it.
    assert chi_square(speculative, joint_distribution(small_draft, prompt, sampling) + 1e-9)[0] > 10 * limit
    assert 0.1 < accepted / (runs * 2) < 0.9  # both branches (accept, residual draw) were taken


def test_a_draft_with_another_vocabulary_is_refused(target):
    other = tiny_model(1, n_layers=1, dim=32, vocab=VOCAB + 1)
    with pytest.raises(UserError, match="draft model: vocabulary of 98 tokens, but the target's has 97"):
        generate_speculative(target, other, [1, 2], 4, 2)
    with pytest.raises(UserError, match="draft tokens 0: expected 1 or more"):
        generate_speculative(target, target, [1, 2], 4, 0)


def test_the_cache_forgets_truncated_positions(target):
    """What speculative decoding's rollback relies on: after a truncation, new tokens are scored as
    if the forgotten ones had never been fed."""
    tokens = random_prompts([12], seed=4)[0]
    cache = KVCache(target.args, 1, 20, "cpu")
    with torch.no_grad():
        target(torch.tensor([tokens[:8] + [5, 6, 7]]), cache=cache)
        cache.truncate(8)
        continued = target(torch.tensor([tokens[8:]]), cache=cache)[0]
        whole = target(torch.tensor([tokens]))[0, 8:]
    assert (continued - whole).abs().max().item() < 1e-5 * whole.abs().max().item() + 1e-6
    with pytest.raises(ValueError, match="cannot truncate to 13"):
        cache.truncate(13)
