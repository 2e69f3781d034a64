"""What a prepared folder holds besides the shards: the completion records of its inputs (and the
checks that decide whether an input can be skipped on a resume), the manifest made from them, a
copy of the tokenizer, and the summary of what it holds.
"""

import json
from pathlib import Path

from tinytitan.data.manifest import MANIFEST_NAME, write_manifest
from tinytitan.data.shards import read_header
from tinytitan.data.tokenizer import Tokenizer
from tinytitan.errors import UserError
from tinytitan.files import atomic_write_bytes
from tinytitan.prepare.inputs import Input
from tinytitan.prepare.one_input import DONE_FOLDER, input_key
from tinytitan.prepare.options import Options

TOKENIZER_COPY = "tokenizer.model"


def load_records(output: Path) -> dict[str, dict]:
    """The completion records of inputs prepared before, by input name."""
    records = {}
    for path in sorted((output / DONE_FOLDER).glob("*.json")):
        try:
            record = json.loads(path.read_text())
            records[record["name"]] = record
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise UserError(
                f"{path}: cannot read it ({error!r}): expected a completion record "
                "(delete it to prepare that input again)"
            ) from None
    if not records and (output / MANIFEST_NAME).exists():
        raise UserError(
            f"{output}: holds a {MANIFEST_NAME} without {DONE_FOLDER}/ records: expected a new folder or "
            "one prepared by scripts/prepare_data.py"
        )
    return records


def check_settings(records: dict[str, dict], settings: dict, output: Path) -> None:
    for record in records.values():
        if record["settings"] != settings:
            raise UserError(
                f"{output}: prepared with {_describe(record['settings'])}: expected the same settings to add "
                f"to it (this run: {_describe(settings)}); use a new --output folder"
            )


def _describe(settings: dict) -> str:
    chat = f"chat template {settings['chat_template']} " if settings.get("chat_template") else ""
    return f"{chat}bos={settings['bos']} eos={settings['eos']} tokenizer sha256 {settings['tokenizer_sha256'][:12]}…"


def check_done(record: dict, item: Input, options: Options) -> None:
    """An input with a record is skipped only when it is the same file prepared the same way and
    its shards are whole."""
    differences = []
    if (record["bytes"], record["files"]) != (item.size, len(item.paths)):
        differences.append(
            f"then {record['files']} file(s) of {record['bytes']:,} bytes, now {len(item.paths)} of {item.size:,}"
        )
    if record["options"] != options.input_options(item.format):
        differences.append(f"then {record['options']}, now {options.input_options(item.format)}")
    record_path = options.output / DONE_FOLDER / f"{input_key(item.name)}.json"
    if differences:
        raise UserError(
            f"input {item.name}: already prepared in {options.output} differently ({'; '.join(differences)}): "
            f"expected the same file and options to resume; use a new --output, or delete {record_path} to redo it"
        )
    for split, entry in record["splits"].items():
        tokens = sum(read_header(options.output / shard).num_tokens for shard in entry["shards"])
        if tokens != entry["tokens"]:
            raise UserError(
                f"input {item.name}: its {split} shards hold {tokens:,} tokens: expected {entry['tokens']:,} "
                f"as recorded; delete {record_path} to redo it"
            )


def write_prepared_manifest(output: Path, tokenizer: Tokenizer, records: dict[str, dict], options: Options) -> Path:
    """The manifest of every input prepared into `output`, by this run or earlier ones."""
    splits, groups, filtered, skipped = {}, {}, {}, {}
    ordered = [records[name] for name in sorted(records)]
    for record in ordered:
        for split, entry in record["splits"].items():
            total = splits.setdefault(split, {"shards": [], "documents": 0, "tokens": 0})
            total["shards"] += entry["shards"]
            total["documents"] += entry["documents"]
            total["tokens"] += entry["tokens"]
        for group, counts in record["groups"].items():
            _add(groups.setdefault(group, {}), counts)
        _add(filtered, record["filtered"])
        _add(skipped, record["skipped"])
    settings = {"bos": options.bos, "eos": options.eos, "document": _document_shape(options)}
    if options.chat_template:  # what training reads to know the shards hold conversations with masks
        settings["chat_template"] = options.chat_template
    inputs = [{k: v for k, v in record.items() if k != "settings"} for record in ordered]
    return write_manifest(
        output,
        tokenizer,
        dict(sorted(splits.items())),
        settings,
        tokenizer_file=TOKENIZER_COPY,
        prepared_by="scripts/prepare_data.py",
        groups=dict(sorted(groups.items())),
        documents_filtered=filtered,
        documents_skipped=skipped,
        inputs=inputs,
    )


def _add(total: dict, counts: dict) -> None:
    for name, value in counts.items():
        total[name] = total.get(name, 0) + value


def _document_shape(options: Options) -> str:
    if options.chat_template:
        return f"a conversation in chat template {options.chat_template}, starting with <s>"
    return " ".join(["<s>"] * options.bos + ["tokens"] + ["</s>"] * options.eos)


def copy_tokenizer(tokenizer: Tokenizer, output: Path) -> None:
    """A copy beside the shards, so the folder names and holds what it was made with."""
    copy, model = output / TOKENIZER_COPY, tokenizer.path.read_bytes()
    if copy.is_file() and copy.read_bytes() == model:
        return
    atomic_write_bytes(copy, model)


def print_summary(output: Path, records: dict[str, dict], prepared: int, already: int) -> None:
    splits, filtered, skipped, first = {}, {}, {}, {}
    for record in records.values():
        for split, entry in record["splits"].items():
            counts = {"documents": entry["documents"], "tokens": entry["tokens"], "shards": len(entry["shards"])}
            _add(splits.setdefault(split, {}), counts)
        _add(filtered, record["filtered"])
        _add(skipped, record["skipped"])
        for reason, where in record["first_skipped"].items():
            first.setdefault(reason, where)
    print(f"prepared {prepared} input(s) into {output} ({already} done before); the folder holds {len(records)}:")
    for split, counts in sorted(splits.items()):
        print(
            f"  {split}: {counts['documents']:,} documents, {counts['tokens']:,} tokens in {counts['shards']} shard(s)"
        )
    if filtered:
        print("  left out by choice: " + ", ".join(f"{reason} {count:,}" for reason, count in sorted(filtered.items())))
    if skipped:
        print(
            "  skipped as bad input (--strict stops at them instead): "
            + "; ".join(f"{reason} {count:,} (first: {first[reason]})" for reason, count in sorted(skipped.items()))
        )
