"""Faults injected into copies of one reference run's checkpoints, and into runs while they save.

Each damaged checkpoint must stop the run with exit status 2, exactly one `error:` line naming the
folder and the cause, no traceback, and every checkpoint file as it was (checksums before and
after): a damaged checkpoint is never skipped for an older one, nor deleted. A save cut short (a
`.tmp` folder, SIGKILL at several moments of a save, SIGTERM to torchrun) must resume exactly.
The full-disk case lives with the entry point's OSError handling.
"""

import os
import shutil
import signal
import subprocess
import time
import zlib
from pathlib import Path

import pytest
import torch
from helpers import finish, kill_run, launch, losses, micro_batch, model_weights, overrides, run_command
from torch.distributed.checkpoint import FileSystemReader

from tinytitan.dcp_reader import MANIFEST_FILE

STEPS, INTERVAL = 6, 2


def args_of(root, corpus_cache, *extra):
    return overrides(root, corpus_cache, f"--training.steps={STEPS}", f"--checkpoint.interval={INTERVAL}", *extra)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus_cache):
    """One rank, uninterrupted, a checkpoint every 2 steps: the copies below start from it."""
    root = tmp_path_factory.mktemp("reference")
    finish(launch(args_of(root, corpus_cache, "--data.num_workers=0")))
    return root / "debug"


@pytest.fixture(scope="module")
def preempted(tmp_path_factory, corpus_cache):
    """Two ranks under torchrun, SIGTERM to torchrun while step 2 is being saved."""
    root = tmp_path_factory.mktemp("preempted")
    process = launch(args_of(root, corpus_cache, "--data.num_workers=0"), ranks=2)
    wait_for_path(root / "debug/checkpoints/step-2.tmp", process, timeout=240)
    process.send_signal(signal.SIGTERM)  # run_train.sh exec'd torchrun: this is torchrun
    output, _ = process.communicate(timeout=120)
    return process.returncode, output, root / "debug"


