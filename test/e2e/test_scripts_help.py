"""Every script's command line, as a user first meets it: `--help` prints a usage and exits 0
having run nothing (each shell script runs from a copy of itself in a folder of its own, so that
anything it created would show), and a number that a script cannot use is one `error:` line and
exit status 2, before any work."""

import os
import shutil
import subprocess
import sys

import pytest
from helpers import REPO_ROOT

SCRIPTS = REPO_ROOT / "scripts"
PYTHON_SCRIPTS = sorted(path.name for path in SCRIPTS.glob("*.py"))
# A shell script with what it sources (run_train.sh and run_tests.sh start with scripts/bootstrap.sh).
SHELL_SCRIPTS = {
    "run_train.sh": ["scripts/bootstrap.sh"],
    "run_tests.sh": ["scripts/bootstrap.sh"],
    "scripts/multinode.slurm": [],
    **{f"scripts/{path.name}": [] for path in SCRIPTS.glob("*.sh")},
}
ENV = {**os.environ, "TINYTITAN_PYTHON": sys.executable}  # the launchers use this Python, not .venv


def files_in(folder) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def run(argv, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300, env=ENV)


def test_every_script_is_covered():
    shell = {path.name for path in SCRIPTS.iterdir() if path.suffix in (".sh", ".slurm")}
    assert shell == {name.removeprefix("scripts/") for name in SHELL_SCRIPTS if name.startswith("scripts/")}
    assert {path.name for path in SCRIPTS.iterdir() if path.is_file()} == shell | set(PYTHON_SCRIPTS)


@pytest.mark.parametrize("script", PYTHON_SCRIPTS)
def test_python_script_answers_help(tmp_path, script):
    result = run([sys.executable, str(SCRIPTS / script), "--help"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"usage: {script}"), result.stdout[:500]
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("script", sorted(SHELL_SCRIPTS))
def test_shell_script_answers_help_and_runs_nothing(tmp_path, script):
    for name in (script, *SHELL_SCRIPTS[script]):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, tmp_path / name)
    before = files_in(tmp_path)
    # OUT is gpu_suite.sh's output folder when no argument names one
    result = subprocess.run(
        ["bash", str(tmp_path / script), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**ENV, "OUT": str(tmp_path / "out")},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stdout.lower().startswith("usage:"), result.stdout[:500]
    assert files_in(tmp_path) == before


# (script, arguments, what the one line names); MISSING is a path that does not exist, OUT one
# that must not be created. Each value is checked before anything is read or written.
BAD_NUMBERS = [
    ("generate.py", ["MISSING", "--prompt", "x", "--temperature", "nan"], "temperature nan"),
    ("generate.py", ["MISSING", "--prompt", "x", "--temperature", "inf"], "temperature inf"),
    ("generate.py", ["MISSING", "--prompt", "x", "--temperature", "1", "--top-p", "nan"], "top-p nan"),
    ("generate.py", ["MISSING", "--prompt", "x", "--seed", str(2**64)], f"--seed {2**64}"),
    ("generate.py", ["MISSING", "--prompt", "x", "--draft", "MISSING", "--draft-tokens", "0"], "--draft-tokens 0"),
    ("convert_dcp_to_hf.py", ["MISSING", "OUT", "--max-shard-size", "9" * 400], "size '999"),
    ("convert_dcp_to_hf.py", ["MISSING", "OUT", "--max-shard-size", "0.5"], "size '0.5'"),
    ("bench_data.py", ["--megabytes", "inf", "--json", "OUT"], "--megabytes inf"),
    ("bench_data.py", ["--sample-megabytes", "nan", "--json", "OUT"], "--sample-megabytes nan"),
    ("bench_kernels.py", ["--iters", "0", "--json", "OUT"], "--iters 0"),
    ("bench_kernels.py", ["--warmup", "-1", "--json", "OUT"], "--warmup -1"),
    ("bench_train.py", ["--seq-len", "0", "--json", "OUT"], "--seq-len 0"),
    ("bench_train.py", ["--steps", "0", "--json", "OUT"], "--steps=0"),
    ("evaluate.py", ["MISSING", "--tasks", "builtin", "--limit", "-1", "--json", "OUT"], "--limit -1"),
    ("bench_eval.py", ["--items", "0", "--json", "OUT"], "--items 0"),
    ("prepare_data.py", ["MISSING", "--output", "OUT", "--holdout-fraction", "nan"], "--holdout-fraction nan"),
    ("prepare_data.py", ["MISSING", "--output", "OUT", "--tokens-per-shard", "0"], "--tokens-per-shard"),
]


@pytest.mark.parametrize("script, args, named", BAD_NUMBERS, ids=[f"{s}: {n}" for s, _, n in BAD_NUMBERS])
def test_a_number_a_script_cannot_use_is_one_line(tmp_path, script, args, named):
    args = [str(tmp_path / a) if a in ("MISSING", "OUT") else a for a in args]
    result = run([sys.executable, str(SCRIPTS / script), *args], tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and named in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert files_in(tmp_path) == []
