"""scripts/evaluate.py as a user runs it: under torchrun, two ranks (gloo) give every item exactly what
one rank gives in this process."""

import json
import sys
from types import SimpleNamespace

import torch
from helpers import ONE_THREAD, run_command, write_task_files

from tinytitan.data.tokenizer import Tokenizer
from tinytitan.evaluation.suite import evaluate_tasks, load_task
from tinytitan.model_files import load_model
from tinytitan.parallel import Precision

SCRIPT = "scripts/evaluate.py"


def test_two_ranks_score_every_item_as_one_rank_does(awkward_folder, tmp_path, one_torch_thread):
    files = write_task_files(tmp_path / "tasks")
    tasks = ",".join(f"{name}={path}" for name, path in files.items()) + ",builtin"
    out = tmp_path / "items.jsonl"
    options = [
        "--tasks",
        tasks,
        "--limit=40",
        "--batch-tokens=300",
        "--log-items",
        str(out),
        "--json",
        str(tmp_path / "r.json"),
    ]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2"]
    result = run_command(*torchrun, SCRIPT, str(awkward_folder), *options, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on 2 rank(s), cpu, float32" in result.stdout and result.stdout.count("items written") == 1
    theirs = [json.loads(line) for line in out.read_text().splitlines()]

    model, _ = load_model(awkward_folder, torch.device("cpu"), torch.float32)
    tokenizer = Tokenizer(awkward_folder / "tokenizer.model")
    loaded = [load_task(n, str(p), 40, tokenizer, 64) for n, p in [*files.items(), ("builtin", "")]]
    env = SimpleNamespace(rank=0, world_size=1, device=torch.device("cpu"))
    ours = evaluate_tasks(model, loaded, env, Precision(torch.device("cpu"), False), batch_tokens=300)
    expected = [
        (name, index, lls, result.choices[index] if result.choices else None)
        for name, result in ours.items()
        for index, lls in enumerate(result.loglikelihoods)
    ]
    assert [(r["task"], r["index"], r["loglikelihoods"], r.get("choice")) for r in theirs] == expected
    assert json.loads((tmp_path / "r.json").read_text())["builtin"]["items"] == 40
