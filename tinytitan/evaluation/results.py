"""From the scored requests to lm-eval's numbers: each item's choice, acc, acc_norm (log-likelihood
per character of the choice), LAMBADA's perplexity (exp of minus the mean log-likelihood) and acc
(greedy last word), the standard errors (sample standard deviation over sqrt(n), as lm-eval's
`mean_stderr`), the average TinyLlama's table reports, the printed table and the JSON file."""

import json
import math
from dataclasses import dataclass, field

from tinytitan.evaluation.tasks import Item, Task
from tinytitan.files import atomic_write_json, atomic_write_text


@dataclass
class TaskResult:
    task: Task
    metrics: dict[str, float]  # acc, acc_stderr, acc_norm, acc_norm_stderr; or perplexity, acc, acc_stderr
    items: int
    loglikelihoods: list[list[float]]  # per item, of each request
    choices: list[int] = field(default_factory=list)  # acc's choice per item (multiple choice)
    choices_norm: list[int] = field(default_factory=list)  # acc_norm's choice per item


def first_max(values: list[float]) -> int:
    """The index of the largest value, the first one on a tie (as numpy's argmax)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


def mean_and_stderr(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(variance / len(values))


def _with_stderr(name: str, values: list[float]) -> dict[str, float]:
    mean, stderr = mean_and_stderr(values)
    return {name: mean, f"{name}_stderr": stderr}


def task_result(
    task: Task, items: list[Item], loglikelihoods: list[list[float]], greedy: list[list[bool]]
) -> TaskResult:
    """The task's metrics from each item's requests' log-likelihoods and greedy flags."""
    if "perplexity" in task.metrics:  # one request per item: the last word
        lls = [item_lls[0] for item_lls in loglikelihoods]
        metrics = {"perplexity": math.exp(-sum(lls) / len(lls)), **_with_stderr("acc", [float(g[0]) for g in greedy])}
        return TaskResult(task, metrics, len(items), loglikelihoods)
    chosen = [first_max(lls) for lls in loglikelihoods]
    chosen_norm = [
        first_max([ll / len(choice) for ll, choice in zip(lls, item.choices)])
        for lls, item in zip(loglikelihoods, items)
    ]
    metrics = _with_stderr("acc", [float(c == item.gold) for c, item in zip(chosen, items)])
    if "acc_norm" in task.metrics:
        metrics |= _with_stderr("acc_norm", [float(c == item.gold) for c, item in zip(chosen_norm, items)])
    return TaskResult(task, metrics, len(items), loglikelihoods, chosen, chosen_norm)


def logged_values(results: dict[str, TaskResult]) -> dict[str, float]:
    """eval/<task>/<metric> for the log line and TensorBoard, and eval/average: the mean of each
    multiple-choice task's headline number (acc_norm, else acc), TinyLlama's commonsense average."""
    values = {
        f"eval/{name}/{metric}": value
        for name, result in results.items()
        for metric, value in result.metrics.items()
        if not metric.endswith("_stderr")
    }
    headlines = [result.metrics[result.task.headline] for result in results.values() if result.task.headline]
    if headlines:
        values["eval/average"] = sum(headlines) / len(headlines)
    return values


def table(results: dict[str, TaskResult]) -> str:
    lines = [f"{'task':<16} {'metric':<11} {'value':>9} {'stderr':>8} {'items':>7}"]
    for name, result in results.items():
        for metric, value in result.metrics.items():
            if metric.endswith("_stderr"):
                continue
            stderr = result.metrics.get(f"{metric}_stderr")
            shown = f"± {stderr:.4f}" if stderr is not None and not math.isnan(stderr) else ""
            number = f"{value:>9.4f}" if abs(value) < 1e4 else f"{value:>9.3e}"
            lines.append(f"{name:<16} {metric:<11} {number} {shown:>8} {result.items:>7}")
    average = logged_values(results).get("eval/average")
    if average is not None:
        lines.append(f"{'average':<16} {'acc_norm/acc':<11} {average:>9.4f}")
    return "\n".join(lines)


def write_json(path, results: dict[str, TaskResult], losses: dict[str, float] | None = None) -> None:
    """{"<task>": {"acc": ..., "acc_stderr": ..., "acc_norm": ..., "items": N}, ...} (NaN as null), and
    {"val/<source>": {"loss": ..., "perplexity": ...}} for each validation loss given as val/<source>/<metric>."""
    record = {
        name: {**{k: (None if math.isnan(v) else v) for k, v in result.metrics.items()}, "items": result.items}
        for name, result in results.items()
    }
    for key, value in (losses or {}).items():
        source, _, metric = key.rpartition("/")
        record.setdefault(source, {})[metric] = value
    atomic_write_json(path, record)


def write_items(path, results: dict[str, TaskResult], golds: dict[str, list[int]]) -> None:
    """One JSON line per item: task, index, gold, the log-likelihood of each request, and the choice of
    acc and of acc_norm (multiple choice); to compare item by item, with lm-eval's --log_samples say."""
    lines = []
    for name, result in results.items():
        for index, lls in enumerate(result.loglikelihoods):
            record = {"task": name, "index": index, "gold": golds[name][index], "loglikelihoods": lls}
            if result.choices:
                record |= {"choice": result.choices[index], "choice_norm": result.choices_norm[index]}
            lines.append(json.dumps(record) + "\n")
    atomic_write_text(path, "".join(lines))
