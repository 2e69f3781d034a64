"""Tasks loaded for a model (read, checked and tokenized once: a bad file fails before any
training or scoring), and their evaluation: scoring.py's log-likelihoods, results.py's numbers."""

from dataclasses import dataclass

from tinytitan.data.tokenizer import Tokenizer
from tinytitan.errors import UserError
from tinytitan.evaluation.builtin_task import builtin_items
from tinytitan.evaluation.results import TaskResult, task_result
from tinytitan.evaluation.scoring import Encoded, encode_request, score
from tinytitan.evaluation.tasks import BUILTIN, Item, Task, read_items, task_named
from tinytitan.parallel import Precision
from tinytitan.progress import Progress


@dataclass(frozen=True)
class LoadedTask:
    task: Task
    items: list[Item]
    requests: list[Encoded]  # every item's requests, in order
    item_requests: list[range]  # item i's requests are requests[item_requests[i]]


def read_task(name: str, path: str, limit: int = 0) -> tuple[Task, list[Item]]:
    """The task and its items (the first `limit`, when above 0), read and checked."""
    task = task_named(name)
    return task, builtin_items(limit) if name == BUILTIN else read_items(task, path, limit)


def encode_task(task: Task, items: list[Item], tokenizer: Tokenizer, max_seq_len: int) -> LoadedTask:
    requests, ranges = [], []
    for item in items:
        ranges.append(range(len(requests), len(requests) + len(item.requests)))
        requests += [encode_request(tokenizer, context, rest, max_seq_len) for context, rest in item.requests]
    return LoadedTask(task, items, requests, ranges)


def load_task(name: str, path: str, limit: int, tokenizer: Tokenizer, max_seq_len: int) -> LoadedTask:
    return encode_task(*read_task(name, path, limit), tokenizer, max_seq_len)


def load_validation_tasks(specs, data, max_seq_len: int) -> list[LoadedTask]:
    """The config's [[validation.tasks]], tokenized with the run's tokenizer (data.tokenizer_path, or
    the built-in corpus's), loaded once at the start of training."""
    if not specs:
        return []
    from tinytitan.model_files import run_tokenizer  # not at the top: model_files imports the model

    path = run_tokenizer(data)
    if path is None:
        raise UserError("validation.tasks: expected data.tokenizer_path, the tokenizer the tasks are encoded with")
    tokenizer = Tokenizer(path)
    return [load_task(spec.name, spec.path, spec.limit, tokenizer, max_seq_len) for spec in specs]


def parse_task_list(text: str) -> list[tuple[str, str]]:
    """`--tasks hellaswag=path/to/file.jsonl,builtin` as (name, path) pairs, the names checked."""
    pairs = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        name, _, path = entry.partition("=")
        task_named(name, "--tasks: task")
        if name != BUILTIN and not path:
            raise UserError(f"--tasks: task {name!r}: expected {name}=PATH to its JSON Lines or parquet file")
        pairs.append((name, path))
    return pairs


def evaluate_tasks(
    model, tasks: list[LoadedTask], env, precision: Precision, batch_tokens: int, show_progress: bool = False
) -> dict[str, TaskResult]:
    """Each task's result on every rank; `env` gives the rank, the number of ranks and the device."""
    results = {}
    for loaded in tasks:
        what = f"evaluating {loaded.task.name} ({len(loaded.items)} items)"
        progress = Progress(what, unit="requests") if show_progress else None
        loglikelihood, greedy = score(
            model,
            loaded.requests,
            env.rank,
            env.world_size,
            env.device,
            precision,
            batch_tokens,
            progress,
        )
        if progress is not None:
            progress.close()
        lls = [loglikelihood[list(r)].tolist() for r in loaded.item_requests]
        flags = [(greedy[list(r)] > 0).tolist() for r in loaded.item_requests]
        results[loaded.task.name] = task_result(loaded.task, loaded.items, lls, flags)
    return results
