"""The conversations of a --format chat input: JSON Lines, one conversation per line, in either
common layout:

  messages  {"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}
            (OpenAI and Hugging Face style: UltraChat, oasst_top1 exports, ...)
  guanaco   {"text": "### Human: ... ### Assistant: ... ### Human: ..."} (OpenAssistant-guanaco,
            which TinyLlama's first chat model was finetuned on)

A line that is not a usable conversation is a counted Skip (an error with --strict): a message
without a role, with a role other than those three, with content that is not a string or that holds
the text of a special token (`</s>`: the exported tokenizer would read it as the token), a
conversation without an assistant turn, or one whose first turn after the system prompt is the
assistant's (there is no question for its answer).
"""

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tinytitan.chat_templates import ROLES
from tinytitan.prepare.inputs import Input
from tinytitan.prepare.readers import Skip, json_object, read_jsonl_lines

_GUANACO_TURN = re.compile(r"### (Human|Assistant):")
_GUANACO_ROLES = {"Human": "user", "Assistant": "assistant"}


@dataclass(frozen=True)
class Conversation:
    messages: tuple[dict, ...]  # each {"role": ..., "content": ...}
    where: str  # "line 12": names it, and keys the holdout hash
    group: str  # the layout: "messages" or "guanaco"
    utf8_bytes: int = 0


def read_conversations(item: Input, special_texts: tuple[str, ...]) -> Iterator[Conversation | Skip]:
    """The conversations of an input in file order, and a Skip for each line not used.
    `special_texts` are the texts of the tokenizer's special tokens (`<s>`, `</s>`, `<unk>`)."""
    path = item.paths[0]
    yield from read_jsonl_lines(path, lambda line, where: _parse(line, path, where, special_texts))


def _parse(line: bytes, path: Path, where: str, special_texts: tuple[str, ...]) -> Conversation | Skip:
    record = json_object(line, path, where)
    if isinstance(record, Skip):
        return record
    if "messages" in record:
        messages, group = record["messages"], "messages"
    elif isinstance(record.get("text"), str):
        messages, group = _guanaco_messages(record["text"]), "guanaco"
    else:
        return Skip(
            "not a conversation",
            path,
            where,
            'no \'messages\' list and no \'text\' string: expected {"messages": [{"role", "content"}, ...]} '
            'or {"text": "### Human: ... ### Assistant: ..."}',
        )
    if not isinstance(messages, list):
        return Skip("not a conversation", path, where, f"'messages' is a {type(messages).__name__}: expected a list")
    problem = _problem(messages, special_texts)
    if problem:
        reason, message = problem
        return Skip(reason, path, where, message)
    size = sum(len(m["content"].encode("utf-8", "surrogatepass")) for m in messages)
    return Conversation(tuple({"role": m["role"], "content": m["content"]} for m in messages), where, group, size)


def _guanaco_messages(text: str) -> list[dict]:
    """'### Human: q ### Assistant: a' as messages; text before the first marker is a problem for
    _problem to name (a turn without a role)."""
    parts = _GUANACO_TURN.split(text)
    messages = [{"content": parts[0].strip()}] if parts[0].strip() else []
    for role, content in zip(parts[1::2], parts[2::2]):
        messages.append({"role": _GUANACO_ROLES[role], "content": content.strip()})
    return messages


def _problem(messages: list, special_texts: tuple[str, ...]) -> tuple[str, str] | None:
    """(reason, message) of the first thing that makes these messages unusable, or None."""
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return "missing role", f"message {index} has no 'role' string: expected one of {', '.join(ROLES)}"
        if message["role"] not in ROLES:
            return (
                "unknown role",
                f"message {index} has role {message['role'][:40]!r}: expected one of {', '.join(ROLES)}",
            )
        content = message.get("content")
        if not isinstance(content, str):
            found = "no 'content'" if content is None else f"'content' is a {type(content).__name__}"
            return "non-string content", f"message {index}: {found}: expected the text as a string"
        if special := [text for text in special_texts if text in content]:
            return "special token in text", f"message {index} holds {special[0]!r}: expected no special token's text"
        try:
            content.encode("utf-8")
        except UnicodeEncodeError as error:
            return (
                "invalid Unicode",
                f"message {index} holds {error.object[error.start : error.end]!r}: expected valid Unicode",
            )
    roles = [m["role"] for m in messages if m["role"] != "system"]
    if "assistant" not in roles:
        return "no assistant turn", "no message with role 'assistant': expected at least one answer to learn"
    if roles[0] == "assistant":
        return "answer first", "the first turn after the system prompt is the assistant's: expected a user turn first"
    return None
