"""What several test files share: where the checkout and the Llama 2 tokenizer are, running the
checkout's commands as a user would, training runs and what they leave behind, and the inputs of
the Hugging Face and data-preparation tests. Test modules import from here, never from each other."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp

from tinytitan.config import load_config
from tinytitan.data.builtin_corpus import prose_documents
from tinytitan.data.manifest import read_manifest, split_shards
from tinytitan.data.shards import open_shard
from tinytitan.data.tokenizer import Tokenizer
from tinytitan.models.llama import FLAVORS, build_model
from tinytitan.prepare import run as prepare_data
from tinytitan.run_folder import RunFolder

REPO_ROOT = Path(__file__).resolve().parent.parent
# The real Llama 2 tokenizer lives beside the checkout and is never committed into it; as for
# scripts/prepare_data.py, $TINYTITAN_TOKENIZER names it elsewhere.
LLAMA2_TOKENIZER = Path(
    os.environ.get("TINYTITAN_TOKENIZER") or REPO_ROOT.parent / "shared/assets/llama2-tokenizer.model"
)


# ---- the checkout's commands ----


# Subprocesses of the HF tests compute in one thread: the same sums in the same order on any machine.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def run_command(*argv: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a command from the repository root as a user would, capturing its output. The launchers
    use this test session's Python rather than setting up .venv."""
    return subprocess.run(
        argv,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TINYTITAN_PYTHON": sys.executable, **(env or {})},
    )


def run_python(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return run_command(sys.executable, *args, **kwargs)


# ---- job configs and training runs ----


def write_job_file(tmp_path, text: str) -> Path:
    """A job's TOML file, job.toml in `tmp_path`."""
    path = tmp_path / "job.toml"
    path.write_text(text)
    return path


STEPS = 20


def overrides(run_root, corpus_cache, *extra):
    """A run of STEPS steps on the built-in corpus that saves a checkpoint every 10 steps."""
    return [
        f"--job.dump_folder={run_root}",
        f"--data.cache_dir={corpus_cache}",
        f"--training.steps={STEPS}",
        "--training.seq_len=128",
        "--training.global_batch_tokens=1024",
        "--metrics.log_freq=1",
        "--lr_scheduler.warmup_steps=5",
        "--checkpoint.enable",
        "--checkpoint.interval=10",
        "--checkpoint.keep_latest_k=0",
        "--validation.eval_freq=0",
        *extra,
    ]


# Document masking through flex with per-document positions: the masked variant of a run.
DOCUMENT_MASKING = ("--model.attention=flex", "--data.document_masking=true", "--data.document_positions=per_document")


def small_run(run_root, corpus_cache, *extra):
    """A 10-step run of short sequences that validates every 5 steps."""
    return [
        f"--job.dump_folder={run_root}",
        f"--data.cache_dir={corpus_cache}",
        "--training.steps=10",
        "--training.seq_len=64",
        "--training.global_batch_tokens=512",
        "--metrics.log_freq=1",
        "--lr_scheduler.warmup_steps=3",
        "--data.num_workers=0",
        "--validation.eval_freq=5",
        "--validation.eval_steps=2",
        *extra,
    ]


def debug_config(tmp_path, corpus_cache, *overrides):
    """The debug recipe for training in this process: short sequences, a record every step."""
    return load_config(
        [
            f"--job.config_file={REPO_ROOT / 'train_configs/debug_model.toml'}",
            f"--job.dump_folder={tmp_path}",
            f"--data.cache_dir={corpus_cache}",
            "--training.seq_len=64",
            "--metrics.log_freq=1",
            "--metrics.enable_tensorboard=false",
            *overrides,
        ]
    )


def micro_batch(ranks: int) -> str:
    return f"--training.micro_batch_size={8 // ranks}"  # the same global batch on any number of ranks


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, read from /proc (children first found, then theirs)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the process ended meanwhile
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, queue = [], [pid]
    while queue:
        below = children.get(queue.pop(), [])
        found += below
        queue += below
    return found


def kill_run(process: subprocess.Popen) -> None:
    """SIGKILL a run started by `launch`: its process group, and every process below it, since
    torchrun starts each worker in a session of its own, which a group kill does not reach (an
    orphaned worker would go on training and write into the run folder)."""
    below = descendants(process.pid)
    os.killpg(process.pid, signal.SIGKILL)
    for pid in below:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()


def launch(args, ranks=1, extra_env=None) -> subprocess.Popen:
    """run_train.sh started in its own process group (so that a test can kill the whole run)."""
    env = {**os.environ, "TINYTITAN_PYTHON": sys.executable, "NGPU": str(ranks), **(extra_env or {})}
    return subprocess.Popen(
        ["./run_train.sh", *args, micro_batch(ranks)],
        cwd=REPO_ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def finish(process: subprocess.Popen, timeout=300) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]
    return output


def wait_for_checkpoint(run_dir, step, process, timeout=120):
    deadline = time.monotonic() + timeout
    while step not in RunFolder(run_dir).published_steps():
        assert process.poll() is None, f"the run ended before step {step} was saved"
        assert time.monotonic() < deadline, f"no checkpoint of step {step} after {timeout}s"
        time.sleep(0.05)


def losses(run_dir) -> dict[int, float]:
    """The logged loss of every step of a run folder, from its TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"))  # every event file: a resumed run writes a new one
    events.Reload()
    return {event.step: event.value for event in events.Scalars("loss")}


def model_weights(checkpoint) -> dict[str, torch.Tensor]:
    """The debug model's weights in a checkpoint, read without a process group."""
    with torch.device("cpu"):
        template = build_model(FLAVORS["debug"], "cpu").state_dict()
    state = {"model": template}
    dcp.load(state, checkpoint_id=str(checkpoint), no_dist=True)
    return state["model"]


# ---- Hugging Face models and tokenizers ----


def train_small_tokenizer(path, **settings):
    """A 320-piece sentencepiece BPE trained on a little prose; Llama-style unless `settings` say otherwise."""
    import sentencepiece as spm

    lines = [line for doc in prose_documents()[:30] for line in doc.splitlines() if line.strip()]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        **{
            "sentence_iterator": iter(lines),
            "model_writer": model,
            "vocab_size": 320,
            "model_type": "bpe",
            "byte_fallback": True,
            "split_digits": True,
            "remove_extra_whitespaces": False,
            "allow_whitespace_only_pieces": True,
            "normalization_rule_name": "identity",
            "character_coverage": 0.98,
            "unk_id": 0,
            "bos_id": 1,
            "eos_id": 2,
            "pad_id": -1,
            "minloglevel": 2,
            **settings,
        }
    )
    path.write_bytes(model.getvalue())
    return path


