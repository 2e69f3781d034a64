"""Checkpoints as a user meets them: kill, preempt, resume (also on another number of ranks),
interrupted saves, damaged or mismatched checkpoints, exports. Runs go through run_train.sh."""

import shutil

import pytest
import torch
import torch.distributed.checkpoint as dcp
from helpers import (
    STEPS,
    finish,
    kill_run,
    launch,
    losses,
    micro_batch,
    model_weights,
    overrides,
    run_command,
    wait_for_checkpoint,
)

from tinytitan.models.llama import ModelArgs, build_model
from tinytitan.run_folder import RunFolder


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, corpus_cache):
    """The reference: 20 steps on one rank without a break."""
    root = tmp_path_factory.mktemp("uninterrupted")
    finish(launch(overrides(root, corpus_cache)))
    return root / "debug"


# From 2 ranks to 1 (FSDP shards gathered into one); the loader tests change rank counts both ways.
@pytest.mark.parametrize("before, after", [(2, 1)])
def test_resume_on_another_number_of_ranks_continues_the_run(tmp_path, corpus_cache, uninterrupted, before, after):
    args = overrides(tmp_path, corpus_cache, "--data.num_workers=0")
    process = launch(args, ranks=before)
    wait_for_checkpoint(tmp_path / "debug", 10, process, timeout=240)
    kill_run(process)
    output = finish(launch(args, ranks=after))
    assert "resumed from" in output
    got, expected = losses(tmp_path / "debug"), losses(uninterrupted)
    assert sorted(got) == sorted(expected)
    for step in expected:  # fp32; sums in another order on another number of ranks
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-5)


def test_a_save_killed_midway_is_ignored_and_cleaned(tmp_path, corpus_cache, uninterrupted):
    """What a kill during the step-20 save leaves: a step-20.tmp with some shards and no metadata."""
    checkpoints = tmp_path / "debug/checkpoints"
    shutil.copytree(uninterrupted / "checkpoints/step-10", checkpoints / "step-10")
    shutil.copytree(uninterrupted / "checkpoints/step-20", checkpoints / "step-20.tmp")
    (checkpoints / "step-20.tmp/.metadata").unlink()
    output = finish(launch(overrides(tmp_path, corpus_cache)))
    assert f"resumed from {checkpoints / 'step-10'}" in output
    assert RunFolder(tmp_path / "debug").published_steps() == [10, 20] and not (checkpoints / "step-20.tmp").exists()


def test_a_damaged_checkpoint_stops_with_one_line_and_is_left_alone(tmp_path, corpus_cache, uninterrupted):
    checkpoint = tmp_path / "debug/checkpoints/step-10"
    shutil.copytree(uninterrupted / "checkpoints/step-10", checkpoint)
    shard = next(checkpoint.glob("*.distcp"))
    shard.unlink()
    before = sorted(p.name for p in checkpoint.iterdir())
    result = run_command("./run_train.sh", *overrides(tmp_path, corpus_cache), micro_batch(1))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: checkpoint {checkpoint}: {shard.name} is missing")
    assert sorted(p.name for p in checkpoint.iterdir()) == before


def test_resuming_a_finished_run_says_so_and_changes_nothing(tmp_path, corpus_cache, uninterrupted):
    """It used to exit 0 without a word (and would have exported again)."""
    shutil.copytree(uninterrupted / "checkpoints", tmp_path / "debug/checkpoints")
    before = {p: p.read_bytes() for p in sorted((tmp_path / "debug/checkpoints").rglob("*")) if p.is_file()}
    result = run_command(
        "./run_train.sh", *overrides(tmp_path, corpus_cache, "--checkpoint.export_dtype=bfloat16"), micro_batch(1)
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    step = tmp_path / f"debug/checkpoints/step-{STEPS}"
    assert f"nothing to train: {step} is at or past training.steps = {STEPS}" in result.stdout
    assert {p: p.read_bytes() for p in sorted((tmp_path / "debug/checkpoints").rglob("*")) if p.is_file()} == before


def test_initial_load_of_another_model_is_refused(tmp_path, corpus_cache):
    other = ModelArgs(dim=96, n_layers=2, n_heads=6, n_kv_heads=2, vocab_size=4096, ffn_hidden_dim=200)
    dcp.save({"model": build_model(other, "cpu").state_dict()}, checkpoint_id=str(tmp_path / "other"), no_dist=True)
    result = run_command(
        "./run_train.sh",
        *overrides(tmp_path, corpus_cache, f"--checkpoint.initial_load_path={tmp_path / 'other'}"),
        micro_batch(1),
    )
    assert result.returncode == 2
    assert (
        f"error: checkpoint.initial_load_path {tmp_path / 'other'}: does not fit this model: shape of" in result.stderr
    )
    assert "tok_embeddings.weight is (4096, 96) in the checkpoint, (4096, 256) in the model" in result.stderr
    result = run_command(
        "./run_train.sh",
        *overrides(tmp_path, corpus_cache, f"--checkpoint.initial_load_path={tmp_path}"),
        micro_batch(1),
    )
    assert result.returncode == 2 and "not a checkpoint" in result.stderr


def test_export_in_bf16_and_start_a_new_run_from_it(tmp_path, corpus_cache, uninterrupted):
    first = overrides(
        tmp_path / "a",
        corpus_cache,
        "--checkpoint.export_dtype=bfloat16",
        "--training.steps=3",
        "--lr_scheduler.warmup_steps=2",
    )
    finish(launch(first))
    exported = tmp_path / "a/debug/checkpoints/step-3-model"
    weights = model_weights(exported)
    trained = model_weights(tmp_path / "a/debug/checkpoints/step-3")
    for name, tensor in trained.items():
        assert torch.equal(weights[name], tensor.to(torch.bfloat16).float())  # the template is fp32
    second = overrides(
        tmp_path / "b",
        corpus_cache,
        f"--checkpoint.initial_load_path={exported}",
        "--training.steps=2",
        "--lr_scheduler.warmup_steps=1",
    )
    output = finish(launch(second))
    assert f"model initialised from {exported}" in output
    assert losses(tmp_path / "b/debug")[1] < losses(tmp_path / "a/debug")[1] - 0.1  # starts where the first left off


def test_async_saves_publish_every_checkpoint_and_change_nothing(tmp_path, corpus_cache, uninterrupted):
    output = finish(launch(overrides(tmp_path, corpus_cache, "--checkpoint.async_save")))
    assert RunFolder(tmp_path / "debug").published_steps() == [10, 20]
    # Published once written, while training goes on; not only when the next save starts.
    assert output.index("checkpoint saved: ") < output.index("step     20/20 ")
    assert losses(tmp_path / "debug") == losses(uninterrupted)
    saved, reference = (
        model_weights(tmp_path / "debug/checkpoints/step-20"),
        model_weights(uninterrupted / "checkpoints/step-20"),
    )
    assert all(torch.equal(saved[name], reference[name]) for name in reference)
