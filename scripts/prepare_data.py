#!/usr/bin/env python3
"""Prepare raw corpora as a folder of token shards for training (one folder per data source).

Each document becomes <s> tokens </s> (see --no-bos, --no-eos), packed into uint16 shards named
<split>-<input>-NNNNN.bin, and manifest.json lists the shards of each split with their counts.
Every token is kept: there is no padding and no dropped tail, and each document left out (by a set
filter, or for bad input) is counted in the manifest and the summary.

    # SlimPajama: its own validation split, then the train split, into one folder
    python scripts/prepare_data.py SlimPajama-627B/validation --split validation --output data/slimpajama
    python scripts/prepare_data.py SlimPajama-627B/train --output data/slimpajama

    # StarCoderData (no validation split of its own): hold out 0.1% of the documents
    python scripts/prepare_data.py starcoderdata --languages python,java --holdout-fraction 0.001 \\
        --output data/starcoder

    # your own files: .jsonl, .jsonl.zst (a "text" field per line) or .txt (one document per file)
    python scripts/prepare_data.py 'my_corpus/**/*.jsonl.zst' notes/ --output data/mine

    # conversations for chat finetuning ({"messages": [...]} or "### Human: ... ### Assistant: ..."):
    # written in a chat template, with a mask of the tokens training learns (the answers)
    python scripts/prepare_data.py oasst/ --format chat --holdout-fraction 0.05 --output data/oasst

Resuming: each input (a file; for .txt, a folder's files) is prepared whole by one worker, which
writes its shards and then a completion record done/<input>.json. A later run into the same folder
skips inputs with a record and redoes any other, so an interrupted preparation is resumed by running
the same command again; runs with other inputs or splits add to the same manifest. Whole-file
problems (a truncated .zst, an unreadable parquet, an empty pattern) stop the run with one line;
bad lines and rows are skipped and counted, or stop the run with --strict.
"""

from tinytitan.errors import run_entry_point
from tinytitan.prepare.run import main

if __name__ == "__main__":
    run_entry_point(lambda argv: main(argv, description=__doc__))
