"""The rank-dependent checks (mesh degrees, gradient accumulation, devices), the dtype spellings
and the launcher's run options. (That the config imports without torch is checked in a fresh
Python: test/e2e/test_config_entry_point.py.)"""

import pytest

from tinytitan.config import (
    ConfigError,
    Parallelism,
    Training,
    accumulation_steps,
    check_runtime,
    help_text,
    load_config,
    mesh_degrees,
    to_toml,
)
from tinytitan.config.__main__ import split_run_options


@pytest.mark.parametrize(
    "replicate, shard, world_size, expected",
    [(1, -1, 1, (1, 1)), (1, -1, 4, (1, 4)), (-1, 8, 16, (2, 8)), (2, -1, 16, (2, 8)), (2, 4, 8, (2, 4))],
)
def test_mesh_degrees_fill_in_the_rest_of_the_ranks(replicate, shard, world_size, expected):
    parallelism = Parallelism(data_parallel_shard_degree=shard, data_parallel_replicate_degree=replicate)
    assert mesh_degrees(parallelism, world_size) == expected


@pytest.mark.parametrize(
    "replicate, shard, world_size, fragments",
    [
        (-1, -1, 4, ["data_parallel_replicate_degree = -1", "data_parallel_shard_degree = -1", "at most one"]),
        (1, 3, 2, ["parallelism.data_parallel_shard_degree = 3", "expected a product equal to the 2 ranks"]),
        (-1, 3, 4, ["parallelism.data_parallel_replicate_degree = -1", "3", "the 4 ranks"]),
        (3, -1, 4, ["parallelism.data_parallel_replicate_degree = 3", "the 4 ranks"]),
        (2, 8, 8, ["= 2 x parallelism.data_parallel_shard_degree = 8", "the 8 ranks"]),
    ],
)
def test_mesh_degrees_that_do_not_fit_the_ranks_name_keys_and_values(replicate, shard, world_size, fragments):
    parallelism = Parallelism(data_parallel_shard_degree=shard, data_parallel_replicate_degree=replicate)
    with pytest.raises(ConfigError) as error:
        mesh_degrees(parallelism, world_size)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_accumulation_steps_make_up_the_global_batch():
    training = Training(seq_len=64, micro_batch_size=8, global_batch_tokens=4096)
    assert [accumulation_steps(training, ranks) for ranks in (1, 2, 4, 8)] == [8, 4, 2, 1]


def test_a_batch_the_ranks_cannot_divide_is_refused():
    training = Training(seq_len=256, micro_batch_size=8, global_batch_tokens=1000)
    with pytest.raises(ConfigError, match="expected a multiple of micro_batch_size x seq_len x ranks") as error:
        accumulation_steps(training, 2)
    assert str(error.value).startswith("training.global_batch_tokens = 1000:")
    assert "8 x 256 x 2 = 4096" in str(error.value)
    with pytest.raises(ConfigError):  # 4096 tokens per step cannot be shared by 3 ranks either
        accumulation_steps(Training(seq_len=256, micro_batch_size=8, global_batch_tokens=4096), 3)


@pytest.mark.parametrize(
    "overrides, world_size, per_node, cuda_devices",
    [
        ([], 1, 1, 0),  # CPU
        ([], 1, 1, 1),  # one GPU
        (["--training.global_batch_tokens=16384"], 8, 8, 8),  # a full node
        (["--training.device=cpu"], 2, 2, 1),  # CPU processes on a machine with one GPU
        (["--training.device=cuda", "--training.global_batch_tokens=4096"], 2, 1, 1),  # two nodes of one GPU
    ],
)
def test_check_runtime_accepts_what_can_run(overrides, world_size, per_node, cuda_devices):
    check_runtime(load_config(overrides), world_size, per_node, cuda_devices)