def wait_for_path(path: Path, process, timeout=120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the run ended before {path} appeared"
        assert time.monotonic() < deadline, f"no {path} after {timeout}s"
        time.sleep(0.005)


def checksums(folder: Path) -> dict[str, int]:
    """Every file under `folder` (hidden ones too), by its path relative to it."""
    return {str(p.relative_to(folder)): zlib.crc32(p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file()}


def copy_run(run: Path, tmp_path: Path) -> Path:
    shutil.copytree(run, tmp_path / "debug", ignore=shutil.ignore_patterns("tb"))
    return tmp_path / "debug/checkpoints"


def train(tmp_path, corpus_cache, *extra) -> subprocess.CompletedProcess:
    return run_command(
        "./run_train.sh", *args_of(tmp_path, corpus_cache, "--data.num_workers=0", *extra), micro_batch(1)
    )


def assert_refused(result: subprocess.CompletedProcess, *expected: str) -> None:
    output = result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert len(errors) == 1 and all(text in errors[0] for text in expected), result.stderr[-3000:]


def model_span(checkpoint: Path, file: str) -> tuple[int, int]:
    """Offset and length of the largest model tensor stored in `file` (from DCP's own metadata)."""
    storage = FileSystemReader(str(checkpoint)).read_metadata().storage_data
    spans = [(s.offset, s.length) for i, s in storage.items() if i.fqn.startswith("model.") and s.relative_path == file]
    return max(spans, key=lambda span: span[1])


def flip_tensor_bytes(checkpoint: Path) -> str:
    file = sorted(p.name for p in checkpoint.glob("*.distcp"))[0]
    offset, length = model_span(checkpoint, file)
    with open(checkpoint / file, "r+b") as handle:  # 4 KiB inside the tensor's data: the structure is intact
        handle.seek(offset + length // 2)
        data = handle.read(4096)
        handle.seek(offset + length // 2)
        handle.write(bytes(b ^ 0xFF for b in data))
    return file


def truncate_shard(checkpoint: Path) -> str:
    path = sorted(checkpoint.glob("*.distcp"))[0]
    os.truncate(path, path.stat().st_size // 2)
    return path.name


def delete_metadata(checkpoint: Path) -> str:
    (checkpoint / ".metadata").unlink()
    return ".metadata is missing"


def garbage_metadata(checkpoint: Path) -> str:
    size = (checkpoint / ".metadata").stat().st_size
    (checkpoint / ".metadata").write_bytes(os.urandom(size))  # the same size: only the checksum tells
    return ".metadata does not match its checksum"


@pytest.mark.parametrize(
    "damage, cause",
    [
        (delete_metadata, None),
        (garbage_metadata, None),
        (truncate_shard, "bytes, its manifest says"),
        (flip_tensor_bytes, "does not match its checksum"),
    ],
    ids=["no-metadata", "garbage-metadata", "truncated-shard", "flipped-tensor-bytes"],
)
def test_a_damaged_newest_checkpoint_stops_the_run_and_nothing_is_touched(
    tmp_path, corpus_cache, reference, damage, cause
):
    """It used to be skipped for step-4 (and deleted when step 6 was saved again), or loaded as it was."""
    checkpoints = copy_run(reference, tmp_path)
    damaged = checkpoints / f"step-{STEPS}"
    named = damage(damaged)
    before = checksums(checkpoints)
    result = train(tmp_path, corpus_cache, f"--training.steps={STEPS + 2}")
    assert_refused(result, f"checkpoint {damaged}: {named}", *([cause] if cause else []))
    assert checksums(checkpoints) == before


def test_a_damaged_checkpoint_without_manifest_is_named_by_its_shard_file(tmp_path, corpus_cache, reference):
    """Checkpoints written before manifests: the structure checks still name the file."""
    checkpoints = copy_run(reference, tmp_path)
    damaged = checkpoints / f"step-{STEPS}"
    (damaged / MANIFEST_FILE).unlink()
    named = truncate_shard(damaged)
    before = checksums(checkpoints)
    result = train(tmp_path, corpus_cache, f"--training.steps={STEPS + 2}")
    assert_refused(result, f"checkpoint {damaged}: incomplete: shard file(s) {named} truncated")
    assert "loaded unverified" in result.stdout
    assert checksums(checkpoints) == before


def test_sigterm_to_torchrun_exits_0_without_traceback(preempted):
    returncode, output, _ = preempted
    assert "Traceback" not in output and returncode == 0, output[-3000:]


def test_sigterm_to_torchrun_saves_the_step_and_resumes_on_one_rank(tmp_path, corpus_cache, reference, preempted):
    _, output, run = preempted
    stopped = int(output.split("preempted: stopping after step ")[1].split()[0])
    assert INTERVAL < stopped < STEPS and sorted(os.listdir(run / "checkpoints")) == ["step-2", f"step-{stopped}"]
    checkpoints = copy_run(run, tmp_path)
    before = checksums(checkpoints)
    finish(launch(args_of(tmp_path, corpus_cache, "--data.num_workers=0")))
    got, expected = losses(tmp_path / "debug"), losses(reference)
    assert sorted(got) == list(range(stopped + 1, STEPS + 1))
    for step in got:  # saved by two ranks, resumed on one: sums in another order
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-5)
    assert {k: v for k, v in checksums(checkpoints).items() if k in before} == before


def test_one_ranks_file_missing_is_named(tmp_path, corpus_cache, preempted):
    _, output, run = preempted
    checkpoints = copy_run(run, tmp_path)
    newest = checkpoints / sorted(os.listdir(checkpoints), key=lambda name: int(name.split("-")[1]))[-1]
    (newest / "__1_0.distcp").unlink()
    before = checksums(checkpoints)
    assert_refused(train(tmp_path, corpus_cache), f"checkpoint {newest}: __1_0.distcp is missing")
    assert checksums(checkpoints) == before


def test_a_stale_tmp_folder_is_removed_and_the_run_resumes_exactly(tmp_path, corpus_cache, reference):
    checkpoints = copy_run(reference, tmp_path)
    shutil.rmtree(checkpoints / f"step-{STEPS}")
    (checkpoints / f"step-{STEPS - 2}").rename(checkpoints / f"step-{STEPS}.tmp")  # a save cut short
    before = checksums(checkpoints)
    output = finish(launch(args_of(tmp_path, corpus_cache, "--data.num_workers=0")))
    assert f"resumed from {checkpoints / 'step-2'}" in output
    assert_same_as_reference(tmp_path / "debug", reference, first=INTERVAL + 1)
    assert {k: v for k, v in checksums(checkpoints).items() if k in before} == {
        k: v for k, v in before.items() if not k.startswith(f"step-{STEPS}.tmp")
    }


def assert_same_as_reference(run: Path, reference: Path, first: int) -> None:
    got, expected = losses(run), losses(reference)
    assert {step: got[step] for step in range(first, STEPS + 1)} == {
        step: expected[step] for step in range(first, STEPS + 1)
    }
    final, wanted = (
        model_weights(run / f"checkpoints/step-{STEPS}"),
        model_weights(reference / f"checkpoints/step-{STEPS}"),
    )
    assert all(torch.equal(final[name], wanted[name]) for name in wanted)


def test_sigkill_during_saves_at_several_moments_resumes_exactly(tmp_path, corpus_cache, reference):
    """Killed while saving step 2, then (resumed) step 4, then step 6, each a little later into its save."""
    args = args_of(tmp_path, corpus_cache, "--data.num_workers=0")
    checkpoints = tmp_path / "debug/checkpoints"
    for step, delay in ((2, 0.0), (4, 0.05), (6, 0.2)):
        before = published(checkpoints, step)
        process = launch(args)
        wait_for_path(checkpoints / f"step-{step}.tmp", process)
        time.sleep(delay)
        kill_run(process)
        after = published(checkpoints, step)
        assert {k: after.get(k) for k in before} == before  # what was published before this run is untouched
    output = finish(launch(args))
    assert "Traceback" not in output and "resumed from" in output
    assert_same_as_reference(tmp_path / "debug", reference, first=1)


def published(checkpoints: Path, saving: int) -> dict[str, int]:
    """Checksums of the published checkpoints older than the save of step `saving`."""
    if not checkpoints.exists():
        return {}
    old = (name for name in os.listdir(checkpoints) if ".tmp" not in name and int(name.split("-")[1]) < saving)
    return {f"{name}/{k}": v for name in old for k, v in checksums(checkpoints / name).items()}
