"""Several processes on CPU with gloo: FSDP2 on two ranks against one process, two "nodes" on
loopback, a killed worker restarted by torchrun, a preemption notice (SIGTERM, SIGUSR1) passed on to
the workers, and a NaN in one rank's gradient skipped by both."""

import math
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch
from helpers import (
    DOCUMENT_MASKING,
    REPO_ROOT,
    finish,
    launch,
    losses,
    overrides,
    run_command,
    small_run,
    wait_for_checkpoint,
)
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from tinytitan.divergence import NAN_HOOK_VARIABLE
from tinytitan.run_folder import RunFolder

# Tied embeddings: the one weight is sharded once (in the root's FSDP group) and serves as both the
# lookup and the output head, whose gradients must add up on two ranks as on one; and it is saved once.
# At the recipe's lr (3e-3) a tied model's loss rises from step 8, an instability that magnifies the
# ranks' rounding differences past 1e-5 (one rank with two micro-batches stays within 1e-6): 1e-3.
TIED = ("--model.tie_embeddings=true", "--optimizer.lr=1e-3", "--lr_scheduler.min_lr=1e-4", "--checkpoint.enable")


# Tied embeddings and document masking share a run: each is still compared across rank counts, and
# CI time is scarce.
@pytest.mark.parametrize(
    "shape", [(), (*TIED, "--checkpoint.interval=5", *DOCUMENT_MASKING)], ids=["untied", "tied-flex-documents"]
)
def test_fsdp_on_two_ranks_gives_the_losses_of_one_rank(tmp_path, corpus_cache, shape):
    one = run_command(
        "./run_train.sh",
        *small_run(tmp_path / "one", corpus_cache, "--training.micro_batch_size=8", *shape),
        env={"NGPU": "1"},
    )
    assert one.returncode == 0, one.stderr[-2000:]
    # Two ranks, with activation checkpointing, which must not change the numbers either.
    two = run_command(
        "./run_train.sh",
        *small_run(
            tmp_path / "two", corpus_cache, "--training.micro_batch_size=4", "--activation_checkpoint.mode=full", *shape
        ),
        env={"NGPU": "2"},
    )
    assert two.returncode == 0, two.stderr[-2000:]
    assert "2 rank(s)" in two.stdout
    masked = DOCUMENT_MASKING[0] in shape
    assert ("flex attention within documents, per-document positions" in two.stdout) == masked
    expected, got = losses(tmp_path / "one/debug"), losses(tmp_path / "two/debug")
    assert sorted(got) == list(range(1, 11))
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-5)
    assert expected[10] < expected[1] - 0.5
    if TIED[0] in shape:
        assert " tied," in one.stdout
        for run in ("one", "two"):  # the checkpoint holds the tied weight once, under the embedding's name
            reader = FileSystemReader(RunFolder(tmp_path / run / "debug").checkpoint(10))
            names = set(reader.read_metadata().state_dict_metadata)
            assert "model.tok_embeddings.weight" in names and not any("output" in name for name in names)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_loopback_train_together(tmp_path, corpus_cache):
    port = free_port()
    args = small_run(tmp_path, corpus_cache, "--training.micro_batch_size=4", "--training.steps=4")
    nodes = [
        subprocess.Popen(
            ["./run_train.sh", *args],
            cwd=REPO_ROOT,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                "TINYTITAN_PYTHON": sys.executable,
                "NGPU": "1",
                "NNODES": "2",
                "NODE_RANK": str(rank),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
            },
        )
        for rank in (0, 1)
    ]
    outputs = [finish(node) for node in nodes]
    assert "2 rank(s)" in outputs[0] and "done: steps 1..4" in outputs[0]
    assert sorted(losses(tmp_path / "debug")) == [1, 2, 3, 4]


def children(pid, command) -> list[int]:
    found = subprocess.run(["pgrep", "-f", "-P", str(pid), command], capture_output=True, text=True)
    return [int(child) for child in found.stdout.split()]


def test_a_killed_worker_is_restarted_and_resumes_from_the_last_checkpoint(tmp_path, corpus_cache):
    args = overrides(tmp_path, corpus_cache, "--data.num_workers=0", "--checkpoint.interval=5")
    process = launch(args, ranks=2, extra_env={"MAX_RESTARTS": "1"})
    wait_for_checkpoint(tmp_path / "debug", 5, process, timeout=240)
    pids = children(children(process.pid, "torch.distributed.run")[0], "tinytitan.train")  # run_train.sh, torchrun
    assert len(pids) == 2, pids
    os.kill(pids[1], signal.SIGKILL)
    output = finish(process)
    assert "resumed from" in output
    assert sorted(losses(tmp_path / "debug"))[-1] == 20


# SIGUSR1 (SLURM's --signal); SIGTERM to the launcher is test_fault_injection.py's.
@pytest.mark.parametrize("signum", [signal.SIGUSR1])
def test_a_preemption_notice_to_the_launcher_saves_and_exits_0(tmp_path, corpus_cache, signum):
    """What a cluster does before a time limit: the signal goes to run_train.sh, which passes it on
    to the workers; they save and stop, and the run ends with exit status 0 (SLURM requeues on it),
    without torchrun's traceback."""
    args = overrides(tmp_path, corpus_cache, "--data.num_workers=0", "--checkpoint.interval=5", "--training.steps=200")
    process = launch(args, ranks=2)
    wait_for_checkpoint(tmp_path / "debug", 5, process, timeout=240)
    process.send_signal(signum)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output[-3000:]
    assert "Traceback" not in output and "SignalException" not in output, output[-3000:]
    assert "preempted: stopping after step" in output
    stopped = int(output.split("preempted: stopping after step ")[1].split()[0])
    assert stopped < 200 and RunFolder(tmp_path / "debug").published_steps()[-1] == stopped


def saved_tensors(checkpoint, tmp_path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint's model and optimizer (AdamW's moments and step count), flattened."""
    dcp_to_torch_save(checkpoint, tmp_path / f"{checkpoint.name}.pt")
    state = torch.load(tmp_path / f"{checkpoint.name}.pt", weights_only=False)
    found = {}

    def walk(prefix, value):
        if isinstance(value, torch.Tensor):
            found[prefix] = value
        elif isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}", inner)

    walk("model", state["model"])
    walk("optimizer", state["optimizer"])
    return found


def test_a_nan_in_one_ranks_gradient_skips_the_step_on_both_and_training_goes_on(tmp_path, corpus_cache):
    args = small_run(
        tmp_path,
        corpus_cache,
        "--training.steps=4",
        "--training.micro_batch_size=4",
        "--validation.eval_freq=0",
        "--training.skip_nonfinite_steps=2",
        "--checkpoint.enable",
        "--checkpoint.interval=1",
        "--checkpoint.keep_latest_k=0",
    )
    result = run_command("./run_train.sh", *args, env={"NGPU": "2", NAN_HOOK_VARIABLE: "1:3"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step      3  skipped: non-finite loss or gradient norm (1 step(s) skipped so far)" in result.stdout
    assert "done: steps 1..4" in result.stdout
    run = RunFolder(tmp_path / "debug")
    before, skipped, after = (saved_tensors(run.checkpoint(step), tmp_path) for step in (2, 3, 4))
    assert any(name.endswith("exp_avg") for name in before) and any(name.endswith(".step") for name in before)
    for name, tensor in before.items():
        assert torch.equal(skipped[name], tensor), name  # bitwise: nothing moved, AdamW's step count neither
    assert not torch.equal(after["model.output.weight"], before["model.output.weight"])  # step 4 trained
    assert math.isfinite(losses(run.root)[4])
