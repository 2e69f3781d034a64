"""The oldest transformers we claim (4.45) loads our export: AutoModelForCausalLM, AutoTokenizer, the
README's `model.generate(**tokenizer(text, return_tensors="pt"))`, padded batches, and logits equal to
ours within 1e-4. It runs in another interpreter, named by $TINYTITAN_TRANSFORMERS4_PYTHON (one with
transformers 4.x, torch, safetensors and sentencepiece: e.g. a venv with `pip install
"transformers==4.45.*"`), and is skipped without one."""

import dataclasses
import json
import os
import subprocess

import pytest
import torch
from helpers import run_python

from tinytitan import dcp_reader
from tinytitan.model_files import load_model, write_model_args_file
from tinytitan.models.llama import FLAVORS, build_model

PYTHON = os.environ.get("TINYTITAN_TRANSFORMERS4_PYTHON")

# Run by the transformers 4 interpreter in the export folder; prints one JSON line.
CHILD = """
import json, sys, torch, transformers
out = sys.argv[1]
tokenizer = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
model = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
tokens = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save(model(tokens).logits, sys.argv[3])
    readme = model.generate(**tokenizer("The", return_tensors="pt"), max_new_tokens=8, do_sample=False)
    texts = ["The", "Once upon a time there"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    batched = model.generate(**batch, max_new_tokens=8, do_sample=False)[:, batch["input_ids"].shape[1]:]
    alone = [model.generate(**tokenizer(t, return_tensors="pt"), max_new_tokens=8, do_sample=False)[0] for t in texts]
print(json.dumps({
    "version": transformers.__version__,
    "readme": readme[0].tolist(),
    "batched": batched.tolist(),
    "alone": [a[len(tokenizer(t).input_ids):].tolist() for a, t in zip(alone, texts)],
    "keys": sorted(tokenizer("x").keys()),
}))
"""


def transformers4_python() -> str:
    if not PYTHON:
        pytest.skip("no transformers 4.x interpreter: set TINYTITAN_TRANSFORMERS4_PYTHON to one")
    version = subprocess.run(
        [PYTHON, "-c", "import transformers; print(transformers.__version__)"], capture_output=True, text=True
    )
    if version.returncode or not version.stdout.startswith("4."):
        pytest.skip(f"$TINYTITAN_TRANSFORMERS4_PYTHON={PYTHON} has no transformers 4.x ({version.stdout.strip()})")
    return PYTHON


SHAPES = {
    "debug": FLAVORS["debug"],
    # What the export writes for the newer fields: tied embeddings, head_dim != dim / n_heads, llama3 RoPE.
    "tied_llama3": dataclasses.replace(
        FLAVORS["debug"],
        head_dim=48,
        tie_embeddings=True,
        rope_theta=500000.0,
        rope_scaling_type="llama3",
        rope_scaling_factor=8.0,
        rope_original_max_seq_len=256,
    ),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_transformers4_loads_the_export_with_equal_logits(shape, tmp_path, builtin_corpus):
    python = transformers4_python()
    args = SHAPES[shape]
    torch.manual_seed(0)
    checkpoint = tmp_path / "dcp"
    dcp_reader.save_model(build_model(args, "cpu").state_dict(), checkpoint)
    write_model_args_file(checkpoint, args, None)
    dcp_reader.seal(checkpoint)
    out = tmp_path / "hf"
    result = run_python(
        "scripts/convert_dcp_to_hf.py", str(checkpoint), str(out), f"--tokenizer={builtin_corpus.tokenizer_path}"
    )
    assert result.returncode == 0, result.stderr

    tokens = torch.randint(0, args.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    torch.save(tokens, tmp_path / "tokens.pt")
    child = subprocess.run(
        [python, "-c", CHILD, str(out), str(tmp_path / "tokens.pt"), str(tmp_path / "logits.pt")],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert child.returncode == 0, child.stderr[-3000:]
    found = json.loads(child.stdout.strip().splitlines()[-1])
    assert found["version"].startswith("4.")
    assert found["keys"] == ["attention_mask", "input_ids"]  # no token_type_ids for generate() to refuse
    assert len(found["readme"]) > 2
    assert [row[: len(alone)] for row, alone in zip(found["batched"], found["alone"])] == found["alone"]

    ours, _ = load_model(checkpoint, "cpu", torch.float32)
    with torch.no_grad():
        expected = ours(tokens)
    theirs = torch.load(tmp_path / "logits.pt")
    assert (theirs - expected).abs().max().item() <= 1e-4
    assert expected.abs().max().item() > 0.1


# Run by the transformers 4 interpreter: apply_chat_template on an exported tokenizer; one JSON line.
CHAT_CHILD = """
import json, sys, transformers
tokenizer = transformers.AutoTokenizer.from_pretrained(sys.argv[1], local_files_only=True)
messages = json.loads(sys.argv[2])
prompt = tokenizer.apply_chat_template(messages[:2], add_generation_prompt=True)
print(json.dumps([tokenizer.apply_chat_template(messages), prompt]))
"""


def test_transformers4_applies_the_exported_chat_template_with_our_ids(tmp_path, builtin_corpus):
    from tinytitan.chat_templates import DEFAULT_TEMPLATE, encode_chat
    from tinytitan.hf.tokenizer import write_hf_tokenizer

    python = transformers4_python()
    tokenizer = write_hf_tokenizer(builtin_corpus.tokenizer_path, tmp_path, 512, chat_template=DEFAULT_TEMPLATE)
    messages = [
        {"role": "system", "content": "Brief."},
        {"role": "user", "content": "Naïve café? 🐍"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "Again"},
        {"role": "assistant", "content": "  indented\n\nanswer"},
    ]
    child = subprocess.run(
        [python, "-c", CHAT_CHILD, str(tmp_path), json.dumps(messages)], capture_output=True, text=True, timeout=300
    )
    assert child.returncode == 0, child.stderr[-3000:]
    whole, prompt = json.loads(child.stdout.strip().splitlines()[-1])
    assert whole == encode_chat(tokenizer, messages)[0]
    assert prompt == encode_chat(tokenizer, messages[:2], add_generation_prompt=True)[0]
