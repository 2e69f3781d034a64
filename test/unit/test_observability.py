"""What a long run shows while it trains, from one short debug run and its resumption in this
process: the log line (step/total, tokens seen, ETA, the step-time breakdown), TensorBoard (config,
tokens seen, the breakdown), Weights & Biases in offline mode read back with wandb's own reader, the
profiler's trace of the requested step only; and the divergence guard stopping a run."""

import contextlib
import gc
import io
import json
import re
import struct

import pytest
from helpers import debug_config

from tinytitan.divergence import NAN_HOOK_VARIABLE, TrainingDiverged
from tinytitan.run_folder import RunFolder
from tinytitan.train import train

RUN = (
    "--training.global_batch_tokens=512",
    "--lr_scheduler.warmup_steps=1",
    "--metrics.log_freq=2",
    "--metrics.enable_tensorboard=true",
    "--metrics.enable_wandb=true",
    "--checkpoint.enable",
    "--checkpoint.interval=2",
    "--data.num_workers=0",
)


def wandb_records(path):
    """The records of a .wandb file, parsed with wandb's own protobuf schema. The file is a LevelDB-style
    log (wandb 0.31 keeps its reader in Go): a 7-byte header, then 32 KiB blocks of chunks, each with a
    checksum, a length and a type (1 whole, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data, position, pending = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B", path
    while position + 7 <= len(data):
        if BLOCK - position % BLOCK < 7:  # a block's tail too short for a chunk header is padding
            position += BLOCK - position % BLOCK
            continue
        length, kind = struct.unpack_from("<HB", data, position + 4)
        if kind == 0:
            break
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


BLOCK = 32 * 1024


def wandb_history(wandb_folder) -> dict[str, list[dict]]:
    """Each offline run's logged rows, by run id."""
    runs: dict[str, list[dict]] = {}
    for path in sorted(wandb_folder.glob("offline-run-*/run-*.wandb")):
        run_id, rows = None, []
        for record in wandb_records(path):
            if record.HasField("run"):
                run_id = record.run.run_id
            if record.HasField("history"):
                rows.append(
                    {"/".join(item.nested_key) or item.key: json.loads(item.value_json) for item in record.history.item}
                )
        runs.setdefault(run_id, []).extend(rows)
    return runs


def tensorboard_events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    events.Reload()
    return events


@pytest.fixture(scope="module")
def observed_run(tmp_path_factory, corpus_cache):
    """4 steps with the profiler on step 3, then resumed to 6: (run folder, records, printed output)."""
    monkeypatch, capture = pytest.MonkeyPatch(), []
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    tmp_path = tmp_path_factory.mktemp("observed")
    records = []
    for steps, extra in ((4, ("--profiling.enable", "--profiling.start_step=3", "--profiling.steps=1")), (6, ())):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            records += train(debug_config(tmp_path, corpus_cache, f"--training.steps={steps}", *RUN, *extra))
        capture.append(out.getvalue())
    monkeypatch.undo()
    return RunFolder(tmp_path / "debug"), records, "".join(capture)


def test_the_log_line_shows_progress_tokens_eta_and_the_step_time_breakdown(observed_run):
    _, records, output = observed_run
    lines = [line for line in output.splitlines() if re.match(r"step +\d+/\d+ ", line)]
    assert [int(line.split()[1].split("/")[0]) for line in lines] == [1, 2, 4, 5, 6]
    assert lines[1].startswith("step      2/4  loss ")
    for field in ("tokens 1,024", "elapsed ", "eta ", "data ", "forward_backward ", "optimizer "):
        assert field in lines[1], lines[1]
    assert "checkpoint " in lines[2]  # the save after step 2, told on the next line
    assert [r["tokens_seen"] for r in records] == [512 * r["step"] for r in records]  # resumed: tokens go on
    assert records[-1]["eta_s"] == 0 and records[0]["eta_s"] > 0


def test_tensorboard_holds_the_config_tokens_seen_and_the_breakdown(observed_run):
    run, records, _ = observed_run
    events = tensorboard_events(run.tensorboard)
    scalars = set(events.Tags()["scalars"])
    assert {"loss", "tokens_seen", "eta_s", "time/data_ms", "time/forward_backward_ms", "time/optimizer_ms"} <= scalars
    assert {e.step: e.value for e in events.Scalars("tokens_seen")} == {r["step"]: r["tokens_seen"] for r in records}
    assert "time/checkpoint_s" in scalars
    tensors = set(events.Tags()["tensors"])
    assert "config/text_summary" in tensors and "custom_scalars__config__" in tensors
    config_text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "steps = 4" in config_text and "[optimizer]" in config_text


def test_wandb_offline_history_holds_the_logged_scalars_in_one_resumed_run(observed_run):
    run, records, _ = observed_run
    run_id = (run.wandb / "run_id").read_text().strip()
    runs = wandb_history(run.wandb)
    assert list(runs) == [run_id]  # the resumed run went on in the same W&B run
    logged = {row["_step"]: row for row in runs[run_id]}
    assert sorted(logged) == [1, 2, 4, 5, 6]
    for record in records:
        assert logged[record["step"]]["loss"] == pytest.approx(record["loss"], rel=1e-6)
        assert logged[record["step"]]["tokens_seen"] == record["tokens_seen"]


def test_the_profiler_traces_the_requested_step_only(observed_run):
    run, _, _ = observed_run
    assert [p.name for p in (run.root / "profiles").iterdir()] == ["step-3"]
    trace = json.loads((run.profile(3) / "rank0.trace.json").read_text())
    names = {event.get("name", "") for event in trace["traceEvents"]}
    assert "train_step 3" in names and not {"train_step 2", "train_step 4"} & names
    assert any(name.startswith("aten::mm") or name.startswith("aten::addmm") for name in names)


def test_non_finite_steps_in_a_row_stop_the_run_naming_the_step_and_checkpoint(tmp_path, corpus_cache, monkeypatch):
    monkeypatch.setenv(NAN_HOOK_VARIABLE, "0:2,3")
    config = debug_config(
        tmp_path,
        corpus_cache,
        "--training.steps=5",
        "--training.global_batch_tokens=512",
        "--lr_scheduler.warmup_steps=1",
        "--training.skip_nonfinite_steps=2",
        "--checkpoint.enable",
        "--checkpoint.interval=1",
        "--data.num_workers=0",
    )
    last = RunFolder(tmp_path / "debug").checkpoint(2)  # step 2 was skipped, and saved
    with pytest.raises(TrainingDiverged, match=rf"^training diverged at step 3: 2 non-finite steps in a row .*{last}$"):
        train(config)
    assert gc.isenabled()  # training.gc_freq turned automatic collection off for the loop only


def test_without_the_guard_a_non_finite_loss_stops_the_run_in_one_line(tmp_path, corpus_cache, monkeypatch):
    monkeypatch.setenv(NAN_HOOK_VARIABLE, "0:1")  # the update of step 1 makes every weight NaN
    config = debug_config(
        tmp_path,
        corpus_cache,
        "--training.steps=3",
        "--lr_scheduler.warmup_steps=1",
        "--training.global_batch_tokens=512",
        "--data.num_workers=0",
    )
    with pytest.raises(
        TrainingDiverged, match=r"^training diverged at step 2: the loss is nan .*there is no checkpoint$"
    ):
        train(config)
