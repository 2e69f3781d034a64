"""The config as the entry points meet it, in a fresh Python: a mistake is one line and exit
status 2, --help lists every key, and importing the config imports neither torch nor triton."""

import dataclasses
import subprocess
import sys

import pytest
from helpers import run_python, write_job_file

from tinytitan.config import JobConfig, help_text
from tinytitan.config.parser import _type_name


@pytest.mark.parametrize(
    "args",
    [
        ["--training.stepz=3"],
        ["--training.steps=abc"],
        ["--job.config_file=BAD"],
        [f"--training.seed={2**64}"],  # torch.manual_seed's traceback, once the corpus was built
        ["--training.steps=100", "--lr_scheduler.warmup_steps=100"],  # the decay never reached min_lr
    ],
)
def test_entry_point_prints_one_line_and_exits_2(tmp_path, args):
    bad_file = write_job_file(tmp_path, "[training]\nsteps = -1\n")
    args = [a.replace("BAD", str(bad_file)) for a in args]
    # Were a mistake missed, the run would go to tmp_path rather than into the checkout.
    places = [f"--job.dump_folder={tmp_path / 'runs'}", f"--data.cache_dir={tmp_path / 'cache'}"]
    result = run_python("-m", "tinytitan.train", *places, *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


def test_help_lists_every_key_with_type_default_and_doc():
    result = run_python("-m", "tinytitan.train", "--help")
    assert result.returncode == 0
    assert result.stdout.strip() == help_text().strip()
    config = JobConfig()
    for section in dataclasses.fields(config):
        for key in dataclasses.fields(getattr(config, section.name)):
            lines = [line for line in result.stdout.splitlines() if f"--{section.name}.{key.name} " in line]
            assert len(lines) == 1, f"{section.name}.{key.name} missing from --help"
            assert f"({_type_name(key)}, default " in lines[0]
            assert key.metadata["doc"] in lines[0]


def test_importing_the_config_imports_neither_torch_nor_triton():
    code = (
        "import sys, tinytitan.config, tinytitan.config.__main__\n"
        "print(sorted(name for name in ('torch', 'triton') if name in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
