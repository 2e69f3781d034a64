"""tinytitan's evaluation against lm-evaluation-harness itself: lm-eval's own `simple_evaluate` with
its HFLM on an exported model, through task YAMLs that include lm-eval's own task files and point
them at small local files in each dataset's published layout, for every task in one invocation
(lm-eval's import and model load are the slow part). The same model, loaded by tinytitan, must make
the same choice on every item (acc and acc_norm), give the same log-likelihoods, and the same
aggregate numbers."""

import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import write_task_files

from tinytitan.data.tokenizer import Tokenizer
from tinytitan.evaluation.results import first_max
from tinytitan.evaluation.suite import evaluate_tasks, load_task
from tinytitan.evaluation.tasks import TASKS
from tinytitan.hf.tokenizer import write_hf_tokenizer
from tinytitan.model_files import load_model
from tinytitan.parallel import Precision

lm_eval = pytest.importorskip("lm_eval")

# Where each task's rows go in lm-eval's config: LAMBADA publishes a test split only.
SPLIT = {"lambada_openai": "test_split"}
LM_EVAL_TASK_FILES = Path(lm_eval.__file__).parent / "tasks"


def lm_eval_yaml(name: str, path: Path) -> str:
    """A task that includes lm-eval's own definition and reads `path` instead of the Hub."""
    split = SPLIT.get(name, "validation_split")
    splits = {"training_split": "null", "validation_split": "null", "test_split": "null", split: "local"}
    lines = [
        f"include: {LM_EVAL_TASK_FILES / TASKS[name].follows}",
        f"task: tt_{name}",
        "tag: []",
        f"dataset_path: {'parquet' if path.suffix == '.parquet' else 'json'}",
        "dataset_name: null",
        "dataset_kwargs:",
        "  data_files:",
        f"    local: {path}",
        *(f"{key}: {value}" for key, value in splits.items()),
    ]
    return "\n".join(lines) + "\n"


def run_lm_eval(folder: Path, files: dict[str, Path], yaml_folder: Path, monkeypatch) -> dict:
    monkeypatch.setenv("HF_DATASETS_CACHE", str(yaml_folder / "datasets-cache"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name, path in files.items():
        (yaml_folder / f"tt_{name}.yaml").write_text(lm_eval_yaml(name, path))
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    # lm-eval bootstraps the perplexity's stderr in a forked multiprocessing pool, whose workers can
    # hang on a lock inherited from this process's threads (seen here); that stderr is not compared.
    monkeypatch.setattr("lm_eval.api.metrics.bootstrap_stderr", lambda metric, items, iters: math.nan)
    model = HFLM(pretrained=str(folder), device="cpu", dtype="float32", batch_size=8)
    return lm_eval.simple_evaluate(
        model=model,
        tasks=[f"tt_{name}" for name in files],
        task_manager=TaskManager(include_path=str(yaml_folder), include_defaults=False),
        num_fewshot=0,
        bootstrap_iters=10,  # acc_stderr is computed, not bootstrapped; perplexity_stderr is not compared
        log_samples=True,
    )


def exported_folder(awkward_folder: Path, small_tokenizer: Path, tmp_path: Path) -> Path:
    """The awkward model's folder with the Hugging Face tokenizer files tinytitan exports."""
    folder = tmp_path / "model"
    shutil.copytree(awkward_folder, folder)
    write_hf_tokenizer(small_tokenizer, folder, max_length=64)
    return folder


def test_every_task_gives_lm_evaluation_harness_choices_and_numbers(
    awkward_folder, small_tokenizer, tmp_path, monkeypatch, one_torch_thread
):
    folder = exported_folder(awkward_folder, small_tokenizer, tmp_path)
    files = write_task_files(tmp_path / "tasks")
    (tmp_path / "yaml").mkdir()

    model, spec = load_model(folder, torch.device("cpu"), torch.float32)
    tokenizer = Tokenizer(folder / "tokenizer.model")
    loaded = [load_task(name, str(path), 0, tokenizer, model.args.max_seq_len) for name, path in files.items()]
    assert any(len(r.tokens) == 65 for task in loaded for r in task.requests), "expected a context cut to 64 tokens"
    env = SimpleNamespace(rank=0, world_size=1, device=torch.device("cpu"))
    ours = evaluate_tasks(model, loaded, env, Precision(torch.device("cpu"), False), batch_tokens=200)

    theirs = run_lm_eval(folder, files, tmp_path / "yaml", monkeypatch)
    for task in loaded:
        name = task.task.name
        samples = sorted(theirs["samples"][f"tt_{name}"], key=lambda sample: sample["doc_id"])
        assert len(samples) == len(task.items), name
        for index, (sample, item) in enumerate(zip(samples, task.items)):
            their_lls = [float(response[0]) for response in sample["filtered_resps"]]
            assert ours[name].loglikelihoods[index] == pytest.approx(their_lls, abs=1e-4), (name, index)
            if "perplexity" in task.task.metrics:
                continue
            assert ours[name].choices[index] == first_max(their_lls), (name, index)
            assert sample["acc"] == float(ours[name].choices[index] == item.gold), (name, index)
            if "acc_norm" in task.task.metrics:
                their_norm = first_max([ll / len(choice) for ll, choice in zip(their_lls, item.choices)])
                assert ours[name].choices_norm[index] == their_norm, (name, index)
                assert sample["acc_norm"] == float(their_norm == item.gold), (name, index)
        for metric, value in ours[name].metrics.items():
            if metric.endswith("_stderr") and math.isnan(value):
                continue
            assert theirs["results"][f"tt_{name}"][f"{metric},none"] == pytest.approx(value, rel=1e-5, abs=1e-6), (
                name,
                metric,
            )
