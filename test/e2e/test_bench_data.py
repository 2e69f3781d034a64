"""scripts/bench_data.py's smoke mode: tokenization and loader throughput on a small generated corpus."""

import json
import runpy

from helpers import REPO_ROOT, run_python


def test_the_tokenization_benchmark_smoke_mode(tmp_path, tokenizer):
    generated_documents = runpy.run_path(str(REPO_ROOT / "scripts/bench_data.py"))["generated_documents"]
    result = run_python(
        "scripts/bench_data.py", "--smoke", "--tokenizer", str(tokenizer.path), "--json", str(tmp_path / "b.json")
    )
    assert result.returncode == 0, result.stderr
    assert "tokens/s per worker" in result.stdout and "loader, 1 rank, 2 worker(s)" in result.stdout
    measured = json.loads((tmp_path / "b.json").read_text())
    prepared = measured["prepare_data"]
    assert prepared["documents"] + prepared["left_out"] == len(generated_documents(2.0))  # the whole corpus
    assert prepared["tokens_per_second_per_worker"] > 0 and measured["tokenizer_alone"]["tokens"] > 0
    assert (
        measured["loader"]["workers_0_tokens_per_second"] > 0 and measured["loader"]["workers_2_tokens_per_second"] > 0
    )
