"""A run folder or cache folder that cannot be written (a read-only file system, under /proc, a file
in the way) and a disk that fills during a save: one `error:` line naming the path and why, exit
status 2, no traceback; and nothing already saved is touched."""

import contextlib
import hashlib
import subprocess

import pytest
from helpers import overrides, run_command, run_python

from tinytitan.run_folder import RunFolder


@contextlib.contextmanager
def tmpfs(folder, options):
    """A tmpfs mounted on `folder` with mount's `options` (size=..., ro); skips where mounting is not permitted."""
    folder.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {mount.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def train(run_root, corpus_cache, *extra):
    return run_command("./run_train.sh", *overrides(run_root, corpus_cache, "--data.num_workers=0", *extra))


def assert_one_error_line(result, *fragments):
    assert result.returncode == 2, result.stderr[-3000:]
    # the last line of stderr, and its only error (progress lines may come before it)
    lines = [line for line in result.stderr.strip().splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and result.stderr.strip().endswith(lines[0]), result.stderr[-3000:]
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.stdout + result.stderr


def checksums(folder):
    return {
        path.relative_to(folder): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in folder.rglob("*")
        if path.is_file()
    }


def test_a_run_folder_under_proc_is_one_line(corpus_cache):
    assert_one_error_line(train("/proc/tinytitan-test", corpus_cache), "/proc/tinytitan-test", "no such file")


def test_a_run_folder_behind_a_file_is_one_line(tmp_path, corpus_cache):
    (tmp_path / "a-file").write_text("in the way")
    result = train(tmp_path / "a-file/outputs", corpus_cache)
    assert_one_error_line(result, str(tmp_path / "a-file"), "not a folder")


def test_a_cache_folder_behind_a_file_is_one_line(tmp_path, corpus_cache):
    (tmp_path / "a-file").write_text("in the way")
    result = train(tmp_path / "outputs", corpus_cache, f"--data.cache_dir={tmp_path / 'a-file/cache'}")
    assert_one_error_line(result, str(tmp_path / "a-file"), "not a folder")
    assert (tmp_path / "a-file").read_text() == "in the way"


@pytest.mark.parametrize("where, why", [("/proc/tinytitan-test", "no such file"), ("a-file/prepared", "not a folder")])
def test_a_data_preparation_output_that_cannot_be_written_is_one_line(tmp_path, tokenizer, where, why):
    (tmp_path / "a-file").write_text("in the way")
    (tmp_path / "corpus.jsonl").write_text('{"text": "a document to prepare"}\n')
    output = tmp_path / where  # an absolute `where` stays as it is
    result = run_python(
        "scripts/prepare_data.py",
        str(tmp_path / "corpus.jsonl"),
        "--output",
        str(output),
        "--tokenizer",
        str(tokenizer.path),
    )
    assert_one_error_line(result, str(output), why)
    assert (tmp_path / "a-file").read_text() == "in the way"


def test_a_read_only_run_folder_is_one_line(tmp_path, corpus_cache):
    with tmpfs(tmp_path / "read-only", "ro,size=1m") as folder:
        assert_one_error_line(train(folder, corpus_cache), str(folder), "read-only file system")


def test_a_disk_full_during_a_save_is_one_line_and_keeps_the_saved_checkpoint(tmp_path, corpus_cache):
    """The debug model's checkpoint (weights and AdamW moments) is about 58 MiB: one fits in 90."""
    with tmpfs(tmp_path / "disk", "size=90m") as disk:
        first = train(
            disk, corpus_cache, "--training.steps=5", "--checkpoint.interval=5", "--lr_scheduler.warmup_steps=2"
        )
        assert first.returncode == 0, first.stderr[-3000:]
        run = RunFolder(disk / "debug")
        assert run.published_steps() == [5]
        saved = checksums(run.checkpoint(5))

        result = train(
            disk, corpus_cache, "--training.steps=10", "--checkpoint.interval=5", "--lr_scheduler.warmup_steps=2"
        )
        assert_one_error_line(result, str(run.staging(10)), "no space left on device")
        assert "resumed from" in result.stdout
        assert run.published_steps() == [5] and checksums(run.checkpoint(5)) == saved
        assert not run.staging(10).exists()  # the failed save took its half-written folder away
