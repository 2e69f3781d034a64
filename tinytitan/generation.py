"""Text generation with our model: greedy decoding, or sampling with a temperature and top-p.

The prompt goes through the model once, filling a KV cache; each new token then costs one
position's forward. `use_cache=False` recomputes the whole sequence at every step instead: slower,
and the reference the cached path is tested against. Sampling draws on the CPU from a generator
seeded by the caller, so a seed gives the same text on any device (for the same logits).
"""

import math
from dataclasses import dataclass

import torch

from tinytitan.errors import UserError
from tinytitan.models.llama import KVCache, Transformer


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


def choose_token(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> int:
    """The next token from the last position's logits [vocab]."""
    if sampling.temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float().cpu() / sampling.temperature, dim=-1)
    if sampling.top_p >= 1.0:
        return int(torch.multinomial(probs, 1, generator=generator))
    sorted_probs, order = probs.sort(descending=True)
    # Keep a token while the tokens ranked above it hold less than top_p: the first is always kept.
    outside = sorted_probs.cumsum(0) - sorted_probs >= sampling.top_p
    sorted_probs[outside] = 0.0
    return int(order[torch.multinomial(sorted_probs, 1, generator=generator)])


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
    limit = model.args.max_seq_len
    if not prompt:
        raise UserError("empty prompt: expected at least one token (the tokenizer's bos)")
    if len(prompt) + max_new_tokens > limit:
        raise UserError(
            f"prompt of {len(prompt)} tokens + {max_new_tokens} new tokens: more than the model's "
            f"max_seq_len of {limit}"
        )
    device = model.tok_embeddings.weight.device
    tokens = torch.tensor([prompt], device=device)
    cache = (
        KVCache(model.args, 1, len(prompt) + max_new_tokens, device, model.tok_embeddings.weight.dtype)
        if use_cache
        else None
    )
    new: list[int] = []
    step_input = tokens
    while len(new) < max_new_tokens:
        logits = model(step_input, cache=cache) if use_cache else model(tokens)
        token = choose_token(logits[0, -1], sampling, generator)
        new.append(token)
        if token == eos_id:
            break
        next_token = torch.tensor([[token]], device=device)
        tokens = torch.cat((tokens, next_token), dim=1)
        step_input = next_token  # with a cache, only the new position goes through the model
    return new