def awkward_hf_model(seed: int = 0, max_position_embeddings: int = 64, vocab_size: int = 331):
    """A random LlamaForCausalLM of awkward sizes (head_dim 16, 3 query heads per KV head, odd
    vocabulary), with weights large enough that its logits are peaked: greedy choices are clear."""
    import transformers

    config = transformers.LlamaConfig(
        hidden_size=96,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        intermediate_size=200,
        vocab_size=vocab_size,
        rms_norm_eps=1e-6,
        rope_theta=5000.0,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.uniform_(0.5, 1.5) if name.endswith("norm.weight") else param.normal_(0.0, 0.3)
    return model


# ---- data-preparation inputs: small files in each real layout, and what they should give ----

SETS = ["RedPajamaC4", "RedPajamaGithub", "RedPajamaBook", "RedPajamaArXiv"]
PHRASES = [
    "The quick brown fox jumps over the lazy dog.",
    "naïve café, Straße, 東京 and 🙂 in one line.",
    "def add(a, b):\n    return a + b\n",
    "Numbers 12345 and 3.14159 split into digits.",
    "  indented\ttabs\n\nand a blank line",
]


def texts(prefix: str, count: int) -> list[str]:
    """Distinct documents of varied text (prose, code, digits, non-ASCII)."""
    return [
        f"{prefix} {i}: " + " ".join(PHRASES[(i + k) % len(PHRASES)] for k in range(1 + i % 3)) for i in range(count)
    ]


def slimpajama_rows(prefix: str, count: int) -> list[dict]:
    return [
        {"text": text, "meta": {"redpajama_set_name": SETS[i % len(SETS)]}}
        for i, text in enumerate(texts(prefix, count))
    ]


def write_lines(path: Path, lines: list, zst: bool = False, frames: int = 1) -> Path:
    """JSON lines (dicts, or raw str/bytes lines as given), compressed in `frames` zstd frames."""
    raw = [
        line if isinstance(line, bytes) else (line if isinstance(line, str) else json.dumps(line)).encode()
        for line in lines
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    if not zst:
        path.write_bytes(b"".join(line + b"\n" for line in raw))
        return path
    import zstandard

    step = -(-len(raw) // frames)
    parts = [b"".join(line + b"\n" for line in raw[i : i + step]) for i in range(0, len(raw), step)]
    path.write_bytes(b"".join(zstandard.ZstdCompressor().compress(part) for part in parts))
    return path


def write_parquet(path: Path, contents: list) -> Path:
    import pyarrow
    import pyarrow.parquet

    path.parent.mkdir(parents=True, exist_ok=True)
    table = pyarrow.table({"max_stars_repo_path": [f"f{i}.py" for i in range(len(contents))], "content": contents})
    pyarrow.parquet.write_table(table, path, row_group_size=4)  # several row groups
    return path


def write_starcoderdata(root: Path) -> dict[str, list[str]]:
    """Two languages, python in two files; the other files of a download are not inputs."""
    files = {
        "python/train-00000-of-00002.parquet": texts("py0", 6),
        "python/train-00001-of-00002.parquet": texts("py1", 5),
        "java/train-00000-of-00001.parquet": texts("java", 4),
    }
    for name, contents in files.items():
        write_parquet(root / name, contents)
    (root / "README.md").write_text("# StarCoderData\n")
    (root / ".gitattributes").write_text("*.parquet filter=lfs\n")
    return files


def write_numbered_inputs(data: Path, count: int) -> None:
    for i in range(count):
        write_lines(data / f"p{i}.jsonl", [{"text": t} for t in texts(f"p{i}", 12)])


def prepare(tokenizer: Tokenizer, *args) -> None:
    """The script in this process, with one worker (the multi-process path runs as a user would, in e2e)."""
    assert prepare_data.main([*map(str, args), "--tokenizer", str(tokenizer.path), "--workers", "1"]) == 0


def tokens_of(folder: Path, split: str) -> list[int]:
    shards = split_shards(folder, split)
    return np.concatenate([open_shard(path)[1] for path in shards]).tolist() if shards else []


def expected(tokenizer: Tokenizer, documents: list[str], bos: bool = True, eos: bool = True) -> list[int]:
    return [token for document in documents for token in tokenizer.encode(document, bos=bos, eos=eos)]


def folder_contents(folder: Path) -> tuple[dict, dict]:
    return {p.name: p.read_bytes() for p in folder.glob("*.bin")}, read_manifest(folder)


# ---- downstream task files: a few rows of each task in its published layout ----

# One row layout per task, as the Hugging Face dataset publishes it (the fields lm-eval reads, and
# some it does not). Sentences are long enough that a few contexts pass a 64-token max_seq_len.
TASK_ROWS = {
    "hellaswag": [
        {
            "ind": 4,
            "activity_label": "Removing ice from car",
            "ctx_a": "Then, the man writes over the snow covering the window of a car, and a woman wearing winter"
            " clothes smiles.",
            "ctx_b": "then",
            "ctx": "",
            "endings": [
                ", the man adds wax to the windshield and cuts it.",
                ", a person board a ski lift, while two men supporting the head of the person.",
                ", the man puts on a christmas coat, knitted with netting.",
                ", the man continues removing the snow on his car.",
            ],
            "source_id": "activitynet~v_-1IBHYS3L-Y",
            "split": "val",
            "split_type": "indomain",
            "label": "3",
        },
        {
            "ind": 92,
            "activity_label": "Home and Garden",
            "ctx_a": "[header] How to grow a lemon tree [title] Choose a pot. [step] Pick a pot with drainage holes.",
            "ctx_b": "",
            "ctx": "",
            "endings": [
                "[substeps] Fill it with soil [title] water it daily.",
                "Plant the seed deep and wait.",
                "[title] Sell the [step] lemons.",
                "Use a glass jar instead.",
            ],
            "source_id": "wikihow~1234",
            "split": "val",
            "split_type": "zeroshot",
            "label": "0",
        },
        {
            "ind": 7,
            "activity_label": "Playing piano",
            "ctx_a": "A girl sits at a piano.",
            "ctx_b": "she",
            "ctx": "",
            "endings": ["plays a song.", "eats the keys.", "walks to the door and leaves.", "sings loudly."],
            "source_id": "activitynet~x",
            "split": "val",
            "split_type": "indomain",
            "label": "1",
        },
    ],
    "piqa": [
        {
            "goal": "How do I ready a guinea pig cage for it's new occupants?",
            "sol1": "Provide it with a bedding of paper strips.",
            "sol2": "Provide it with a bedding of jeans material.",
            "label": 0,
        },
        {
            "goal": "dresser",
            "sol1": "replace drawer with bobby pin ",
            "sol2": "finish, woodgrain with  bobby pin ",
            "label": 1,
        },
        {"goal": "To make a cake moist,", "sol1": "add oil.", "sol2": "add sand.", "label": 0},
    ],
    "arc_easy": [
        {
            "id": "Mercury_7220990",
            "question": "Which factor will most likely cause a person to develop a fever?",
            "choices": {
                "text": [
                    "a leg muscle relaxing after exercise",
                    "a bacterial population in the bloodstream",
                    "several viral particles on the skin",
                    "carbohydrates being digested in the stomach",
                ],
                "label": ["A", "B", "C", "D"],
            },
            "answerKey": "B",
        },
        {
            "id": "NYSEDREGENTS_2015_4_2",
            "question": "Which is a renewable resource?",
            "choices": {"text": ["coal", "oil", "wind"], "label": ["1", "2", "3"]},
            "answerKey": "3",
        },
    ],
    "arc_challenge": [
        {
            "id": "Mercury_SC_415702",
            "question": "George wants to warm his hands quickly by rubbing them. Which skin"
            " surface will produce the most heat?",
            "choices": {
                "text": ["dry palms", "wet palms", "palms covered with oil", "palms covered with lotion"],
                "label": ["A", "B", "C", "D"],
            },
            "answerKey": "A",
        },
        {
            "id": "MCAS_2000_4_6",
            "question": "Which of the following is a trait that a dog does NOT inherit from its parents?",
            "choices": {
                "text": [
                    "the length of its fur",
                    "the shape of its nose",
                    "the size of its appetite",
                    "the color of its fur",
                ],
                "label": ["A", "B", "C", "D"],
            },
            "answerKey": "C",
        },
    ],
    "winogrande": [
        {
            "sentence": "Sarah was a much better surgeon than Maria so _ always got the harder cases.",
            "option1": "Sarah",
            "option2": "Maria",
            "answer": "1",
        },
        {
            "sentence": "The trophy doesn't fit into the brown suitcase because the _ is too large.",
            "option1": "trophy",
            "option2": "suitcase",
            "answer": "1",
        },
        {
            "sentence": "He poured water from the bottle into the cup until the _ was full.",
            "option1": "bottle",
            "option2": "cup",
            "answer": "2",
        },
    ],
    "boolq": [
        {
            "question": "do iran and afghanistan speak the same language",
            "passage": "Persian language -- Persian, also"
            " known by its endonym Farsi, is one of the Western Iranian languages within the Indo-Iranian branch of the"
            " Indo-European language family. It is primarily spoken in Iran, Afghanistan, and Tajikistan.",
            "idx": 0,
            "label": 1,
        },
        {
            "question": "is the sun a planet",
            "passage": "The Sun is the star at the center of the Solar System.",
            "idx": 1,
            "label": 0,
        },
    ],
    "openbookqa": [
        {
            "id": "7-980",
            "question_stem": "The sun is responsible for",
            "choices": {
                "text": [
                    "puppies learning new tricks",
                    "children growing up and getting old",
                    "flowers wilting in a vase",
                    "plants sprouting, blooming and wilting",
                ],
                "label": ["A", "B", "C", "D"],
            },
            "answerKey": "D",
        },
        {
            "id": "8-376",
            "question_stem": "When food is reduced in the stomach",
            "choices": {
                "text": [
                    "the mind needs time to digest",
                    "take a second to digest what I said",
                    "nutrients are being deconstructed",
                    "reader's digest is a body of works",
                ],
                "label": ["A", "B", "C", "D"],
            },
            "answerKey": "C",
        },
    ],
    "lambada_openai": [
        {
            "text": 'In my palm is a clear stone, and inside it is a small ivory statuette. A guardian angel. "Figured'
            " if you're going to be out at night getting hit by cars, you might as well have some backup.\" I look at"
            " him, feeling stunned. Like this is some sort of sign"
        },
        {"text": "She opened the door and called the dog by its name, and the dog came running to the door"},
        {"text": "Give me  two  apples"},
    ],
}


def write_task_files(folder: Path) -> dict[str, Path]:
    """Each task's rows in a file: JSON Lines, and parquet for piqa and arc_challenge."""
    files = {}
    for name, rows in TASK_ROWS.items():
        folder.mkdir(parents=True, exist_ok=True)
        if name in ("piqa", "arc_challenge"):
            import pyarrow
            import pyarrow.parquet

            files[name] = folder / f"{name}.parquet"
            pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), files[name])
        else:
            files[name] = write_lines(folder / f"{name}.jsonl", rows)
    return files
