"""The benchmarks run on CPU too (tiny versions), so that they cannot rot before a GPU run."""

import json

import pytest
from helpers import run_python


def test_bench_train_compares_ours_with_transformers(tmp_path):
    result = run_python(
        "scripts/bench_train.py",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--repeats",
        "2",
        "--json",
        str(tmp_path / "b.json"),
        "--markdown",
        str(tmp_path / "b.md"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "b.json").read_text())
    names = [variant["name"] for variant in report["variants"]]
    assert names == ["ours", "transformers"]
    for variant in report["variants"]:
        assert variant["tokens_per_second"] > 0 and variant["peak_memory_gib"] > 0
        assert variant["loss_first"] > 7.5  # uniform tokens over 4096 ids: ln(4096) = 8.3
        runs, spread = variant["runs"], variant["tokens_per_second_spread"]
        assert len(runs) == 2 and spread["min"] == min(runs) <= variant["tokens_per_second"] <= spread["max"] == max(
            runs
        )
    ours, baseline = report["variants"]
    ratios = sorted(a / b for a, b in zip(ours["runs"], baseline["runs"]))  # run by run, as interleaved
    assert ours["ratio_to_baseline"]["min"] == pytest.approx(ratios[0])
    assert ours["ratio_to_baseline"]["max"] == pytest.approx(ratios[-1])
    assert "ratio_to_baseline" in baseline and baseline["ratio_to_baseline"]["median"] == pytest.approx(1.0)
    assert report["repeats"] == 2 and "discarded" in result.stderr
    assert report["flops_per_token"] > 0 and "6*N + 12*L*d*T" in report["flop_formula"]
    table = (tmp_path / "b.md").read_text()
    assert (
        "| ours | 4 |" in table
        and "vs transformers, median (min-max)" in table
        and table.strip() == result.stdout.strip()
    )
