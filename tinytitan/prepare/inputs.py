"""Which files are the inputs of a preparation, named as the user gave them.

An input is the unit that is prepared whole, resumed whole and given shards of its own: one file,
or for .txt (a document per file) the .txt files of one folder. Files, folders and glob patterns
are expanded; a folder is walked for the file names its format reads (readers.py describes the
layouts).
"""

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from tinytitan.errors import UserError

FORMATS = ("auto", "slimpajama", "starcoder", "jsonl", "txt", "chat")
# File names each format reads when walking a folder (auto: all of them).
SUFFIXES = {
    "slimpajama": (".jsonl.zst", ".jsonl"),
    "jsonl": (".jsonl.zst", ".jsonl"),
    "starcoder": (".parquet",),
    "txt": (".txt",),
    "chat": (".jsonl.zst", ".jsonl"),  # never chosen by auto: a conversation file looks like any JSON lines
}


@dataclass(frozen=True)
class Input:
    """One unit of preparation: prepared whole, resumed whole, with shards of its own."""

    name: str  # its path from above the folder given, e.g. "train/chunk1/example_train_0.jsonl.zst"
    paths: tuple[Path, ...]  # one file; for txt, the .txt files of one folder
    format: str  # slimpajama, starcoder, jsonl or txt

    @property
    def size(self) -> int:
        return sum(path.stat().st_size for path in self.paths)

    @property
    def language(self) -> str:
        """StarCoderData keeps each language in a folder of its name."""
        return self.paths[0].parent.name


def find_inputs(arguments: list[str], format: str) -> list[Input]:
    """The inputs named by files, folders and glob patterns, sorted by name, each file once."""
    named: dict[str, tuple[Path, str]] = {}  # absolute path -> (path, name)
    for argument in arguments:
        for path, name in _expand(argument, format):
            named.setdefault(os.path.abspath(path), (path, name))  # abspath: symlinks (HF cache) keep their names
    files = sorted(named.values(), key=lambda item: item[1])
    inputs, txt_folders = [], {}
    for path, name in files:
        file_format = format if format != "auto" else _format_of(path)
        if file_format == "txt":  # one input per folder: a document per file is too small a unit
            txt_folders.setdefault(str(Path(name).parent), []).append(path)
        else:
            inputs.append(Input(name, (path,), file_format))
    inputs += [Input(folder, tuple(paths), "txt") for folder, paths in txt_folders.items()]
    _check_unique_names(inputs)
    return sorted(inputs, key=lambda i: i.name)


def _expand(argument: str, format: str) -> list[tuple[Path, str]]:
    """(file, name) pairs of one argument; a name is the path from the parent of the folder given
    (or of a pattern's fixed folder, or of a file's own folder), so `data/` and `data/*.jsonl`
    give the same names."""
    path = Path(argument).expanduser()
    if any(character in argument for character in "*?["):
        root = _fixed_folder(path)
        matches = [Path(m) for m in sorted(glob.glob(str(path), recursive=True))]
        if not matches:
            raise UserError(f"input {argument!r}: no files match this pattern")
        files = [f for m in matches for f in (_walk(m, format) if m.is_dir() else [m]) if _readable_as(f, format)]
        what = "matches"
    elif path.is_dir():
        root, files, what = path, _walk(path, format), "holds"
    elif path.exists():
        root, files, what = path.parent, [path], ""
        if format == "auto":
            _format_of(path)  # a clear error for a name that says nothing of its format
    else:
        raise UserError(f"input {argument!r}: no such file or folder")
    if not files:
        suffixes = _suffixes(format)
        listed = ", ".join(suffixes[:-1]) + " or " + suffixes[-1] if len(suffixes) > 1 else suffixes[0]
        raise UserError(f"input {argument!r}: {what} no {listed} files")
    base = Path(os.path.abspath(root)).parent
    return [(f, Path(os.path.abspath(f)).relative_to(base).as_posix()) for f in files]


def _fixed_folder(pattern: Path) -> Path:
    fixed = []
    for part in pattern.parts:
        if any(character in part for character in "*?["):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _walk(folder: Path, format: str) -> list[Path]:
    """The files under `folder` that `format` reads, leaving out hidden ones (.git, .cache)."""
    found = []
    for root, folders, files in os.walk(folder, followlinks=True):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        found += [Path(root) / f for f in sorted(files) if not f.startswith(".") and _readable_as(Path(f), format)]
    return found


def _suffixes(format: str) -> tuple[str, ...]:
    if format == "auto":
        return tuple(dict.fromkeys(s for suffixes in SUFFIXES.values() for s in suffixes))
    return SUFFIXES[format]


def _readable_as(path: Path, format: str) -> bool:
    return path.name.endswith(_suffixes(format))


def _format_of(path: Path) -> str:
    if path.name.endswith((".jsonl", ".jsonl.zst")):
        return "jsonl"
    if path.name.endswith(".parquet"):
        return "starcoder"
    if path.name.endswith(".txt"):
        return "txt"
    raise UserError(
        f"input {str(path)!r}: cannot tell its format from its name: expected "
        f"{', '.join(_suffixes('auto'))}, or give --format"
    )


def only_languages(inputs: list[Input], languages: set[str]) -> list[Input]:
    """StarCoderData inputs of the chosen languages (inputs of other formats stay)."""
    code = [i for i in inputs if i.format == "starcoder"]
    found = {i.language for i in code}
    if missing := sorted(languages - found):
        raise UserError(
            f"--languages: no parquet files for {', '.join(missing)}: expected a folder <language>/ of "
            f"train-*.parquet files (found: {', '.join(sorted(found)) or 'none'})"
        )
    return [i for i in inputs if i.format != "starcoder" or i.language in languages]


def _check_unique_names(inputs: list[Input]) -> None:
    seen = {}
    for item in inputs:
        if item.name in seen:
            raise UserError(
                f"inputs {seen[item.name]} and {item.paths[0]} are both named {item.name!r}: "
                "expected distinct names (give their parent folders instead)"
            )
        seen[item.name] = item.paths[0]
