"""Text generation with our model: greedy decoding, or sampling with a temperature and top-p; several
prompts at once; and speculative decoding with a small draft model.

The prompt goes through the model once, filling a KV cache; each new token then costs one
position's forward. `use_cache=False` recomputes the whole sequence at every step instead: slower,
and the reference the cached path is tested against. Sampling draws on the CPU from a generator
seeded by the caller, so a seed gives the same text on any device (for the same logits).

Several prompts are padded on the left to one length and decoded together; the cache hides the
padding from attention. No position shifts per row are needed: rotary embeddings make attention
depend only on the distance between positions, so a row's tokens see the same scores wherever
the row starts (the tests check it). Each row stops at its own end of sequence.

Speculative decoding (Leviathan et al. 2023, "Fast Inference from Transformers via Speculative
Decoding"): the draft proposes K tokens, one by one with its own cache; the target scores them all
in one forward; each is accepted with probability min(1, p/q) (target over draft probability), and
the first rejected one is replaced by a draw from the normalised max(0, p - q). Both caches then
forget the rejected positions. The tokens are distributed exactly as the target's own sampling
(greedy: they are the target's greedy tokens), only cheaper when the draft guesses well.
"""

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tinytitan.errors import UserError
from tinytitan.models.llama import KVCache, Transformer

PAD_ID = 0  # what fills the left of shorter prompts; any id would do, the cache masks it


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0: greedy (the most likely token)
    top_p: float = 1.0  # sample from the smallest set of tokens holding this much probability

    def __post_init__(self):
        # Written so that NaN fails too: every comparison with NaN is false. An infinite
        # temperature would flatten every distribution to uniform noise.
        if not (0 <= self.temperature < math.inf):
            raise UserError(f"temperature {self.temperature}: expected a finite number >= 0 (0: greedy)")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top-p {self.top_p}: expected a probability in (0, 1]")


def probabilities(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """The distribution the next token is drawn from, [..., vocab] in float32 on the CPU: the
    softmax at the temperature, cut to the top-p tokens (not renormalised: drawing does not need
    it); one-hot at the most likely token when greedy."""
    logits = logits.float().cpu()
    if sampling.temperature == 0:
        return F.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    probs = torch.softmax(logits / sampling.temperature, dim=-1)
    if sampling.top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    # Keep a token while the tokens ranked above it hold less than top_p: the first is always kept.
    outside = sorted_probs.cumsum(-1) - sorted_probs >= sampling.top_p
    return probs.scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))


