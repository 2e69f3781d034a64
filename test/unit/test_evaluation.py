"""Downstream evaluation in this process: bad task files and configs refused in one line, the
built-in task, the scoring's independence from batching and ranks, the statistics, and the
evaluation in the training loop (TensorBoard, and the same numbers as the saved checkpoint gives).
The comparison with lm-evaluation-harness itself is test_evaluation_lm_eval.py."""

import json
import math
import re
import runpy
import statistics
from types import SimpleNamespace

import pytest
import torch
from helpers import REPO_ROOT, TASK_ROWS, debug_config, write_lines, write_task_files

from tinytitan.config import load_config
from tinytitan.data.builtin_corpus import validation_prose_documents
from tinytitan.data.tokenizer import Tokenizer
from tinytitan.errors import UserError, run_entry_point
from tinytitan.evaluation.builtin_task import CHOICES, builtin_items
from tinytitan.evaluation.results import first_max, mean_and_stderr, write_json
from tinytitan.evaluation.scoring import batches, encode_request, score
from tinytitan.evaluation.suite import evaluate_tasks, load_task, parse_task_list
from tinytitan.model_files import load_model
from tinytitan.models.args import ModelArgs
from tinytitan.models.llama import build_model
from tinytitan.parallel import Precision
from tinytitan.train import train

CPU = torch.device("cpu")
FLOAT32 = Precision(CPU, False)
ONE_RANK = SimpleNamespace(rank=0, world_size=1, device=CPU)


def piqa_file(tmp_path, *rows):
    return write_lines(tmp_path / "piqa.jsonl", [TASK_ROWS["piqa"][0], *rows])


@pytest.mark.parametrize(
    "row, message",
    [
        ({"goal": "g", "sol1": "a", "label": 0}, ":2: no field 'sol2' (the row has 'goal', 'sol1', 'label')"),
        ({"goal": "g", "sol1": "a", "sol2": "b", "label": "x"}, ':2: field \'label\' = "x": expected a choice number'),
        ({"goal": "g", "sol1": "a", "sol2": "b", "label": 2}, ":2: field 'label' = 2: expected a choice number from 0"),
        ({"goal": "g", "sol1": "a", "sol2": "b", "label": True}, ":2: field 'label' = true: expected a choice number"),
        ({"goal": 3, "sol1": "a", "sol2": "b", "label": 0}, ":2: field 'goal' = 3: expected a string"),
        ("[1, 2]", ":2: expected a JSON object, one per line"),
        ("{not json", ":2: not a JSON object"),
    ],
)  # fmt: skip
def test_a_malformed_row_names_the_file_line_and_field(tmp_path, row, message):
    path = piqa_file(tmp_path, row)
    with pytest.raises(UserError) as error:
        load_task("piqa", str(path), 0, None, 64)
    assert str(error.value).startswith(f"{path}{message}")


def test_rows_of_other_layouts_are_refused_by_field(tmp_path):
    arc = dict(TASK_ROWS["arc_easy"][0], answerKey="E")
    with pytest.raises(UserError, match=r"arc\.jsonl:1: field 'answerKey' = \"E\": expected one of 'A', 'B', 'C', 'D'"):
        load_task("arc_easy", str(write_lines(tmp_path / "arc.jsonl", [arc])), 0, None, 64)
    unlabeled = dict(TASK_ROWS["hellaswag"][0], label="")  # HellaSwag's test split publishes no labels
    with pytest.raises(UserError, match=r"h\.jsonl:1: field 'label' = \"\": expected a choice number from 0 to 3"):
        load_task("hellaswag", str(write_lines(tmp_path / "h.jsonl", [unlabeled])), 0, None, 64)
    import pyarrow
    import pyarrow.parquet

    pyarrow.parquet.write_table(
        pyarrow.Table.from_pylist([{"sentence": "no blank", "option1": "a"}]), tmp_path / "w.parquet"
    )
    with pytest.raises(UserError, match=r"w\.parquet row 1: no field 'option2'|w\.parquet row 1: field 'sentence'"):
        load_task("winogrande", str(tmp_path / "w.parquet"), 0, None, 64)


def test_missing_files_and_unknown_tasks_are_one_line(tmp_path):
    with pytest.raises(UserError, match=r"task file .*nothing\.jsonl: no such file"):
        load_task("boolq", str(tmp_path / "nothing.jsonl"), 0, None, 64)
    with pytest.raises(UserError, match=r"task file .*rows\.csv: expected a \.jsonl, \.json or \.parquet file"):
        (tmp_path / "rows.csv").write_text("a,b\n")
        load_task("boolq", str(tmp_path / "rows.csv"), 0, None, 64)
    with pytest.raises(UserError, match=r"--tasks: task 'hellaswg': expected one of hellaswag, piqa"):
        parse_task_list("hellaswg=x.jsonl")
    with pytest.raises(UserError, match=r"--tasks: task 'piqa': expected piqa=PATH"):
        parse_task_list("builtin,piqa")
    assert parse_task_list("builtin, piqa=a.parquet,") == [("builtin", ""), ("piqa", "a.parquet")]


