"""Validation: the mean loss per label of each source's validation split, over a fixed number of
samples whatever the number of ranks, so that the curves do not jump when the GPU count changes;
and the downstream tasks of [[validation.tasks]] (tinytitan.evaluation), beside it."""

import math

import torch

from tinytitan.data.loader import inputs_and_labels
from tinytitan.evaluation.results import logged_values
from tinytitan.evaluation.suite import evaluate_tasks
from tinytitan.kernels.cross_entropy import IGNORE_INDEX
from tinytitan.parallel import Precision, all_reduce_sum


@torch.no_grad()
def evaluate(model, streams, validation, micro_batch_size: int, env, precision: Precision, tasks=()):
    """Mean loss per label (and perplexity) over the first eval_samples samples of each validation
    split, whatever the number of ranks: rank r takes the r-th of W equal slices, and every rank
    runs the same number of forwards (FSDP gathers weights in each), with a zero-weight filler once
    its slice is done."""
    samples = validation.eval_samples or validation.eval_steps * micro_batch_size
    first, last = env.rank * samples // env.world_size, (env.rank + 1) * samples // env.world_size
    forwards = math.ceil(math.ceil(samples / env.world_size) / micro_batch_size)
    model.eval()
    values = {}
    for name, stream in streams.items():
        total, labels_seen = torch.zeros((), device=env.device), torch.zeros((), device=env.device)
        for index in range(forwards):
            start = first + index * micro_batch_size
            rows = range(start, min(start + micro_batch_size, last)) or range(first, first + 1)  # the filler
            batch = torch.stack([torch.from_numpy(stream.sample(i).astype("int64")) for i in rows]).to(env.device)
            inputs, labels = inputs_and_labels(batch)
            count = (labels != IGNORE_INDEX).sum() * (start < last)
            with precision.autocast():
                total += model(inputs, labels).float() * count
            labels_seen += count
        loss = (all_reduce_sum(total) / all_reduce_sum(labels_seen).clamp(min=1)).item()
        values[f"val/{name}/loss"] = loss
        values[f"val/{name}/perplexity"] = math.exp(min(loss, 50.0))
    if tasks:  # a forward holds at most what a training micro-batch holds
        batch_tokens = micro_batch_size * model.args.max_seq_len
        values |= logged_values(evaluate_tasks(model, tasks, env, precision, batch_tokens))
    model.train()
    return values
