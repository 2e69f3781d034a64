"""The command line of data preparation, and the options of a run that every worker gets."""

import argparse
import os
import re
from dataclasses import dataclass
from pathlib import Path

from tinytitan.chat_templates import DEFAULT_TEMPLATE, TEMPLATES, template_text
from tinytitan.errors import UserError
from tinytitan.prepare.inputs import FORMATS
from tinytitan.prepare.readers import REDPAJAMA_SETS, SetFilter

# The checkout this package runs from: the Llama 2 tokenizer is kept beside it, never in it.
REPO_ROOT = Path(__file__).resolve().parents[2]
TOKENIZER_ENV = "TINYTITAN_TOKENIZER"  # the tokenizer to use when --tokenizer is not given
VALIDATION = "validation"


@dataclass(frozen=True)
class Options:
    """Everything a worker needs to prepare an input."""

    output: Path
    tokenizer_path: Path
    bos: bool
    eos: bool
    split: str
    holdout_fraction: float
    sets: SetFilter
    strict: bool
    tokens_per_shard: int
    chat_template: str = ""  # --format chat: the template conversations are written in

    def input_options(self, format: str) -> dict:
        """What decides an input's tokens besides the run's settings: a resume must match it."""
        chosen = {"split": self.split, "holdout_fraction": self.holdout_fraction}
        if format in ("jsonl", "slimpajama"):  # the set filter applies to JSON lines only
            chosen["include_sets"] = sorted(self.sets.include) if self.sets.include is not None else None
            chosen["exclude_sets"] = sorted(self.sets.exclude)
        return chosen


def parse_args(argv: list[str], description: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="files, folders or glob patterns (quoted, ** for any depth)")
    parser.add_argument(
        "--output", "-o", required=True, type=Path, help="the prepared folder (created; added to if it exists)"
    )
    parser.add_argument(
        "--format", choices=FORMATS, default="auto", help="layout of the inputs (default: by file name)"
    )
    parser.add_argument(
        "--tokenizer",
        type=Path,
        help="sentencepiece tokenizer.model (default: $TINYTITAN_TOKENIZER, "
        "else ../shared/assets/llama2-tokenizer.model beside the repository)",
    )
    parser.add_argument("--split", default="train", help="the split these inputs make (default: train)")
    parser.add_argument(
        "--holdout-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="put this fraction of documents, chosen by a hash of input name and position, in 'validation'",
    )
    parser.add_argument(
        "--include-sets", metavar="NAMES", help="SlimPajama: keep only these RedPajama sets (comma-separated)"
    )
    parser.add_argument(
        "--exclude-sets",
        metavar="NAMES",
        default="RedPajamaGithub",
        help="SlimPajama: leave out these sets (default: RedPajamaGithub, as code comes from "
        "StarCoderData; '' keeps all)",
    )
    parser.add_argument(
        "--languages", metavar="NAMES", help="StarCoderData: only these language folders (comma-separated)"
    )
    parser.add_argument(
        "--chat-template",
        default=None,
        metavar="NAME",
        help=f"--format chat: the chat template (default: {DEFAULT_TEMPLATE}; one of {', '.join(TEMPLATES)})",
    )
    parser.add_argument("--no-bos", dest="bos", action="store_false", help="do not start each document with <s>")
    parser.add_argument("--no-eos", dest="eos", action="store_false", help="do not end each document with </s>")
    parser.add_argument(
        "--strict", action="store_true", help="stop at the first bad line or row instead of skipping it"
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes (default: all CPUs)")
    parser.add_argument(
        "--tokens-per-shard",
        type=int,
        default=1 << 25,
        help="tokens per shard at most, whole documents "
        "aside (default: 2^25, 64 MiB; a worker holds up to ~16 bytes per token of it in memory)",
    )
    return parser.parse_args(argv)


def options_from(args: argparse.Namespace) -> Options:
    if not re.fullmatch(r"[a-z0-9_]+", args.split):
        raise UserError(f"--split {args.split!r}: expected lowercase letters, digits and _ (it starts shard names)")
    if not 0.0 <= args.holdout_fraction < 1.0:
        raise UserError(f"--holdout-fraction {args.holdout_fraction}: expected a fraction in [0, 1)")
    if args.holdout_fraction and args.split == VALIDATION:
        raise UserError(
            f"--holdout-fraction {args.holdout_fraction} with --split {VALIDATION}: expected one or the other"
        )
    if args.workers < 1 or args.tokens_per_shard < 1:
        raise UserError("--workers and --tokens-per-shard: expected integers >= 1")
    chat_template = _chat_template(args)
    include = _set_names("--include-sets", args.include_sets) if args.include_sets is not None else None
    return Options(
        output=args.output.expanduser(),
        tokenizer_path=find_tokenizer(args.tokenizer),
        bos=args.bos,
        eos=args.eos,
        split=args.split,
        holdout_fraction=args.holdout_fraction,
        sets=SetFilter(include, _set_names("--exclude-sets", args.exclude_sets)),
        strict=args.strict,
        tokens_per_shard=args.tokens_per_shard,
        chat_template=chat_template,
    )


def _chat_template(args: argparse.Namespace) -> str:
    """The chat template of a --format chat run ("" for any other format)."""
    if args.format != "chat":
        if args.chat_template is not None:
            raise UserError(f"--chat-template {args.chat_template}: expected it only with --format chat")
        return ""
    if not (args.bos and args.eos):
        raise UserError(
            "--no-bos/--no-eos with --format chat: expected neither (the chat template places <s> and </s>)"
        )
    name = args.chat_template or DEFAULT_TEMPLATE
    template_text(name)  # one line naming the templates there are
    return name


def _set_names(flag: str, value: str) -> frozenset[str]:
    names = frozenset(name.strip() for name in value.split(",") if name.strip())
    if unknown := sorted(names - set(REDPAJAMA_SETS)):
        raise UserError(f"{flag} {','.join(unknown)}: expected RedPajama set names: {', '.join(REDPAJAMA_SETS)}")
    return names


def find_tokenizer(given: Path | None, environ=os.environ, repo_root: Path = REPO_ROOT) -> Path:
    """--tokenizer, else $TINYTITAN_TOKENIZER, else the Llama 2 tokenizer kept beside the checkout."""
    if given is not None:
        return given.expanduser()
    if environ.get(TOKENIZER_ENV):
        return Path(environ[TOKENIZER_ENV]).expanduser()
    shared = repo_root.parent / "shared/assets/llama2-tokenizer.model"
    if shared.is_file():
        return shared
    raise UserError(f"no tokenizer: expected --tokenizer PATH/tokenizer.model (or $TINYTITAN_TOKENIZER, or {shared})")
