"""Hugging Face interop in this process: a tokenizer whose ids a Hugging Face tokenizer cannot
reproduce is refused, and a model loaded from a Hugging Face folder generates with the KV cache as
without it; top-p sampling."""

import json

import pytest
import torch
from helpers import train_small_tokenizer

from tinytitan.errors import UserError
from tinytitan.generation import Sampling, generate
from tinytitan.hf.tokenizer import write_hf_tokenizer
from tinytitan.model_files import load_model
from tinytitan.models.llama import KVCache

# awkward_folder is written by transformers, in safetensors files
pytest.importorskip("transformers")
pytest.importorskip("safetensors.torch")


def test_a_tokenizer_whose_ids_cannot_be_reproduced_is_refused(tmp_path):
    path = train_small_tokenizer(tmp_path / "nfkc.model", normalization_rule_name="nmt_nfkc")
    with pytest.raises(UserError, match="expected a Llama-style sentencepiece model with the identity normalization"):
        write_hf_tokenizer(path, tmp_path, max_length=64)
    assert not (tmp_path / "tokenizer.json").exists()


def test_the_exported_tokenizer_gives_exactly_what_the_model_takes(small_tokenizer, tmp_path):
    """input_ids and attention_mask, no token_type_ids (which transformers 4 adds by default and
    which LlamaForCausalLM.generate refuses), and the ids of sentencepiece with bos first."""
    from transformers import AutoTokenizer

    from tinytitan.data.tokenizer import Tokenizer

    write_hf_tokenizer(small_tokenizer, tmp_path, max_length=64)
    hf_tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    encoded = hf_tokenizer("def f(x):\n    return x  # twice", return_tensors="pt")
    assert sorted(encoded.keys()) == ["attention_mask", "input_ids"]
    # what makes transformers 4 (whose fast tokenizers default to token_type_ids too) agree
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["model_input_names"] == ["input_ids", "attention_mask"]
    expected = Tokenizer(small_tokenizer).encode("def f(x):\n    return x  # twice", bos=True)
    assert encoded["input_ids"][0].tolist() == expected


def test_kv_cache_gives_the_logits_of_a_full_recompute(awkward_folder):
    model, _ = load_model(awkward_folder, "cpu", torch.float32)
    tokens = torch.randint(0, 331, (2, 40), generator=torch.Generator().manual_seed(3))
    cache = KVCache(model.args, 2, 40, "cpu")
    with torch.no_grad():
        full = model(tokens)
        pieces = [model(tokens[:, start:end], cache=cache) for start, end in ((0, 17), (17, 20), (20, 21), (21, 40))]
    assert cache.length == 40
    # The same arithmetic in other kernels (masked attention over the cache): rounding differs.
    assert (torch.cat(pieces, dim=1) - full).abs().max().item() <= 1e-4
    assert full.abs().max().item() > 1.0
    prompt = tokens[0, :5].tolist()
    assert generate(model, prompt, 30, use_cache=True) == generate(model, prompt, 30, use_cache=False)


def test_top_p_keeps_only_the_most_likely_tokens():
    from tinytitan.generation import choose_token

    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    generator = torch.Generator().manual_seed(0)
    drawn = {choose_token(logits, Sampling(1.0, 0.7), generator) for _ in range(200)}
    assert drawn == {0, 1}  # 0.5 < 0.7, so the second is needed; the 0.8 reached then is enough
    assert choose_token(logits, Sampling(0.0), None) == 0


@pytest.mark.parametrize(
    "temperature, top_p, named",
    [
        (float("nan"), 1.0, "temperature nan"),
        (float("inf"), 1.0, "temperature inf"),
        (-1.0, 1.0, "temperature -1.0"),
        (1.0, float("nan"), "top-p nan"),
        (1.0, float("inf"), "top-p inf"),
        (1.0, 0.0, "top-p 0.0"),
    ],
)
def test_sampling_settings_that_choose_no_token_are_refused(temperature, top_p, named):
    with pytest.raises(UserError, match=named):
        Sampling(temperature, top_p)
