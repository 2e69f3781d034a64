"""Resuming with settings that change what the saved data position means is refused in one line,
with the checkpoint left as it was; a changed global batch, steps, lr or AdamW beta continue the run,
each said in one line, and the lr of the first resumed step is the new schedule's."""

import hashlib
import math
import re

import pytest
from helpers import overrides, run_command

from tinytitan.run_folder import RunFolder


def checksums(folder) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory, corpus_cache):
    """A run of 10 steps with its checkpoint at step 10."""
    root = tmp_path_factory.mktemp("saved")
    result = run_command("./run_train.sh", *overrides(root, corpus_cache, "--training.steps=10"), env={"NGPU": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    return root


def resume(saved_run, tmp_path, corpus_cache, *changed):
    run_root = tmp_path / "copy"
    run_command("cp", "-r", str(saved_run), str(run_root))
    before = checksums(run_root / "debug/checkpoints")
    result = run_command("./run_train.sh", *overrides(run_root, corpus_cache, *changed), env={"NGPU": "1"})
    return result, before, run_root


@pytest.mark.parametrize(
    "changed, message",
    [
        ("--training.seq_len=64", "resume: training.seq_len = 64: .* with training.seq_len = 128"),
        ("--training.seed=7", "resume: training.seed = 7: .* with training.seed = 42"),
        ("--data.dataset=synthetic", 'resume: data.dataset = "synthetic": .* with data.dataset = "builtin"'),
    ],
)
def test_a_changed_setting_is_refused_and_the_checkpoint_left_alone(
    saved_run, tmp_path, corpus_cache, changed, message
):
    result, before, run_root = resume(saved_run, tmp_path, corpus_cache, changed)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr + result.stdout, result.stderr[-2000:]
    assert re.search(message, errors[0]), errors[0]
    assert checksums(run_root / "debug/checkpoints") == before


def test_a_changed_global_batch_more_steps_and_another_lr_continue_the_run_and_say_so(
    saved_run, tmp_path, corpus_cache
):
    changed = ("--training.global_batch_tokens=2048", "--optimizer.lr=1e-3", "--optimizer.beta2=0.99")
    result, _, run_root = resume(saved_run, tmp_path, corpus_cache, *changed)  # and training.steps 10 -> 20
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resumed from" in result.stdout and RunFolder(run_root / "debug").published_steps() == [10, 20]
    for said in (
        "resume: training.steps 10 -> 20: the lr follows the config's schedule from step 11",
        "resume: optimizer.lr 0.003 -> 0.001",
        "resume: optimizer betas (0.9, 0.95) -> (0.9, 0.99) (the config's) from the next step",
    ):
        assert said in result.stdout, result.stdout[-3000:]
    lr = re.search(r"^step +11 .*  lr (\S+)", result.stdout, re.M).group(1)
    # the debug recipe: min_lr 3e-4; warmup 5 of 20 steps: step 11 is 6/15 of the cosine
    assert float(lr) == pytest.approx(3e-4 + 7e-4 * (1 + math.cos(math.pi * 6 / 15)) / 2, rel=1e-3)
