"""`prepare_data --format chat` in this process: both conversation layouts become the ids and
trained-token masks of the chat template (compared with conversations written out by hand), a
held-out split is drawn from them, and each kind of bad row is a counted skip, or with --strict one
line naming the file and line."""

import numpy as np
import pytest
from helpers import prepare, write_lines

from tinytitan.chat_templates import encode_chat
from tinytitan.data.manifest import read_manifest, split_shards
from tinytitan.data.shards import open_mask, open_shard
from tinytitan.errors import UserError

SYSTEM_AND_ANSWER = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi ☃"},
    {"role": "assistant", "content": "Hello!"},
]
GUANACO = "### Human: What is 2+2?### Assistant: 4, of course. ### Human: Sure?\n### Assistant: Yes."
GUANACO_AS_MESSAGES = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4, of course."},
    {"role": "user", "content": "Sure?"},
    {"role": "assistant", "content": "Yes."},
]
BAD_ROWS = {
    "missing role": {"messages": [{"content": "x"}, {"role": "assistant", "content": "y"}]},
    "unknown role": {"messages": [{"role": "user", "content": "x"}, {"role": "bot", "content": "y"}]},
    "non-string content": {"messages": [{"role": "user", "content": ["x"]}, {"role": "assistant", "content": "y"}]},
    "no assistant turn": {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]},
    "special token in text": {
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a</s>"}]
    },
    "not a conversation": {"prompt": "q", "completion": "a"},
}


def stored(folder, split):
    tokens, masks = [], []
    for path in split_shards(folder, split):
        header, ids = open_shard(path)
        tokens.append(np.array(ids)), masks.append(np.array(open_mask(path, header)).astype(bool))
    return np.concatenate(tokens).tolist(), np.concatenate(masks).tolist()


def answers(tokens, trained, tokenizer) -> list[str]:
    """The text of each run of trained tokens, checked to end with </s>."""
    runs, run = [], []
    for token, learnt in zip(tokens + [None], trained + [False]):
        if learnt:
            run.append(token)
        elif run:
            assert run[-1] == tokenizer.eos_id
            runs.append(tokenizer.decode(run[:-1]))
            run = []
    return runs


def test_both_layouts_become_the_templates_ids_and_masks_and_bad_rows_are_counted(tmp_path, tokenizer):
    rows = [{"messages": SYSTEM_AND_ANSWER}, *BAD_ROWS.values(), {"text": GUANACO}]
    write_lines(tmp_path / "chats.jsonl", rows)
    prepare(tokenizer, tmp_path / "chats.jsonl", "--format", "chat", "--output", tmp_path / "out")

    expected = [encode_chat(tokenizer, messages) for messages in (SYSTEM_AND_ANSWER, GUANACO_AS_MESSAGES)]
    tokens, trained = stored(tmp_path / "out", "train")
    assert tokens == expected[0][0] + expected[1][0]
    assert trained == expected[0][1] + expected[1][1]
    assert answers(tokens, trained, tokenizer) == ["Hello!", "4, of course.", "Yes."]  # each with its </s>
    manifest = read_manifest(tmp_path / "out")
    assert manifest["settings"]["chat_template"] == "tinyllama"
    assert manifest["documents_skipped"] == {reason: 1 for reason in BAD_ROWS}
    assert manifest["splits"]["train"]["documents"] == 2


@pytest.mark.parametrize("reason", ["missing role", "no assistant turn", "non-string content"])
def test_strict_stops_at_a_bad_row_naming_the_file_and_line(tmp_path, tokenizer, reason):
    path = write_lines(tmp_path / "chats.jsonl", [{"messages": SYSTEM_AND_ANSWER}, BAD_ROWS[reason]])
    with pytest.raises(UserError, match=rf"^{path} line 2: .* \(--strict\)$"):
        prepare(tokenizer, path, "--format", "chat", "--strict", "--output", tmp_path / "out")


def test_a_held_out_share_of_conversations_makes_the_validation_split(tmp_path, tokenizer):
    conversations = [
        [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]
        for i in range(40)
    ]
    write_lines(tmp_path / "chats.jsonl", [{"messages": m} for m in conversations])
    prepare(tokenizer, tmp_path, "--format", "chat", "--holdout-fraction", "0.25", "--output", tmp_path / "out")
    splits = read_manifest(tmp_path / "out")["splits"]
    assert splits["train"]["documents"] + splits["validation"]["documents"] == 40
    assert 3 <= splits["validation"]["documents"] <= 20
    every = sorted(stored(tmp_path / "out", "train")[0] + stored(tmp_path / "out", "validation")[0])
    assert every == sorted(t for m in conversations for t in encode_chat(tokenizer, m)[0])


def test_chat_options_are_checked(tmp_path, tokenizer):
    write_lines(tmp_path / "chats.jsonl", [{"messages": SYSTEM_AND_ANSWER}])
    with pytest.raises(UserError, match="chat template 'nope': expected one of tinyllama"):
        prepare(tokenizer, tmp_path, "--format", "chat", "--chat-template", "nope", "--output", tmp_path / "out")
    with pytest.raises(UserError, match="--chat-template tinyllama: expected it only with --format chat"):
        prepare(tokenizer, tmp_path, "--chat-template", "tinyllama", "--output", tmp_path / "out")
    assert not (tmp_path / "out").exists()
