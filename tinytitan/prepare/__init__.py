"""Data preparation: raw corpora (SlimPajama, StarCoderData, .jsonl/.zst/.txt files) into a folder
of token shards with a manifest, the format `tinytitan.data` reads; scripts/prepare_data.py is its
command line.

inputs.py finds the inputs, readers.py reads their documents, options.py holds the command line,
one_input.py turns one input into shards and a completion record, output_folder.py keeps the
records, the resume checks and the manifest, and run.py runs it all in worker processes.
"""
