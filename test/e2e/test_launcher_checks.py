"""run_train.sh checks the config for the ranks and devices it will run on before starting
anything: a rank-dependent mistake is one `error:` line and exit status 2, with no traceback and
no run folder, for two processes as for one."""

import pytest
from helpers import run_command


@pytest.mark.parametrize(
    "ngpu, overrides, fragments",
    [
        (
            "2",
            ["--data.dataset=synthetic", "--training.global_batch_tokens=1000"],
            ["training.global_batch_tokens = 1000", "expected a multiple of", "8 x 256 x 2 = 4096"],
        ),
        (
            "2",
            ["--parallelism.data_parallel_shard_degree=3"],
            ["parallelism.data_parallel_shard_degree = 3", "expected a product equal to the 2 ranks"],
        ),
        ("2", ["--training.device=cuda"], ['training.device = "cuda"', "expected a CUDA device"]),
        ("1", ["--training.device=cuda"], ['training.device = "cuda"', "expected a CUDA device"]),
        ("1", ["--model.attention=flash"], ['model.attention = "flash"', "not installed", "tinytitan[flash]"]),
    ],
)
def test_a_rank_dependent_mistake_is_one_line_before_anything_starts(tmp_path, ngpu, overrides, fragments):
    dump_folder = tmp_path / "outputs"
    result = run_command(
        "./run_train.sh",
        f"--job.dump_folder={dump_folder}",
        *overrides,
        env={"NGPU": ngpu, "CUDA_VISIBLE_DEVICES": ""},  # what this test says of CUDA holds on any machine
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout == ""  # not even the resolved config
    assert not dump_folder.exists()
