"""Chat templates: our ids equal transformers' `apply_chat_template` on the exported tokenizer, and
the trained ids are exactly what transformers marks as the assistant's when the same template wraps
each answer and its end-of-turn token in {% generation %} (its own, independent construction)."""

import json
from pathlib import Path

import pytest

from tinytitan.chat_templates import DEFAULT_TEMPLATE, TEMPLATES, encode_chat
from tinytitan.data.tokenizer import Tokenizer
from tinytitan.hf.tokenizer import write_hf_tokenizer

transformers = pytest.importorskip("transformers")

LLAMA2 = Path(__file__).resolve().parents[3] / "shared/assets/llama2-tokenizer.model"
ANSWER = "{{ '<|assistant|>\n'  + message['content'] + eos_token }}"
# (the empty expression keeps the newline after the turn, which trim_blocks would drop after a tag)
MARKED_ANSWER = "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}{{ '' }}"

CONVERSATIONS = {
    "no system": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."}],
    "system, multi-turn": [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "7"},
        {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": " 11, and then 13\n\n  indented"},
    ],
    "empty answer": [{"role": "user", "content": "Say nothing."}, {"role": "assistant", "content": ""}],
    "unicode": [
        {"role": "user", "content": "Übersetze: naïve café — 東京 🐍"},
        {"role": "assistant", "content": "«naïf» café, 東京 🐍\tok"},
    ],
    "long turn": [
        {"role": "user", "content": "Repeat."},
        {"role": "assistant", "content": " ".join(f"word{i} déjà" for i in range(300))},
        {"role": "user", "content": ""},
        {"role": "assistant", "content": "done"},
    ],
}


@pytest.fixture(scope="module", params=["builtin", "llama2"])
def exported(request, tmp_path_factory):
    """(our tokenizer, transformers' tokenizer of its export with the default template)."""
    if request.param == "llama2":
        if not LLAMA2.is_file():
            pytest.skip(f"no Llama 2 tokenizer at {LLAMA2}")
        model = LLAMA2
    else:
        model = Tokenizer(request.getfixturevalue("builtin_corpus").tokenizer_path).path
    folder = tmp_path_factory.mktemp(f"export-{request.param}")
    ours = write_hf_tokenizer(model, folder, max_length=4096, chat_template=DEFAULT_TEMPLATE)
    return ours, transformers.AutoTokenizer.from_pretrained(folder)


def _ids(encoded) -> list[int]:
    """transformers 4 returns a list of ids, 5 a BatchEncoding."""
    return list(encoded if isinstance(encoded, list) else encoded["input_ids"])


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_ids_and_trained_tokens_match_transformers(exported, name):
    ours, theirs = exported
    messages = CONVERSATIONS[name]
    ids, trained = encode_chat(ours, messages)
    assert ids == _ids(theirs.apply_chat_template(messages))
    assert ids[0] == ours.bos_id
    marked = theirs.apply_chat_template(
        messages,
        chat_template=TEMPLATES[DEFAULT_TEMPLATE].replace(ANSWER, MARKED_ANSWER),
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    assert marked["input_ids"] == ids
    assert trained == [bool(m) for m in marked["assistant_masks"]]
    ends = [i for i, token in enumerate(ids) if token == ours.eos_id and trained[i]]
    assert len(ends) == sum(m["role"] == "assistant" for m in messages)  # every answer's end is learnt


def test_generation_prompt_matches_transformers_and_trains_nothing(exported):
    ours, theirs = exported
    messages = CONVERSATIONS["system, multi-turn"][:4]
    ids, trained = encode_chat(ours, messages, add_generation_prompt=True)
    assert ids == _ids(theirs.apply_chat_template(messages, add_generation_prompt=True))
    assert ours.decode(ids).endswith("<|assistant|>\n") and not any(trained[-3:])
    assert trained == encode_chat(ours, messages + [{"role": "assistant", "content": "x"}])[1][: len(ids)]


def test_the_export_names_the_template_and_keeps_plain_text_exact_without_one(tmp_path, tokenizer):
    write_hf_tokenizer(tokenizer.path, tmp_path, max_length=64, chat_template=DEFAULT_TEMPLATE)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["chat_template"] == TEMPLATES[DEFAULT_TEMPLATE] and config["split_special_tokens"] is False
    write_hf_tokenizer(tokenizer.path, tmp_path, max_length=64)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert "chat_template" not in config and config["split_special_tokens"] is True
