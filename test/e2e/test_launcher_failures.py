"""run_train.sh with several processes: a mistake that only the workers can find (a data source
that is not there, a damaged checkpoint) ends the run as it does with one process, with one
`error:` line and exit status 2, not once per worker with tracebacks and torchrun's report; a bug
in a worker keeps its traceback."""

import os

from helpers import run_command, small_run


def train(tmp_path, corpus_cache, ngpu, *extra, env=None):
    args = small_run(tmp_path / "outputs", corpus_cache, "--training.steps=2", "--lr_scheduler.warmup_steps=1", *extra)
    return run_command("./run_train.sh", *args, env={"NGPU": ngpu, "CUDA_VISIBLE_DEVICES": "", **(env or {})})


def assert_one_error_line(result, *fragments):
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert "ChildFailedError" not in result.stdout + result.stderr


def test_a_missing_data_source_is_one_line_from_two_workers(tmp_path, corpus_cache):
    job = tmp_path / "job.toml"
    job.write_text(f'[data]\ndataset = "sources"\n[[data.sources]]\nname = "web"\npath = "{tmp_path / "nope"}"\n')
    result = train(tmp_path, corpus_cache, "2", f"--job.config_file={job}", "--training.micro_batch_size=4")
    assert_one_error_line(result, str(tmp_path / "nope"), "no such file")
    assert "resolved config" in result.stdout  # the training log still reaches the terminal


def test_a_damaged_checkpoint_is_one_line_from_two_workers(tmp_path, corpus_cache):
    saved = train(tmp_path, corpus_cache, "1", "--checkpoint.enable", "--checkpoint.interval=2")
    assert saved.returncode == 0, saved.stderr[-3000:]
    metadata = tmp_path / "outputs/debug/checkpoints/step-2/.metadata"
    metadata.write_bytes(b"not a checkpoint's metadata")
    result = train(
        tmp_path, corpus_cache, "2", "--checkpoint.enable", "--training.steps=4", "--training.micro_batch_size=4"
    )
    assert_one_error_line(result, "step-2")


def test_a_bug_in_a_worker_keeps_its_traceback(tmp_path, corpus_cache):
    """A bug is not a user mistake: its traceback is shown, and the exit status is not 2."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    # Python imports sitecustomize at start-up: in worker 1 (torchrun's own process has no RANK) it
    # replaces training by a bug before tinytitan.train imports the entry-point wrapper.
    (hooks / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK') == '1':\n"
        "    import tinytitan.errors\n"
        "    run = tinytitan.errors.run_entry_point\n"
        "    def bug(argv):\n"
        "        raise RuntimeError('an injected bug')\n"
        "    tinytitan.errors.run_entry_point = lambda main, argv=None: run(bug, argv)\n"
    )
    path = os.pathsep.join(filter(None, [str(hooks), os.environ.get("PYTHONPATH")]))
    result = train(tmp_path, corpus_cache, "2", "--training.micro_batch_size=4", env={"PYTHONPATH": path})
    assert result.returncode not in (0, 2), result.stderr[-3000:]
    assert "Traceback" in result.stderr and "RuntimeError: an injected bug" in result.stderr