@pytest.mark.parametrize("bad", ["missing file", "malformed row", "unknown task"])
def test_evaluate_script_says_what_is_wrong_in_one_line_and_exits_2(tmp_path, capsys, bad):
    """The script in this process (run_entry_point, as a user's command ends): the task files are
    read before the model (here none) is loaded."""
    main = runpy.run_path(str(REPO_ROOT / "scripts/evaluate.py"))["main"]
    rows = write_lines(tmp_path / "piqa.jsonl", [TASK_ROWS["piqa"][0], {"goal": "g"}])
    tasks, expected = {
        "missing file": ("piqa=nothing.jsonl", "error: task file nothing.jsonl: no such file"),
        "malformed row": (f"piqa={rows}", f"error: {rows}:2: no field 'sol1' (the row has 'goal')"),
        "unknown task": ("hellaswg=x.jsonl", "error: --tasks: task 'hellaswg': expected one of hellaswag"),
    }[bad]
    with pytest.raises(SystemExit) as exit:
        run_entry_point(main, [str(tmp_path / "model"), "--tasks", tasks, "--json", str(tmp_path / "r.json")])
    assert exit.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(expected)
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize(
    "tasks, extra, message",
    [
        ('[{name="hellaswg", path="x"}]', [], 'validation.tasks[0].name = "hellaswg": expected one of hellaswag'),
        ('[{name="piqa"}]', [], 'validation.tasks[0]: name = "piqa": expected a path'),
        ('[{name="builtin"}, {name="builtin"}]', [], 'validation.tasks[1].name = "builtin": expected names'),
        ('[{name="builtin"}]', ["--validation.eval_freq=0"], "validation.tasks is set but validation.eval_freq = 0"),
        ('[{name="builtin"}]', ["--data.dataset=synthetic"], "validation.tasks is set but data.dataset = 'synthetic'"),
    ],
)  # fmt: skip
def test_validation_tasks_are_checked_with_the_config(tasks, extra, message):
    with pytest.raises(UserError, match=re.escape(message)):
        load_config(["--validation.eval_freq=5", f"--validation.tasks={tasks}", *extra])


def test_the_builtin_task_is_held_out_prose_with_distractors_from_other_documents():
    items = builtin_items()
    documents = [" ".join(document.split()) for document in validation_prose_documents()]
    assert len(items) > 150 and builtin_items() == items and builtin_items(10) == items[:10]
    assert sorted({item.gold for item in items}) == list(range(CHOICES))
    for item in items:
        context = item.requests[0][0]
        home = [d for d in documents if context in d]
        assert len(home) == 1 and {r[0] for r in item.requests} == {context}
        passage = context + " " + item.choices[item.gold]
        assert passage in home[0]  # the true continuation follows its context
        for index, choice in enumerate(item.choices):
            assert len(choice.split()) == len(item.choices[item.gold].split())
            if index != item.gold:
                assert context + " " + choice not in home[0]


def test_encoding_moves_trailing_spaces_and_cuts_from_the_left(tokenizer):
    short = encode_request(tokenizer, "The list ", "is sorted", 1024)
    whole = tokenizer.encode("The list is sorted", bos=True)
    assert list(short.tokens) == whole and short.continuation == len(whole) - len(
        tokenizer.encode("The list", bos=True)
    )
    long = encode_request(tokenizer, "word " * 50 + "end", " of it", 16)
    assert len(long.tokens) == 17
    full = tokenizer.encode("word " * 50 + "end of it", bos=True)
    assert list(long.tokens) == full[-17:]
    empty = encode_request(tokenizer, "", "Hello", 64)
    assert (
        list(empty.tokens) == [tokenizer.bos_id, *tokenizer.encode("Hello")]
        and empty.continuation == len(empty.tokens) - 1
    )


def random_model(vocab_size: int) -> torch.nn.Module:
    args = ModelArgs(
        dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden_dim=96, vocab_size=vocab_size, max_seq_len=96
    )
    torch.manual_seed(0)
    return build_model(args, CPU).eval()


