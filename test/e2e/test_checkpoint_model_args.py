"""Every checkpoint carries its model arguments (model_args.json, covered by the manifest), and a run
never trains silently with other ones: resume and initial_load_path refuse a checkpoint whose saved
arguments differ from the model in any field (rope_theta, norm_eps: the tensor shapes do not show
them), naming the field with both values. Runs go through run_train.sh."""

import dataclasses
import json

import pytest
import transformers
from helpers import finish, launch, micro_batch, overrides, run_command, run_python

from tinytitan import dcp_reader
from tinytitan.model_files import MODEL_ARGS_FILE
from tinytitan.models.llama import FLAVORS


def short(root, corpus_cache, *extra):
    return overrides(
        root, corpus_cache, "--training.steps=2", "--checkpoint.interval=1", "--lr_scheduler.warmup_steps=1", *extra
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus_cache):
    """A finished 2-step debug run with its checkpoints and a bfloat16 export."""
    root = tmp_path_factory.mktemp("trained")
    finish(launch(short(root, corpus_cache, "--checkpoint.export_dtype=bfloat16")))
    return root / "debug/checkpoints"


def saved_args(folder) -> dict:
    return json.loads((folder / MODEL_ARGS_FILE).read_text())


def rewrite_args(folder, **changes) -> None:
    """What a checkpoint of another model would hold: its model_args.json changed, and resealed."""
    record = saved_args(folder)
    record["model_args"].update(changes)
    (folder / MODEL_ARGS_FILE).write_text(json.dumps(record))
    dcp_reader.seal(folder)


def test_every_checkpoint_and_export_carries_the_model_arguments(trained):
    debug = {"flavor": "debug", "model_args": dataclasses.asdict(FLAVORS["debug"])}
    for name in ("step-1", "step-2", "step-2-model"):
        assert saved_args(trained / name) == debug
        assert MODEL_ARGS_FILE in json.loads((trained / name / dcp_reader.MANIFEST_FILE).read_text())["files"]
        assert dcp_reader.verify(trained / name, "checkpoint") == []


def test_a_hf_import_with_other_rope_theta_and_eps_is_refused_at_initial_load(tmp_path, corpus_cache):
    """The debug shape, but rope_theta 500000 and rms_norm_eps 1e-6: the shapes fit, the model does not."""
    debug = FLAVORS["debug"]
    config = transformers.LlamaConfig(
        hidden_size=debug.dim,
        num_hidden_layers=debug.n_layers,
        num_attention_heads=debug.n_heads,
        num_key_value_heads=debug.n_kv_heads,
        intermediate_size=debug.ffn_hidden_dim,
        vocab_size=debug.vocab_size,
        max_position_embeddings=debug.max_seq_len,
        rope_theta=500000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "hf")
    result = run_python("scripts/convert_hf_to_dcp.py", str(tmp_path / "hf"), str(tmp_path / "dcp"))
    assert result.returncode == 0, result.stderr
    result = run_command(
        "./run_train.sh",
        *short(tmp_path, corpus_cache, f"--checkpoint.initial_load_path={tmp_path / 'dcp'}"),
        "--model.flavor=debug",  # a named flavor: without one, the run takes the checkpoint's arguments
        micro_batch(1),
    )
    assert result.returncode == 2, result.stdout[-2000:]
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: checkpoint.initial_load_path {tmp_path / 'dcp'}: ")
    assert "norm_eps = 1e-06 in the checkpoint's model_args.json, 1e-05 in this run's model" in line
    assert "rope_theta = 500000.0 in the checkpoint's model_args.json, 10000.0 in this run's model" in line
    assert "Traceback" not in result.stderr and not (tmp_path / "debug/checkpoints/step-1").exists()


def test_resuming_a_checkpoint_of_other_model_arguments_is_refused(tmp_path, corpus_cache):
    finish(launch(short(tmp_path, corpus_cache)))
    checkpoints = tmp_path / "debug/checkpoints"
    # the same run resumed with another [model] key: the shapes fit, the model does not
    extra = ("--training.steps=3", "--model.norm_eps=1e-6")
    result = run_command("./run_train.sh", *short(tmp_path, corpus_cache, *extra), micro_batch(1))
    assert result.returncode == 2, result.stdout[-2000:]
    assert (
        f"error: checkpoint {checkpoints / 'step-2'}: norm_eps = 1e-05 in the checkpoint's model_args.json, "
        "1e-06 in this run's model" in result.stderr
    )
    assert len(result.stderr.strip().splitlines()) == 1
    rewrite_args(checkpoints / "step-2", rope_theta=500000.0)
    before = {p: p.read_bytes() for p in sorted(checkpoints.rglob("*")) if p.is_file()}
    result = run_command("./run_train.sh", *short(tmp_path, corpus_cache, "--training.steps=3"), micro_batch(1))
    assert result.returncode == 2, result.stdout[-2000:]
    assert (
        f"error: checkpoint {checkpoints / 'step-2'}: rope_theta = 500000.0 in the checkpoint's model_args.json, "
        "10000.0 in this run's model (a run resumes with the model it was started with" in result.stderr
    )
    assert len(result.stderr.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in sorted(checkpoints.rglob("*")) if p.is_file()} == before  # nothing lost


def test_an_export_of_the_same_model_starts_a_run_and_one_without_model_args_still_loads(
    tmp_path, corpus_cache, trained
):
    output = finish(launch(short(tmp_path / "a", corpus_cache, f"--checkpoint.initial_load_path={trained}/step-2")))
    assert f"model initialised from {trained}/step-2" in output
    old = tmp_path / "old"  # an export written before checkpoints carried their arguments
    old.mkdir()
    for path in (trained / "step-2-model").iterdir():
        if path.name not in (MODEL_ARGS_FILE, dcp_reader.MANIFEST_FILE):
            (old / path.name).write_bytes(path.read_bytes())
    dcp_reader.seal(old)
    output = finish(launch(short(tmp_path / "b", corpus_cache, f"--checkpoint.initial_load_path={old}")))
    assert f"model initialised from {old}" in output


def test_generate_with_a_flavor_other_than_the_checkpoints_arguments_is_refused(tmp_path, trained):
    checkpoint = tmp_path / "step-2-model"
    checkpoint.mkdir()
    for path in (trained / "step-2-model").iterdir():
        (checkpoint / path.name).write_bytes(path.read_bytes())
    rewrite_args(checkpoint, norm_eps=1e-6)
    result = run_python("scripts/generate.py", str(checkpoint), "--flavor=debug", "--max-new-tokens=2", "--prompt=a")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: checkpoint {checkpoint}: norm_eps = 1e-06 in the checkpoint's model_args.json, 1e-05 in flavor "
        "'debug' from --flavor (the checkpoint was saved with other model arguments: drop --flavor to use its own)"
    )
