"""Log-likelihood of continuations, as lm-evaluation-harness's HFLM computes it, on tinytitan's model.

Encoding (lm-eval's `_encode_pair`): trailing spaces of the context move to the continuation; the
context and the whole text are each encoded with <s> in front (what an exported tokenizer does by
default, and how training saw documents), and the continuation is the whole text's tokens past the
context's. Context and continuation together are cut from the left to max_seq_len + 1 tokens, and
the model reads all but the last (lm-eval's `_loglikelihood_tokens`). A request's log-likelihood is
the sum over its continuation tokens of their log-probabilities (float32 log-softmax), and it is
greedy when each of them is the most likely token.

The requests are batched longest first into batches of at most a number of padded tokens, the
same batches on any number of ranks; each rank scores its share of the batches, every rank runs the
same number of forwards (FSDP gathers the weights in each), and the results are summed over the
ranks: each request is scored by one rank only, so every rank ends with all of them.
"""

import math
from dataclasses import dataclass

import torch

from tinytitan.data.tokenizer import Tokenizer
from tinytitan.errors import UserError
from tinytitan.parallel import Precision, all_reduce_sum


@dataclass(frozen=True)
class Encoded:
    tokens: tuple[int, ...]  # context and continuation, cut from the left to max_seq_len + 1 tokens
    continuation: int  # how many of the last tokens are the continuation's


def encode_request(tokenizer: Tokenizer, context: str, continuation: str, max_seq_len: int) -> Encoded:
    if not context:  # lm-eval conditions an empty context on its prefix token, <s>
        context_ids, continuation_ids = [tokenizer.bos_id], tokenizer.encode(continuation)
    else:
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        context_ids = tokenizer.encode(context, bos=True)
        continuation_ids = tokenizer.encode(context + continuation, bos=True)[len(context_ids) :]
    if len(continuation_ids) > max_seq_len:
        raise UserError(
            f"a continuation of {len(continuation_ids)} tokens ({continuation[:40]!r}...) is longer than the "
            f"model's max_seq_len {max_seq_len}"
        )
    return Encoded(tuple((context_ids + continuation_ids)[-(max_seq_len + 1) :]), len(continuation_ids))


def batches(requests: list[Encoded], indices: list[int], batch_tokens: int) -> list[list[int]]:
    """The requests at `indices`, longest first, in batches of at most `batch_tokens` padded tokens
    (at least one request each)."""
    order = sorted(indices, key=lambda i: -len(requests[i].tokens))
    groups, current = [], []
    for index in order:
        if current and (len(current) + 1) * (len(requests[current[0]].tokens) - 1) > batch_tokens:
            groups.append(current)
            current = []
        current.append(index)
    return groups + ([current] if current else [])


def forward_batch(model, requests: list[Encoded], batch: list[int], device, precision: Precision):
    """(log-likelihood, greedy) of each request of the batch, as float64 tensors on `device`."""
    # Padded on the right with 0: a causal model's earlier positions do not see it.
    inputs = torch.zeros(len(batch), len(requests[batch[0]].tokens) - 1, dtype=torch.long)
    rows, positions, targets = [], [], []
    for row, index in enumerate(batch):
        tokens, count = requests[index].tokens, requests[index].continuation
        inputs[row, : len(tokens) - 1] = torch.tensor(tokens[:-1])
        rows += [row] * count
        positions += range(len(tokens) - 1 - count, len(tokens) - 1)
        targets += tokens[len(tokens) - count :]
    with precision.autocast():
        logits = model(inputs.to(device))
    rows_t, targets_t = torch.tensor(rows, device=device), torch.tensor(targets, device=device)
    log_probs = logits[rows_t, torch.tensor(positions, device=device)].float().log_softmax(-1)
    token_ll = log_probs.gather(-1, targets_t[:, None]).squeeze(-1).double()
    wrong = (log_probs.argmax(-1) != targets_t).double()
    loglikelihood = torch.zeros(len(batch), dtype=torch.float64, device=device).index_add_(0, rows_t, token_ll)
    misses = torch.zeros(len(batch), dtype=torch.float64, device=device).index_add_(0, rows_t, wrong)
    return loglikelihood, (misses == 0).double()


@torch.no_grad()
def score(
    model,
    requests: list[Encoded],
    rank: int,
    world_size: int,
    device,
    precision: Precision,
    batch_tokens: int,
    progress=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-likelihood, greedy as 0/1) of every request, as float64 CPU tensors, on every rank. The
    batches are made over all the requests, the same on any number of ranks, and rank r scores every
    world_size-th of them: a request is computed alike on any number of ranks. `progress` (a
    Progress) counts the requests scored on this rank."""
    groups = batches(requests, list(range(len(requests))), batch_tokens)
    mine = groups[rank::world_size]
    loglikelihood = torch.zeros(len(requests), dtype=torch.float64, device=device)
    greedy = torch.zeros(len(requests), dtype=torch.float64, device=device)
    for group in mine:
        where = torch.tensor(group, device=device)
        loglikelihood[where], greedy[where] = forward_batch(model, requests, group, device, precision)
        if progress is not None:
            progress.update(len(group))
    for _ in range(math.ceil(len(groups) / world_size) - len(mine)):  # the same forwards on every rank (FSDP)
        with precision.autocast():
            model(torch.zeros(1, 1, dtype=torch.long, device=device))
    return all_reduce_sum(loglikelihood).cpu(), all_reduce_sum(greedy).cpu()