def test_scores_do_not_depend_on_batching_or_ranks_and_equal_a_plain_forward(tokenizer, tmp_path, one_torch_thread):
    model = random_model(tokenizer.vocab_size)
    files = write_task_files(tmp_path)
    loaded = load_task("hellaswag", str(files["hellaswag"]), 0, tokenizer, 96)
    requests = loaded.requests
    assert {len(group) for group in batches(requests, list(range(len(requests))), 1)} == {1}
    groups = batches(requests, list(range(len(requests))), 200)
    assert all(len(g) * (len(requests[g[0]].tokens) - 1) <= 200 for g in groups if len(g) > 1)
    whole, greedy = score(model, requests, 0, 1, CPU, FLOAT32, 10_000)
    one_by_one, _ = score(model, requests, 0, 1, CPU, FLOAT32, 1)
    assert torch.allclose(whole, one_by_one, atol=1e-4)
    shards = [score(model, requests, rank, 3, CPU, FLOAT32, 200) for rank in range(3)]  # ranks without a group
    alone = score(model, requests, 0, 1, CPU, FLOAT32, 200)
    assert torch.equal(sum(s[0] for s in shards), alone[0]) and torch.equal(sum(s[1] for s in shards), alone[1])
    for index, request in enumerate(requests):  # a plain forward and log_softmax, one request at a time
        tokens = torch.tensor(request.tokens)
        log_probs = model(tokens[None, :-1])[0].log_softmax(-1)[-request.continuation :]
        targets = tokens[-request.continuation :]
        expected = log_probs.gather(-1, targets[:, None]).sum().item()
        assert whole[index].item() == pytest.approx(expected, abs=1e-4)
        assert bool(greedy[index]) == bool((log_probs.argmax(-1) == targets).all())


def test_metrics_and_json_follow_lm_eval_definitions(tmp_path, tokenizer):
    values = [1.0, 0.0, 1.0, 1.0, 0.0]
    mean, stderr = mean_and_stderr(values)
    assert mean == 0.6 and stderr == pytest.approx(statistics.stdev(values) / math.sqrt(5))
    assert math.isnan(mean_and_stderr([1.0])[1])
    assert first_max([-1.0, -0.5, -0.5]) == 1  # numpy's argmax takes the first on a tie
    model = random_model(tokenizer.vocab_size)
    loaded = load_task("builtin", "", 6, tokenizer, 96)
    results = evaluate_tasks(model, [loaded], ONE_RANK, FLOAT32, 1000)
    write_json(tmp_path / "r.json", results, {"val/prose/loss": 2.5, "val/prose/perplexity": 12.0})
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["val/prose"] == {"loss": 2.5, "perplexity": 12.0}
    assert record["builtin"]["items"] == 6 and set(record["builtin"]) == {
        "acc",
        "acc_stderr",
        "acc_norm",
        "acc_norm_stderr",
        "items",
    }


def test_training_logs_the_tasks_as_its_saved_checkpoint_scores_them(tmp_path, corpus_cache, one_torch_thread):
    files = write_task_files(tmp_path / "tasks")
    tasks = f'[{{name="builtin", limit=12}}, {{name="winogrande", path="{files["winogrande"]}"}}]'
    config = debug_config(
        tmp_path, corpus_cache, "--training.steps=2", "--lr_scheduler.warmup_steps=1",
        "--training.global_batch_tokens=512",
        "--validation.eval_freq=1", "--validation.eval_steps=1", f"--validation.tasks={tasks}",
        "--metrics.enable_tensorboard=true", "--checkpoint.enable", "--checkpoint.interval=2", "--data.num_workers=0",
    )  # fmt: skip
    records = {record["step"]: record for record in train(config)}
    logged = records[2]
    for key in ("eval/builtin/acc", "eval/builtin/acc_norm", "eval/winogrande/acc", "eval/average"):
        assert key in logged and key in records[1]
    assert logged["eval/average"] == pytest.approx(
        (logged["eval/builtin/acc_norm"] + logged["eval/winogrande/acc"]) / 2
    )

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "debug/tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("eval/builtin/acc_norm")] == [1, 2]

    model, spec = load_model(tmp_path / "debug/checkpoints/step-2", CPU, torch.float32)
    tokenizer, length = Tokenizer(spec.tokenizer_path), model.args.max_seq_len
    loaded = [
        load_task("builtin", "", 12, tokenizer, length),
        load_task("winogrande", files["winogrande"], 0, tokenizer, length),
    ]
    again = evaluate_tasks(model, loaded, ONE_RANK, FLOAT32, config.training.micro_batch_size * length)
    assert again["builtin"].metrics["acc_norm"] == logged["eval/builtin/acc_norm"]
    assert again["winogrande"].metrics["acc"] == logged["eval/winogrande/acc"]


@pytest.mark.gpu
def test_bf16_scores_on_cuda_are_float32_scores_within_bf16_rounding(tokenizer):
    model = random_model(tokenizer.vocab_size)
    loaded = [load_task("builtin", "", 64, tokenizer, 96)]
    cpu = evaluate_tasks(model, loaded, ONE_RANK, FLOAT32, 2000)["builtin"]
    cuda = torch.device("cuda")
    env = SimpleNamespace(rank=0, world_size=1, device=cuda)
    bf16 = evaluate_tasks(model.to(cuda), loaded, env, Precision(cuda, True), 2000)["builtin"]
    for ours, theirs in zip(cpu.loglikelihoods, bf16.loglikelihoods):
        assert theirs == pytest.approx(ours, rel=0.02, abs=0.5)
    agree = sum(a == b for a, b in zip(cpu.choices, bf16.choices))
    assert agree >= 0.9 * len(cpu.choices)
