"""The job's configuration as a user reads it: one dataclass per TOML section, and for each key its
default, a one-line doc and the values it accepts (`option()`).

The parser (parser.py) applies defaults, then the TOML file, then the command line; the checks
(checks.py) test what no single key can say alone. `--help` prints this schema.
"""

import json
from dataclasses import dataclass, field

from tinytitan.chat_templates import TEMPLATES
from tinytitan.dtypes import ALIASES as DTYPE_ALIASES
from tinytitan.dtypes import DTYPE_NAMES
from tinytitan.errors import UserError
from tinytitan.models.args import FLAVORS


class ConfigError(UserError):
    pass


# Every integer key ends up in Python arithmetic, torch tensors (the checkpointed step and token
# counts) or numpy: an int64 holds all of them, so an integer key without a `max` stops there.
INT64_MAX = 2**63 - 1


def option(
    default, doc: str, *, choices=None, aliases=None, min=None, above=None, max=None, below=None, schedule=False
):
    """A config key: its default, a one-line doc, and the values it accepts. `aliases` maps other
    spellings a user may write (say, from an older config) to the stored one, before `choices` is checked.
    `schedule`: a number key that also takes a piecewise-linear schedule over optimizer steps,
    [[step, value], ...] (see weight_schedule)."""
    if type(default) is int and max is None:
        max = INT64_MAX
    limits = {"choices": choices, "aliases": aliases or {}, "min": min, "above": above, "max": max, "below": below}
    limits["schedule"] = schedule
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"doc": doc, **limits})
    return field(default=default, metadata={"doc": doc, **limits})


