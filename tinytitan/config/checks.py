"""What no single key can say alone: the keys that must agree with each other (checked when the
config is loaded), and the rank-dependent checks (`check_runtime`), which need the number of
processes and devices as well.

`check_runtime` runs twice: in the launcher's pre-check (`python -m tinytitan.config`, before
torchrun starts any worker) and first thing in training, before any folder, corpus or process
group. So a mistake is one line and exit status 2, never a failure report from every worker. This
module does not import torch: the launcher is told the device count rather than asking torch.
"""

import importlib.util

from tinytitan.config.model_shape import model_args, shape_source
from tinytitan.config.schedules import schedule_value
from tinytitan.config.schema import (
    Checkpoint,
    ConfigError,
    Data,
    JobConfig,
    LRScheduler,
    Parallelism,
    Training,
    Validation,
    toml_value,
)
from tinytitan.evaluation.tasks import BUILTIN, TASKS

_REPLICATE, _SHARD = "parallelism.data_parallel_replicate_degree", "parallelism.data_parallel_shard_degree"


def check_consistency(config: JobConfig) -> None:
    """The cross-key checks of a loaded config (independent of where and how it runs)."""
    for key in ("data_parallel_shard_degree", "data_parallel_replicate_degree"):
        if getattr(config.parallelism, key) == 0:
            raise ConfigError(f"parallelism.{key} = 0: expected a positive degree or -1")
    args = model_args(config.model, checkpoint=config.checkpoint)  # a bad shape is refused here, naming the keys
    if config.training.seq_len > args.max_seq_len:
        source = shape_source(config.model, config.checkpoint)
        which = "model.max_seq_len" if config.model.max_seq_len else f"the max_seq_len of {source}"
        raise ConfigError(f"training.seq_len = {config.training.seq_len}: expected at most {args.max_seq_len}, {which}")
    if config.lr_scheduler.min_lr > config.optimizer.lr:
        raise ConfigError(
            f"lr_scheduler.min_lr = {config.lr_scheduler.min_lr}: expected at most optimizer.lr = {config.optimizer.lr}"
        )
    _check_warmup(config.lr_scheduler, config.training.steps)
    _check_initial_load(config.checkpoint)
    _check_sources(config.data)
    _check_tasks(config.validation, config.data.dataset)
    if config.data.document_masking and config.model.attention == "sdpa":
        raise ConfigError(
            'data.document_masking = true: model.attention = "sdpa" attends across the whole window: '
            'expected model.attention = "flex" (or "flash" on CUDA)'
        )
    profiling = config.profiling
    if profiling.enable and profiling.start_step > config.training.steps:
        raise ConfigError(
            f"profiling.start_step = {profiling.start_step}: expected at most training.steps = "
            f"{config.training.steps}, so that a step is profiled"
        )


def _check_warmup(schedule: LRScheduler, steps: int) -> None:
    """The schedule's promise: the lr reaches its peak at step warmup_steps and then decays to min_lr
    at the last step. A warmup as long as the run would leave out the decay; a longer one, the peak too."""
    warmup = schedule.warmup_steps
    if schedule.decay_type == "constant":
        if warmup > steps:
            raise ConfigError(
                f"lr_scheduler.warmup_steps = {warmup}: expected at most training.steps = {steps}, "
                "so that the lr reaches its peak"
            )
    elif warmup >= steps:
        raise ConfigError(
            f"lr_scheduler.warmup_steps = {warmup}: expected fewer than training.steps = {steps}, so that the "
            f'{schedule.decay_type} decay reaches min_lr at the last step (or lr_scheduler.decay_type = "constant")'
        )
    if schedule.decay_type == "wsd":
        _check_wsd(schedule, steps)


def wsd_decay_steps(schedule: LRScheduler, steps: int) -> int:
    """The steps of a warmup-stable-decay schedule's final decay (ending at the last step)."""
    return schedule.decay_steps or max(1, round(schedule.decay_fraction * steps))


def _check_wsd(schedule: LRScheduler, steps: int) -> None:
    """The decay fits after the warmup: warmup, then (possibly no) stable steps, then the decay."""
    if not schedule.decay_steps and schedule.decay_fraction > 1:
        raise ConfigError(f"lr_scheduler.decay_fraction = {schedule.decay_fraction}: expected at most 1")
    decay = wsd_decay_steps(schedule, steps)
    if schedule.warmup_steps + decay > steps:
        which = "decay_steps" if schedule.decay_steps else f"decay_fraction = {schedule.decay_fraction} x {steps} ="
        raise ConfigError(
            f"lr_scheduler.{which} {decay}: expected at most training.steps - warmup_steps = "
            f"{steps} - {schedule.warmup_steps}, so that the decay starts after the warmup"
        )


def _check_initial_load(checkpoint: Checkpoint) -> None:
    for key in ("initial_load_optimizer", "initial_load_data"):
        if getattr(checkpoint, key) and not checkpoint.initial_load_path:
            raise ConfigError(f"checkpoint.{key} = true: expected checkpoint.initial_load_path to name the checkpoint")


def _check_sources(data: Data) -> None:
    if data.dataset != "sources":
        return
    if not data.sources:
        raise ConfigError(
            "data.sources is empty: expected at least one [[data.sources]] table when data.dataset = 'sources'"
        )
    names = [source.name for source in data.sources]
    for index, source in enumerate(data.sources):
        if not source.name or not source.path:
            raise ConfigError(
                f"data.sources[{index}]: name = {toml_value(source.name)}, path = {toml_value(source.path)}: "
                "expected both to be set"
            )
        if source.name in names[:index]:
            raise ConfigError(f"data.sources[{index}].name = {toml_value(source.name)}: expected names to be unique")
    _check_weights_never_all_zero(data)


