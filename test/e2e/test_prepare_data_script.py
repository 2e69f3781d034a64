"""scripts/prepare_data.py as a user runs it: a run killed midway resumes to the shards of one
run, worker processes give the shards of one process, and an error is one line that keeps what was
done. The expected shards come from the same preparation run in this process."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import (
    REPO_ROOT,
    expected,
    folder_contents,
    prepare,
    run_python,
    slimpajama_rows,
    texts,
    tokens_of,
    write_lines,
    write_numbered_inputs,
    write_starcoderdata,
)

from tinytitan.prepare.one_input import input_key


def test_a_killed_run_resumes_to_the_shards_of_one_run(tmp_path, tokenizer):
    """The third input is a pipe: the run finishes two inputs, writes shards of the third as the
    test feeds it, and is killed there; the next run, given the file whole, completes it."""
    data, out = tmp_path / "data", tmp_path / "out"
    write_numbered_inputs(data, 2)
    third = [{"text": t} for t in texts("p2", 30)]
    os.mkfifo(data / "p2.jsonl")
    flags = ["--tokenizer", str(tokenizer.path), "--tokens-per-shard", "100"]
    log = (tmp_path / "log").open("w")
    run = subprocess.Popen(
        [sys.executable, "scripts/prepare_data.py", str(data), "--output", str(out), "--workers", "1", *flags],
        cwd=REPO_ROOT,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    writer = None
    try:
        writer = _wait_for(run, lambda: _open_for_writing(data / "p2.jsonl"))  # p0 and p1 are done
        os.write(writer, b"".join(json.dumps(row).encode() + b"\n" for row in third[:15]))
        key = input_key("data/p2.jsonl")
        _wait_for(run, lambda: list(out.glob(f"train-{key}-*.bin")))
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
        if writer is not None:
            os.close(writer)
    done = sorted(p.name for p in (out / "done").iterdir())
    assert done == sorted(f"{input_key(f'data/p{i}.jsonl')}.json" for i in range(2))

    (data / "p2.jsonl").unlink()
    write_lines(data / "p2.jsonl", third)
    prepare(tokenizer, data, "--output", out, "--tokens-per-shard", "100")
    prepare(tokenizer, data, "--output", tmp_path / "whole", "--tokens-per-shard", "100")
    assert folder_contents(out) == folder_contents(tmp_path / "whole")


def _open_for_writing(fifo: Path):
    try:
        return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # fails until the run opens it to read
    except OSError:
        return None


def _wait_for(run: subprocess.Popen, condition, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert run.poll() is None, "the preparation ended before the test could interrupt it"
        if result := condition():
            return result
        time.sleep(0.02)
    raise AssertionError("timed out waiting for the preparation")


def test_the_script_with_worker_processes_matches_one_process(tmp_path, tokenizer):
    files = write_starcoderdata(tmp_path / "starcoderdata")
    write_lines(tmp_path / "sp/chunk1/x.jsonl.zst", slimpajama_rows("s", 10), zst=True)
    inputs = [tmp_path / "starcoderdata", tmp_path / "sp"]
    result = run_python(
        "scripts/prepare_data.py",
        *map(str, inputs),
        "--output",
        str(tmp_path / "parallel"),
        "--holdout-fraction",
        "0.3",
        "--tokenizer",
        str(tokenizer.path),
        "--workers",
        "2",
    )
    assert result.returncode == 0, result.stderr
    assert "train:" in result.stdout and "validation:" in result.stdout
    assert all(rate in result.stderr for rate in ("documents/s", "tokens/s", "MB/s"))
    prepare(tokenizer, *inputs, "--output", tmp_path / "serial", "--holdout-fraction", "0.3")
    parallel = folder_contents(tmp_path / "parallel")
    assert parallel == folder_contents(tmp_path / "serial")
    assert len(parallel[1]["inputs"]) == len(files) + 1


def test_an_error_is_one_line_and_keeps_what_was_done(tmp_path, tokenizer):
    data = tmp_path / "data"
    good = texts("good", 5)
    write_lines(data / "a.jsonl", [{"text": t} for t in good])
    broken = write_lines(data / "b.jsonl.zst", [{"text": t} for t in texts("b", 200)], zst=True)
    whole_bytes = broken.read_bytes()
    broken.write_bytes(whole_bytes[: len(whole_bytes) // 2])

    result = run_python(
        "scripts/prepare_data.py",
        str(data),
        "--output",
        str(tmp_path / "out"),
        "--tokens-per-shard",
        "100",
        "--tokenizer",
        str(tokenizer.path),
        "--workers",
        "1",
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert f"{broken}: the zstd stream is truncated or corrupt after line" in errors[0]
    assert "expected a complete .zst file" in errors[0]
    assert tokens_of(tmp_path / "out", "train") == expected(tokenizer, good)  # the first input is kept
    assert {p.name.split("-")[1] for p in (tmp_path / "out").glob("*.bin")} == {"data.a"}  # nothing of the second

    broken.write_bytes(whole_bytes)
    prepare(tokenizer, data, "--output", tmp_path / "out", "--tokens-per-shard", "100")
    assert tokens_of(tmp_path / "out", "train") == expected(tokenizer, good + texts("b", 200))