def toml_value(value) -> str:
    """A value as TOML writes it: in a saved config and wherever a message quotes a value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    return repr(value)


@dataclass
class Job:
    config_file: str = option("", "TOML file applied before the command-line overrides")
    name: str = option("debug", "run name: the run folder is <dump_folder>/<name>")
    dump_folder: str = option("./outputs", "folder holding the run folders")
    description: str = option("", "free text printed at start")


@dataclass
class Model:
    flavor: str = option(
        "",
        'named model size: the starting point the keys below override; "": the model_args.json of '
        "checkpoint.initial_load_path (a converted model, any shape: a key below that differs from it is "
        "refused), else debug",
        choices=(*FLAVORS, ""),
    )
    # Each shape key overrides the flavor's argument of the same name; 0 or "" keeps the flavor's.
    dim: int = option(0, "model width (0: the flavor's)", min=0)
    n_layers: int = option(0, "transformer blocks (0: the flavor's)", min=0)
    n_heads: int = option(0, "query heads (0: the flavor's)", min=0)
    n_kv_heads: int = option(0, "key/value heads, dividing n_heads (0: the flavor's)", min=0)
    head_dim: int = option(0, "size of a head, even (0: dim / n_heads)", min=0)
    ffn_hidden_dim: int = option(0, "SwiGLU hidden size (0: the flavor's)", min=0)
    vocab_size: int = option(
        0, "embedding rows, at least the tokenizer's (0: the tokenizer's; the flavor's for synthetic data)", min=0
    )
    norm_eps: float = option(0.0, "RMSNorm epsilon (0: the flavor's)", min=0.0)
    rope_theta: float = option(0.0, "rotary base (0: the flavor's)", min=0.0)
    max_seq_len: int = option(0, "longest sequence, the rotary tables' length (0: the flavor's)", min=0)
    tie_embeddings: bool = option(False, "the output head is the embedding's weight (the flavors are untied)")
    rope_scaling_type: str = option(
        "", 'RoPE scaling as in Hugging Face\'s config: "default", "linear" or "llama3" ("": the flavor\'s)'
    )
    rope_scaling_factor: float = option(
        0.0, "linear/llama3: the factor the context is stretched by (0: the flavor's)", min=0.0
    )
    rope_low_freq_factor: float = option(0.0, "llama3: low_freq_factor (0: the flavor's, 1)", min=0.0)
    rope_high_freq_factor: float = option(0.0, "llama3: high_freq_factor (0: the flavor's, 4)", min=0.0)
    rope_original_max_seq_len: int = option(
        0, "llama3: original_max_position_embeddings (0: the flavor's, 8192)", min=0
    )
    kernels: str = option(
        "auto",
        "RMSNorm, rotary, SwiGLU and loss: fused Triton kernels or plain PyTorch; auto: triton on CUDA, torch on CPU",
        choices=("auto", "triton", "torch"),
    )
    attention: str = option(
        "sdpa",
        "attention backend: sdpa (PyTorch's, causal only), flex (FlexAttention: causal or document-masked), "
        "flash (the flash-attn package, CUDA only: pip install 'tinytitan[flash]')",
        choices=("sdpa", "flex", "flash"),
    )


@dataclass
class Training:
    steps: int = option(200, "optimizer steps to train", min=1)
    seq_len: int = option(256, "tokens per sample (at most the flavor's max_seq_len)", min=2)
    global_batch_tokens: int = option(
        8192,
        "tokens per optimizer step over all ranks; gradient accumulation makes up what the ranks' micro-batches do not",
        min=1,
    )
    micro_batch_size: int = option(8, "sequences per rank in one forward/backward", min=1)
    max_norm: float = option(1.0, "clip gradients to this global L2 norm (0 disables clipping)", min=0.0)
    mixed_precision: str = option(
        "auto",
        "auto: bfloat16 autocast on CUDA, float32 on CPU",
        choices=("auto", "bfloat16", "float32"),
        aliases=DTYPE_ALIASES,
    )
    device: str = option("auto", "auto: CUDA when available, else CPU", choices=("auto", "cuda", "cpu"))
    # torch.manual_seed takes at most 2**64 - 1 (numpy's generators take any size)
    seed: int = option(42, "seed of the initial weights and the data order", min=0, max=2**64 - 1)
    skip_nonfinite_steps: int = option(
        0,
        "divergence guard: a step whose loss or gradient norm is NaN/inf on any rank changes nothing and is "
        "skipped, and this many skips in a row stop the run (costs one host sync per step); 0: off, a "
        "non-finite loss at a log step stops the run",
        min=0,
    )
    loss_spike_stddevs: float = option(
        0.0,
        "log an event when a logged loss exceeds the mean of the recent ones by this many stddevs (0: off)",
        min=0.0,
    )
    gc_freq: int = option(
        50,
        "Python's automatic garbage collection is off in the loop and runs every this many steps (0: automatic)",
        min=0,
    )


@dataclass
class Optimizer:
    name: str = option("AdamW", "optimizer (fused kernel on CUDA)", choices=("AdamW",))
    lr: float = option(4e-4, "peak learning rate", above=0.0)
    beta1: float = option(0.9, "AdamW beta1", min=0.0, below=1.0)
    beta2: float = option(0.95, "AdamW beta2", min=0.0, below=1.0)
    eps: float = option(1e-8, "AdamW epsilon", above=0.0)
    weight_decay: float = option(0.1, "decoupled weight decay, applied to every parameter as TinyLlama did", min=0.0)


@dataclass
class LRScheduler:
    warmup_steps: int = option(
        20, "steps of linear warmup to the peak lr (fewer than training.steps, so that the decay ends at min_lr)", min=0
    )
    decay_type: str = option(
        "cosine",
        "decay from the peak to min_lr after warmup; wsd: warmup-stable-decay, the peak until the last decay_steps",
        choices=("cosine", "linear", "constant", "wsd"),
    )
    min_lr: float = option(4e-5, "learning rate at the last step", min=0.0)
    decay_steps: int = option(0, "wsd: steps of the final decay, ending at training.steps (0: decay_fraction)", min=0)
    decay_fraction: float = option(
        0.2,
        "wsd, when decay_steps = 0: the final decay's share of training.steps (rounded, at least 1 step)",
        above=0.0,
    )
    decay_shape: str = option(
        "linear", "wsd: the final decay's shape, linear or 1-sqrt (1 - sqrt(progress))", choices=("linear", "1-sqrt")
    )


@dataclass
class DataSource:
    name: str = option("", "name of the source in logs (val/<name>/loss)")
    path: str = option("", "folder prepared by scripts/prepare_data.py (it holds manifest.json)")
    weight: float = option(
        1.0,
        "share of the samples drawn from this source (weights are normalised), or a schedule over optimizer steps: "
        "[[step, weight], ...], linear between the points, the first weight before them and the last after them",
        above=0.0,
        schedule=True,
    )


@dataclass
class Data:
    dataset: str = option(
        "builtin",
        "builtin: Python's docs and sources, 7:3 prose:code; builtin_chat: conversations made from Python's docs "
        "(finetuning, with the built-in corpus's tokenizer); sources: data.sources; "
        "synthetic: uniform random tokens (benchmarks)",
        choices=("builtin", "builtin_chat", "sources", "synthetic"),
    )
    sources: list[DataSource] = option([], "prepared data sources mixed by weight when dataset = 'sources'")
    tokenizer_path: str = option(
        "",
        "sentencepiece tokenizer.model the sources were prepared with; with 'builtin', empty trains one on the corpus",
    )
    cache_dir: str = option("~/.cache/tinytitan", "where the built-in corpus is prepared once and reused")
    num_workers: int = option(2, "loader worker processes per rank (0: load in the training process)", min=0)
    document_masking: bool = option(
        False,
        "a token attends only to earlier tokens of its own document (documents start at the bos token; needs "
        'model.attention = "flex" or "flash"); false: across the whole window, as TinyLlama trained',
    )
    document_positions: str = option(
        "window",
        "rotary positions: window (0..seq_len-1 across the packed documents) or per_document (from 0 at each bos)",
        choices=("window", "per_document"),
    )
    chat_template: str = option(
        "",
        "chat template of the conversations (prepare_data --format chat), written into an export's tokenizer; "
        "empty: the one the sources were prepared with",
        choices=("", *TEMPLATES),
    )
    packing: bool = option(
        True,
        "conversations: pack several whole ones per sample (with data.document_masking) rather than one per "
        "sample padded to seq_len",
    )


@dataclass
class EvalTask:
    name: str = option(
        "",
        "downstream task: hellaswag, piqa, arc_easy, arc_challenge, winogrande, boolq, openbookqa, lambada_openai, "
        "or builtin (made from the built-in corpus, no file)",
    )
    path: str = option("", "the task's rows as the Hugging Face dataset publishes them (.jsonl or .parquet)")
    limit: int = option(0, "evaluate the first this many items (0: all)", min=0)


@dataclass
class Validation:
    eval_freq: int = option(0, "evaluate on each source's validation split every this many steps (0: never)", min=0)
    eval_samples: int = option(
        0,
        "samples of each source's validation split in one evaluation, over all ranks together, so the loss is "
        "the same on any number of ranks (0: eval_steps x micro_batch_size)",
        min=0,
    )
    eval_steps: int = option(
        10, "older key, used when eval_samples = 0: evaluate eval_steps x micro_batch_size samples in all", min=1
    )
    tasks: list[EvalTask] = option(
        [], "zero-shot downstream tasks evaluated every eval_freq steps, logged as eval/<name>/acc and acc_norm"
    )


@dataclass
class Metrics:
    log_freq: int = option(10, "log a line (and TensorBoard scalars) every this many steps", min=1)
    enable_tensorboard: bool = option(True, "write TensorBoard scalars under <run folder>/tb")
    enable_wandb: bool = option(
        False, "log the same scalars to Weights & Biases (pip install wandb; WANDB_MODE=offline works without network)"
    )
    wandb_project: str = option("tinytitan", "the Weights & Biases project; the run's name is job.name")


@dataclass
class Profiling:
    enable: bool = option(False, "trace steps with torch.profiler into <run folder>/profiles/step-<start_step>/")
    start_step: int = option(5, "the first profiled step (a later one than the first: past the warm-up)", min=1)
    steps: int = option(2, "profiled steps", min=1)
    with_memory: bool = option(
        False, "on CUDA, also record a memory snapshot (for pytorch.org/memory_viz) of the profiled steps"
    )


@dataclass
class Compile:
    enable: bool = option(False, "torch.compile each transformer block")


@dataclass
class Parallelism:
    data_parallel_shard_degree: int = option(-1, "ranks that shard the parameters (FSDP); -1: the rest", min=-1)
    data_parallel_replicate_degree: int = option(
        1, "groups of sharding ranks that replicate each other (HSDP); -1: the rest", min=-1
    )
    reshard_after_forward: bool = option(
        True, "free gathered parameters after forward (less memory, one more all-gather)"
    )


@dataclass
class ActivationCheckpoint:
    mode: str = option(
        "none",
        "recompute activations in backward: none, full (every block), or selective (every selective_every-th block)",
        choices=("none", "full", "selective"),
    )
    selective_every: int = option(2, "with mode = 'selective', checkpoint blocks 0, n, 2n, ...", min=1)


@dataclass
class Checkpoint:
    enable: bool = option(False, "save checkpoints to <run folder>/checkpoints/step-<N> and resume from the newest")
    interval: int = option(500, "save every this many steps (and at the last step)", min=1)
    keep_latest_k: int = option(3, "keep this many newest checkpoints (0: keep all)", min=0)
    initial_load_path: str = option(
        "", "model-only checkpoint to start from when the run folder has none (e.g. converted TinyLlama weights)"
    )
    initial_load_optimizer: bool = option(
        False,
        "also load the optimizer state (AdamW's moments) of initial_load_path, a full training checkpoint: a "
        "cooldown from a stable-phase checkpoint; the lr and hyperparameters are still this config's",
    )
    initial_load_data: bool = option(
        False,
        "also continue initial_load_path's data stream where it stopped (a full training checkpoint): the new run's "
        "sources continue from their consumed samples, a source new to it starts at its sample 0",
    )
    initial_load_extends_context: bool = option(
        False,
        "continue initial_load_path's model at a longer context: its rope_theta, rope_scaling keys and max_seq_len "
        "may differ from [model]'s (a longer max_seq_len only); every other model argument must still match",
    )
    async_save: bool = option(
        False,
        "save in the background (dcp.async_save): training goes on once the state is "
        "copied; the checkpoint is published at the first step after every rank has written it",
    )
    export_dtype: str = option(
        "",
        "at the end, also export model-only weights in this dtype to <run folder>/checkpoints/step-<N>-model",
        choices=("", *DTYPE_NAMES),
        aliases=DTYPE_ALIASES,
    )


@dataclass
class JobConfig:
    job: Job = field(default_factory=Job)
    model: Model = field(default_factory=Model)
    training: Training = field(default_factory=Training)
    optimizer: Optimizer = field(default_factory=Optimizer)
    lr_scheduler: LRScheduler = field(default_factory=LRScheduler)
    data: Data = field(default_factory=Data)
    validation: Validation = field(default_factory=Validation)
    metrics: Metrics = field(default_factory=Metrics)
    profiling: Profiling = field(default_factory=Profiling)
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    parallelism: Parallelism = field(default_factory=Parallelism)
    activation_checkpoint: ActivationCheckpoint = field(default_factory=ActivationCheckpoint)
    compile: Compile = field(default_factory=Compile)
