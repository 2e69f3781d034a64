"""scripts/bench_kernels.py as a user runs it: without CUDA, its smoke version under the interpreter."""

import re
import subprocess
import sys

from helpers import REPO_ROOT


def test_bench_kernels_smoke_run_prints_its_table():
    result = subprocess.run(
        [sys.executable, "scripts/bench_kernels.py", "--smoke"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 interleaved repeats" in result.stdout
    table = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert table[0].startswith("| kernel | implementation |"), result.stdout
    for kernel in ("rms_norm", "swiglu", "rotary", "linear_cross_entropy"):
        rows = [line for line in table if line.startswith(f"| {kernel} |")]
        assert any("| triton |" in row for row in rows) and any("| eager |" in row for row in rows), result.stdout
        # the median over the interleaved repeats with its min-max spread, and the per-repeat ratio to eager
        assert all(re.search(r"\| (\d+\.\d+) \((\d+\.\d+)-(\d+\.\d+)\) \| \d+\.\d+x \(", row) for row in rows), rows
        for row in rows:
            median, low, high = map(float, re.search(r"\| (\d+\.\d+) \((\d+\.\d+)-(\d+\.\d+)\) \|", row).groups())
            assert low <= median <= high, row
    for kernel in ("attention_causal", "attention_documents"):  # flex unfused on CPU; flash only with CUDA
        rows = [line for line in table if line.startswith(f"| {kernel} |")]
        assert [row.split("|")[2].strip() for row in rows] == ["eager", "flex"], result.stdout
        assert all(re.search(r"\| (\d+\.\d+) \((\d+\.\d+)-(\d+\.\d+)\) \|", row) for row in rows), rows