def choose_token(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> int:
    """The next token from the last position's logits [vocab]."""
    if sampling.temperature == 0:
        return int(logits.argmax())
    return int(torch.multinomial(probabilities(logits, sampling), 1, generator=generator))


def check_lengths(model: Transformer, prompts: list[list[int]], max_new_tokens: int) -> None:
    if not prompts or not all(prompts):
        raise UserError("empty prompt: expected at least one token (the tokenizer's bos)")
    longest, limit = max(map(len, prompts)), model.args.max_seq_len
    if longest + max_new_tokens > limit:
        raise UserError(
            f"prompt of {longest} tokens + {max_new_tokens} new tokens: more than the model's max_seq_len of {limit}"
        )


def new_cache(model: Transformer, batch: int, length: int) -> KVCache:
    weight = model.tok_embeddings.weight
    return KVCache(model.args, batch, length, weight.device, weight.dtype)


@torch.no_grad()
def stream(
    model: Transformer,
    prompts: list[list[int]],
    max_new_tokens: int,
    sampling: Sampling = Sampling(),
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
) -> Iterator[list[int | None]]:
    """Each step's new token of every prompt, as it comes (None for a row that has ended); a row
    ends after `max_new_tokens` or at `eos_id`. Rows draw from `generator` in turn."""
    check_lengths(model, prompts, max_new_tokens)
    width = max(map(len, prompts))
    device = model.tok_embeddings.weight.device
    padding = torch.tensor([[i < width - len(p) for i in range(width)] for p in prompts])
    step_input = torch.tensor([[PAD_ID] * (width - len(p)) + p for p in prompts], device=device)
    cache = new_cache(model, len(prompts), width + max_new_tokens)
    cache.mask_padding(padding)
    ended = [False] * len(prompts)
    for _ in range(max_new_tokens):
        logits = model(step_input, cache=cache)[:, -1]
        chosen = [None if done else choose_token(row, sampling, generator) for row, done in zip(logits, ended)]
        yield chosen
        ended = [done or token == eos_id for done, token in zip(ended, chosen)]
        if all(ended):
            return
        # An ended row keeps a place in the batch; what it is fed is never read.
        step_input = torch.tensor([[PAD_ID if token is None else token] for token in chosen], device=device)


def generate_batch(
    model: Transformer,
    prompts: list[list[int]],
    max_new_tokens: int,
    sampling: Sampling = Sampling(),
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
) -> list[list[int]]:
    """The new tokens after each prompt (up to `max_new_tokens`, ending at `eos_id` if it comes),
    decoded together: greedy, the same tokens as one prompt at a time."""
    new: list[list[int]] = [[] for _ in prompts]
    for step in stream(model, prompts, max_new_tokens, sampling, generator, eos_id):
        for row, token in zip(new, step):
            if token is not None:
                row.append(token)
    return new


@torch.no_grad()
def generate(
    model: Transformer,
    prompt: list[int],
    max_new_tokens: int,
    sampling: Sampling = Sampling(),
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
    use_cache: bool = True,
) -> list[int]:
    """The new tokens after `prompt` (up to `max_new_tokens`, ending at `eos_id` if it comes)."""
    if use_cache:
        return generate_batch(model, [prompt], max_new_tokens, sampling, generator, eos_id)[0]
    check_lengths(model, [prompt], max_new_tokens)
    tokens = list(prompt)
    while len(tokens) - len(prompt) < max_new_tokens and (len(tokens) == len(prompt) or tokens[-1] != eos_id):
        logits = model(torch.tensor([tokens], device=model.tok_embeddings.weight.device))
        tokens.append(choose_token(logits[0, -1], sampling, generator))
    return tokens[len(prompt) :]


# ---- speculative decoding ----


@dataclass(frozen=True)
class SpeculativeResult:
    tokens: list[int]  # the new tokens
    proposed: int  # draft tokens the target checked
    accepted: int  # of which it kept

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0


def _feed(model: Transformer, cache: KVCache, tokens: list[int]) -> torch.Tensor:
    """Logits [positions, vocab] of the tokens the cache does not hold yet, which it then holds."""
    fresh = torch.tensor([tokens[cache.length :]], device=model.tok_embeddings.weight.device)
    return model(fresh, cache=cache)[0]


def _propose(
    draft: Transformer, cache: KVCache, tokens: list[int], k: int, sampling: Sampling, generator: torch.Generator
) -> tuple[list[int], list[torch.Tensor]]:
    """k draft tokens after `tokens`, and the distribution each was drawn from."""
    guesses, dists = [], []
    for _ in range(k):
        q = probabilities(_feed(draft, cache, tokens + guesses)[-1], sampling)
        guesses.append(int(torch.multinomial(q, 1, generator=generator)))
        dists.append(q)
    return guesses, dists


def accept_guesses(
    guesses: list[int], p: torch.Tensor, q: list[torch.Tensor], generator: torch.Generator
) -> tuple[int, int]:
    """How many guesses the target keeps, and the token after them. p [k+1, vocab] holds the
    target's distributions at each guess and after the last. Greedy, p and q are one-hot: a guess
    is kept exactly when it is the target's argmax, and a rejected one is replaced by that argmax."""
    for i, guess in enumerate(guesses):
        # u < p/q, written without the division; q[guess] > 0 since the draft drew it.
        if torch.rand((), generator=generator) * q[i][guess] < p[i, guess]:
            continue
        residual = (p[i] - q[i]).clamp_min(0.0)
        residual = residual if residual.sum() > 0 else p[i]  # rounding only: p < q somewhere means mass remains
        return i, int(torch.multinomial(residual, 1, generator=generator))
    return len(guesses), int(torch.multinomial(p[-1], 1, generator=generator))


def check_draft(target: Transformer, draft: Transformer) -> None:
    if draft.args.vocab_size != target.args.vocab_size:
        raise UserError(
            f"draft model: vocabulary of {draft.args.vocab_size} tokens, but the target's has "
            f"{target.args.vocab_size}: expected a draft trained with the target's tokenizer"
        )


@torch.no_grad()
def generate_speculative(
    target: Transformer,
    draft: Transformer,
    prompt: list[int],
    max_new_tokens: int,
    draft_tokens: int,
    sampling: Sampling = Sampling(),
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
) -> SpeculativeResult:
    """The target's continuation of `prompt` (as `generate` gives it: the same tokens greedy, the
    same distribution sampling), with `draft_tokens` guesses of the draft checked per target forward."""
    if draft_tokens < 1:
        raise UserError(f"draft tokens {draft_tokens}: expected 1 or more")
    check_draft(target, draft)
    check_lengths(target, [prompt], max_new_tokens)
    check_lengths(draft, [prompt], max_new_tokens)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    size = len(prompt) + max_new_tokens + draft_tokens
    target_cache, draft_cache = new_cache(target, 1, size), new_cache(draft, 1, size)
    tokens, proposed, accepted = list(prompt), 0, 0
    while len(tokens) - len(prompt) < max_new_tokens and eos_id not in tokens[len(prompt) :]:
        # The last round may guess fewer: its target forward adds one token of its own.
        k = min(draft_tokens, max_new_tokens - (len(tokens) - len(prompt)) - 1)
        guesses, q = _propose(draft, draft_cache, tokens, k, sampling, generator)
        p = probabilities(_feed(target, target_cache, tokens + guesses)[-(k + 1) :], sampling)
        kept, next_token = accept_guesses(guesses, p, q, generator)
        proposed, accepted = proposed + k, accepted + kept
        # Both caches forget the rejected guesses; the new token is fed at the next round.
        target_cache.truncate(len(tokens) + kept)
        draft_cache.truncate(min(draft_cache.length, len(tokens) + kept))
        tokens += guesses[:kept] + [next_token]
    new = tokens[len(prompt) :]
    if eos_id in new:
        new = new[: new.index(eos_id) + 1]
    return SpeculativeResult(new, proposed, accepted)