def _check_weights_never_all_zero(data: Data) -> None:
    """Scheduled weights may reach 0, but never all at once: then no source would give a sample. The
    sum is linear between the schedules' points and flat outside them, so the points are enough."""
    points = sorted({point[0] for s in data.sources if isinstance(s.weight, list) for point in s.weight})
    for step in points:
        if sum(schedule_value(s.weight, step) for s in data.sources) == 0:
            raise ConfigError(f"data.sources: every weight is 0 at step {step}: expected at least one source above 0")


def _check_tasks(validation: Validation, dataset: str) -> None:
    names = [task.name for task in validation.tasks]
    for index, task in enumerate(validation.tasks):
        where = f"validation.tasks[{index}]"
        if task.name not in TASKS:
            raise ConfigError(f"{where}.name = {toml_value(task.name)}: expected one of {', '.join(TASKS)}")
        if task.name != BUILTIN and not task.path:
            raise ConfigError(f"{where}: name = {toml_value(task.name)}: expected a path to the task's rows")
        if task.name in names[:index]:
            raise ConfigError(f"{where}.name = {toml_value(task.name)}: expected names to be unique")
    if validation.tasks and not validation.eval_freq:
        raise ConfigError(
            "validation.tasks is set but validation.eval_freq = 0: expected the steps between evaluations"
        )
    if validation.tasks and dataset == "synthetic":  # no validation split, so no evaluation at all
        raise ConfigError("validation.tasks is set but data.dataset = 'synthetic': expected a real dataset")


def mesh_degrees(parallelism: Parallelism, world_size: int) -> tuple[int, int]:
    """(replicate, shard) degrees of the device mesh, with -1 standing for the rest of the ranks;
    their product must be the world size."""
    replicate, shard = parallelism.data_parallel_replicate_degree, parallelism.data_parallel_shard_degree
    if replicate == -1 and shard == -1:
        raise ConfigError(f"{_REPLICATE} = -1 and {_SHARD} = -1: expected at most one of them to be -1")
    if replicate == -1:
        replicate = world_size // shard if world_size % shard == 0 else 0
    if shard == -1:
        shard = world_size // replicate if world_size % replicate == 0 else 0
    if replicate * shard != world_size:
        raise ConfigError(
            f"{_REPLICATE} = {parallelism.data_parallel_replicate_degree} x {_SHARD} = "
            f"{parallelism.data_parallel_shard_degree}: expected a product equal to the {world_size} ranks"
        )
    return replicate, shard


def accumulation_steps(training: Training, world_size: int) -> int:
    """Micro-steps per optimizer step, so that every step sees global_batch_tokens tokens."""
    tokens_per_micro_step = training.micro_batch_size * training.seq_len * world_size
    if training.global_batch_tokens % tokens_per_micro_step:
        raise ConfigError(
            f"training.global_batch_tokens = {training.global_batch_tokens}: expected a multiple of "
            f"micro_batch_size x seq_len x ranks = {training.micro_batch_size} x {training.seq_len} x {world_size} "
            f"= {tokens_per_micro_step}"
        )
    return training.global_batch_tokens // tokens_per_micro_step


def check_devices(training: Training, processes_per_node: int, cuda_devices: int) -> None:
    """training.device against the CUDA devices a node has: a CUDA run needs one device per process."""
    device = training.device
    if device == "cuda" and cuda_devices == 0:
        raise ConfigError(
            'training.device = "cuda": expected a CUDA device, but this machine shows none (use "auto" or "cpu")'
        )
    uses_cuda = device == "cuda" or (device == "auto" and cuda_devices > 0)
    if uses_cuda and processes_per_node > cuda_devices:
        raise ConfigError(
            f"training.device = {toml_value(device)}: {processes_per_node} processes per node on "
            f'{cuda_devices} CUDA device(s): expected at most one process per device (or training.device = "cpu")'
        )


def check_attention(config: JobConfig, cuda_devices: int) -> None:
    """model.attention = "flash" needs the flash-attn package, a CUDA device and bfloat16."""
    if config.model.attention != "flash":
        return
    device = config.training.device
    on = "cuda" if device == "cuda" or (device == "auto" and cuda_devices > 0) else "cpu"
    if importlib.util.find_spec("flash_attn") is None:
        why = "the flash-attn package is not installed: expected pip install 'tinytitan[flash]' on a CUDA machine"
    elif on != "cuda":
        why = "flash-attn runs on CUDA only and this run is on the CPU"
    elif config.training.mixed_precision == "float32":
        why = 'flash-attn computes in bfloat16: expected training.mixed_precision = "auto" or "bfloat16"'
    else:
        return
    raise ConfigError(f'model.attention = "flash": {why} (or model.attention = "flex" / "sdpa")')


def check_runtime(config: JobConfig, world_size: int, processes_per_node: int, cuda_devices: int) -> None:
    """Every check that depends on the number of ranks and devices: the batch divides into the
    ranks' micro-batches, the mesh degrees multiply to the world size, and the devices are there."""
    check_devices(config.training, processes_per_node, cuda_devices)
    check_attention(config, cuda_devices)
    mesh_degrees(config.parallelism, world_size)
    accumulation_steps(config.training, world_size)
