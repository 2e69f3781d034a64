"""The one error type for user mistakes, and the entry-point wrapper that reports it.

A bad config key, a missing file or a corrupt shard is the user's to fix: it is printed as one
line naming what was wrong and what was expected, and the process exits with status 2. Bugs are
any other exception and keep their tracebacks.
"""

import sys
from collections.abc import Callable
from typing import NoReturn

USER_ERROR_EXIT_CODE = 2
QUOTED_ERROR_LIMIT = 300  # characters of another library's error quoted inside ours (one_line)


def one_line(text: object, limit: int | None = None) -> str:
    """`text` with its whitespace runs (newlines included) as single spaces, cut to `limit`
    characters with an ellipsis: how another library's long error is quoted inside ours."""
    flat = " ".join(str(text).split())
    return flat if limit is None or len(flat) <= limit else flat[: limit - 1] + "…"


class UserError(Exception):
    """Something the user gave (config, path, data, checkpoint) is wrong; the message says what."""


def run_entry_point(main: Callable[[list[str]], int | None], argv: list[str] | None = None) -> NoReturn:
    """Run `main(argv)`, turning a UserError into one line on stderr and exit status 2."""
    try:
        status = main(sys.argv[1:] if argv is None else argv)
    except UserError as error:
        # One line, whatever the message held, in one write: the ranks of a run share stderr, and
        # run_train.sh tells their common message once.
        sys.stderr.write(f"error: {one_line(error)}\n")
        sys.stderr.flush()
        sys.exit(USER_ERROR_EXIT_CODE)
    sys.exit(status or 0)
