"""scripts/generate.py in this process: several prompts give each prompt's own greedy text, and a
draft gives the same text with its acceptance rate and plain decoding's speed beside it; a draft
with another tokenizer is one line."""

import runpy
import shutil

import pytest
import torch
from helpers import REPO_ROOT, train_small_tokenizer

from tinytitan.errors import UserError
from tinytitan.generation import generate
from tinytitan.model_files import load_model, require_tokenizer

pytest.importorskip("transformers")  # roomy_folder is written by transformers

GENERATE = runpy.run_path(str(REPO_ROOT / "scripts/generate.py"), run_name="generate")
PROMPTS = ["The list of", "def main(x):"]


def expected_texts(folder) -> list[str]:
    model, spec = load_model(folder, "cpu", torch.float32)
    tokenizer = require_tokenizer(spec, folder)
    prompts = [tokenizer.encode(text, bos=True) for text in PROMPTS]
    return [tokenizer.decode(p + generate(model, p, 10, eos_id=tokenizer.eos_id)) for p in prompts]


def test_several_prompts_and_a_draft(roomy_folder, capsys):
    arguments = [str(roomy_folder), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--max-new-tokens", "10"]
    expected = "\n\n".join(expected_texts(roomy_folder)) + "\n"
    GENERATE["main"](arguments)
    out = capsys.readouterr()
    assert out.out == expected
    assert "after 2 prompt(s)" in out.err
    GENERATE["main"]([*arguments, "--draft", str(roomy_folder), "--draft-tokens", "3"])
    out = capsys.readouterr()
    assert out.out == expected
    assert "accepted" in out.err and "(100.0%)" in out.err and "plain decoding" in out.err and "speedup" in out.err


def test_a_draft_with_another_tokenizer_is_refused(roomy_folder, tmp_path):
    draft = tmp_path / "draft"
    shutil.copytree(roomy_folder, draft)
    train_small_tokenizer(draft / "tokenizer.model", split_digits=False)  # other pieces, as many
    with pytest.raises(UserError, match=r"--draft .*draft: its tokenizer .* is not the model's"):
        GENERATE["main"]([str(roomy_folder), "--prompt", "x", "--draft", str(draft)])