@pytest.mark.parametrize(
    "overrides, world_size, per_node, cuda_devices, fragments",
    [
        (["--training.global_batch_tokens=1000"], 2, 2, 0, ["training.global_batch_tokens = 1000", "x 2 = 4096"]),
        (["--parallelism.data_parallel_shard_degree=3"], 2, 2, 0, ["data_parallel_shard_degree = 3", "2 ranks"]),
        (["--training.device=cuda"], 1, 1, 0, ['training.device = "cuda"', "expected a CUDA device"]),
        ([], 2, 2, 1, ['training.device = "auto"', "2 processes per node on 1 CUDA device", "at most one process"]),
        (["--training.device=cuda"], 4, 4, 2, ['training.device = "cuda"', "4 processes per node on 2"]),
        (["--model.attention=flash"], 1, 1, 1, ['model.attention = "flash"', "pip install 'tinytitan[flash]'"]),
    ],
)
def test_check_runtime_names_the_key_value_and_expectation(overrides, world_size, per_node, cuda_devices, fragments):
    with pytest.raises(ConfigError) as error:
        check_runtime(load_config(overrides), world_size, per_node, cuda_devices)
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_short_dtype_spellings_load_as_the_long_ones(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('[training]\nmixed_precision = "bf16"\n[checkpoint]\nexport_dtype = "fp16"\n')
    config = load_config([f"--job.config_file={path}"])
    assert (config.training.mixed_precision, config.checkpoint.export_dtype) == ("bfloat16", "float16")
    config = load_config(["--training.mixed_precision=fp32", "--checkpoint.export_dtype=bf16"])
    assert (config.training.mixed_precision, config.checkpoint.export_dtype) == ("float32", "bfloat16")
    assert 'mixed_precision = "float32"' in to_toml(config) and 'export_dtype = "bfloat16"' in to_toml(config)
    long = load_config(["--training.mixed_precision=bfloat16", "--checkpoint.export_dtype=float32"])
    assert (long.training.mixed_precision, long.checkpoint.export_dtype) == ("bfloat16", "float32")


def test_a_dtype_outside_the_choices_is_refused_with_both_spellings_named():
    with pytest.raises(ConfigError) as error:
        load_config(["--training.mixed_precision=fp16"])  # a dtype, but not one training runs in
    assert "training.mixed_precision = \"fp16\": expected one of 'auto', 'bfloat16', 'float32'" in str(error.value)
    assert "'bf16', 'fp32'" in str(error.value)
    assert '--training.mixed_precision (str, default "auto")' in help_text()


def test_run_options_lead_the_config_arguments():
    assert split_run_options(["--world-size=4", "--processes-per-node", "2", "--cuda-devices=0", "--a.b=1"]) == (
        {"--world-size": 4, "--processes-per-node": 2, "--cuda-devices": 0},
        ["--a.b=1"],
    )
    with pytest.raises(ConfigError, match="--world-size = 'two': expected a whole number"):
        split_run_options(["--world-size=two"])


@pytest.mark.parametrize(
    "overrides, cuda_devices, fragments",
    [
        (["--model.attention=flash"], 0, ["flash-attn runs on CUDA only", 'or model.attention = "flex"']),
        (["--model.attention=flash", "--training.device=cpu"], 1, ["flash-attn runs on CUDA only"]),
        (["--model.attention=flash", "--training.mixed_precision=float32"], 1, ["computes in bfloat16"]),
    ],
)
def test_flash_attention_needs_cuda_and_bfloat16_when_installed(monkeypatch, overrides, cuda_devices, fragments):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object())  # as if flash-attn were installed
    with pytest.raises(ConfigError) as error:
        check_runtime(load_config(overrides), 1, 1, cuda_devices)
    assert all(fragment in str(error.value) for fragment in fragments), str(error.value)
    check_runtime(load_config(["--model.attention=flash"]), 1, 1, 1)  # installed, on CUDA, bfloat16: accepted


def test_profiling_past_the_last_step_is_refused_only_when_enabled():
    with pytest.raises(ConfigError, match=r"^profiling.start_step = 11: expected at most training.steps = 10"):
        load_config(
            ["--training.steps=10", "--lr_scheduler.warmup_steps=2", "--profiling.enable", "--profiling.start_step=11"]
        )
    assert load_config(["--training.steps=10", "--lr_scheduler.warmup_steps=2", "--profiling.start_step=11"])
