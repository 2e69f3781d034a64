"""The training loop: `python -m tinytitan.train --job.config_file=FILE [--section.key=value ...]`.

It wires config, data, model, parallelism, optimizer, checkpoints and metrics together and owns
none of their internals. Run it in one process, or in several with torchrun (run_train.sh).
"""

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor

from tinytitan.checkpoint import Checkpointer, ModelState, OptimizerState, Preemption, RNGState, TrainState
from tinytitan.config import JobConfig, help_text, load_config, to_toml, wants_help
from tinytitan.data.loader import DataLoader
from tinytitan.data.sources import build_streams
from tinytitan.data.streams import SampleStream
from tinytitan.errors import UserError, run_entry_point
from tinytitan.kernels.cross_entropy import IGNORE_INDEX
from tinytitan.metrics import MetricsLogger, flops_per_token, memory_gib, peak_flops
from tinytitan.models.llama import FLAVORS, ModelArgs, build_model, count_parameters
from tinytitan.optim import build_lr_scheduler, build_optimizer
from tinytitan.parallel import (
    ParallelEnv,
    all_reduce_mean,
    all_reduce_sum,
    apply_activation_checkpointing,
    apply_compile,
    apply_fsdp,
    close_parallel,
    init_parallel,
    main_process_first,
)


def gradient_accumulation_steps(config: JobConfig, world_size: int) -> int:
    """Micro-steps per optimizer step, so that every step sees global_batch_tokens tokens."""
    t = config.training
    tokens_per_micro_step = t.micro_batch_size * t.seq_len * world_size
    if t.global_batch_tokens % tokens_per_micro_step:
        raise UserError(
            f"training.global_batch_tokens = {t.global_batch_tokens}: expected a multiple of micro_batch_size "
            f"x seq_len x ranks = {t.micro_batch_size} x {t.seq_len} x {world_size} = {tokens_per_micro_step}"
        )
    return t.global_batch_tokens // tokens_per_micro_step


def uses_bf16(config: JobConfig, device: torch.device) -> bool:
    precision = config.training.mixed_precision
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def autocast_context(config: JobConfig, device: torch.device):
    if not uses_bf16(config, device):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def start_run_folder(config: JobConfig, env: ParallelEnv) -> Path:
    """Print the resolved config and save it as <run folder>/config.toml (rank 0)."""
    run_dir = Path(config.job.dump_folder).expanduser() / config.job.name
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        resolved = to_toml(config)
        print(f"resolved config (saved to {run_dir / 'config.toml'}):\n{resolved}", flush=True)
        (run_dir / "config.toml").write_text(resolved)
    return run_dir


def select_kernels(choice: str, device: torch.device) -> str:
    """Triton on CUDA (when installed), PyTorch elsewhere; Triton on a CPU only under its interpreter."""
    from tinytitan.kernels._common import INTERPRET, triton

    if choice == "auto":
        return "triton" if device.type == "cuda" and triton is not None else "torch"
    if choice == "triton" and (triton is None or (device.type != "cuda" and not INTERPRET)):
        why = "Triton is not installed" if triton is None else f"the device is {device.type}"
        raise UserError(
            f'model.kernels = "triton": {why}: expected a CUDA device with Triton '
            "(or TRITON_INTERPRET=1, the slow interpreter used by the tests)"
        )
    return choice


def build_training_model(args: ModelArgs, config: JobConfig, env: ParallelEnv) -> torch.nn.Module:
    """Initialise the full model identically on every rank (so any number of ranks starts from the
    same weights), then checkpoint activations, compile blocks, and shard."""
    torch.manual_seed(config.training.seed)
    model = build_model(args, env.device, select_kernels(config.model.kernels, env.device))
    apply_activation_checkpointing(
        model, config.activation_checkpoint.mode, config.activation_checkpoint.selective_every
    )
    if config.compile.enable:
        apply_compile(model)
    if env.mesh is not None:
        apply_fsdp(model, env, config, uses_bf16(config, env.device))
    return model


@torch.no_grad()
def evaluate(
    model, streams: dict[str, SampleStream], config: JobConfig, env: ParallelEnv, autocast
) -> dict[str, float]:
    """Mean loss (and perplexity) over eval_steps micro-batches per rank of each validation split."""
    model.eval()
    values = {}
    for name, stream in streams.items():
        loader = DataLoader(stream, config.training.micro_batch_size, env.rank, env.world_size, device=env.device)
        total = torch.zeros((), device=env.device)
        for _ in range(config.validation.eval_steps):
            inputs, labels = next(loader)
            with autocast:
                total += model(inputs, labels).float()
        loss = all_reduce_mean(total).item() / config.validation.eval_steps
        values[f"val/{name}/loss"] = loss
        values[f"val/{name}/perplexity"] = math.exp(min(loss, 50.0))
    model.train()
    return values


def train_step(model, optimizer, scheduler, micro_batches, autocast, max_norm: float, world_size: int):
    """One optimizer step; returns (this rank's share of the mean loss, grad norm) as tensors,
    without waiting for the device. The gradient is that of the mean loss over every non-ignored
    label of the step on all ranks: each micro-batch's mean is weighted by its share of the global
    label count (times world_size, since FSDP averages gradients over ranks)."""
    counts = [(labels != IGNORE_INDEX).sum() for _, labels in micro_batches]
    global_count = all_reduce_sum(torch.stack(counts).sum()).clamp(min=1)
    step_loss = torch.zeros((), device=counts[0].device)
    for (inputs, labels), count in zip(micro_batches, counts):
        with autocast:
            loss = model(inputs, labels) * (count * world_size / global_count)
        loss.backward()
        step_loss += loss.detach()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if isinstance(grad_norm, DTensor):
        grad_norm = grad_norm.full_tensor()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return step_loss, grad_norm


@dataclass
class Throughput:
    """Counts tokens between log lines and turns them into tokens/s and MFU (per device)."""

    flops_per_token: float
    peak_flops: float | None
    tokens: int = 0
    since: float = field(default_factory=time.perf_counter)

    def reset(self) -> None:
        self.tokens, self.since = 0, time.perf_counter()

    def report(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.since, 1e-9)
        values = {"tokens_per_second": self.tokens / elapsed}
        if self.peak_flops:
            values["mfu_percent"] = 100 * values["tokens_per_second"] * self.flops_per_token / self.peak_flops
        return values


def add_record(records: list[dict], step: int, values: dict[str, float]) -> None:
    """What a step logged: merged into that step's record when it has one (validation after training)."""
    if records and records[-1]["step"] == step:
        records[-1].update(values)
    else:
        records.append({"step": step, **values})


def step_values(loss, grad_norm, lr: float, throughput: Throughput, device: torch.device) -> dict[str, float]:
    """The numbers of a log line. `.item()` waits for the device: the only host synchronisation
    of a step, and only on logging steps."""
    values = {
        "loss": all_reduce_mean(loss).item(),
        "grad_norm": grad_norm.item(),
        "lr": lr,
        **throughput.report(),
        "memory_gib": memory_gib(device),
    }
    if not math.isfinite(values["loss"]):
        raise RuntimeError(f"loss is {values['loss']} at this step: training diverged")
    throughput.reset()
    return values


def train(config: JobConfig) -> list[dict[str, float]]:
    """Train as configured; returns what each log line showed (step, loss, grad_norm, lr, ...)."""
    env = init_parallel(config)
    try:
        return _train(config, env)
    finally:
        close_parallel(env)


def _train(config: JobConfig, env: ParallelEnv) -> list[dict[str, float]]:
    t = config.training
    run_dir = start_run_folder(config, env)
    args = FLAVORS[config.model.flavor]
    with main_process_first(env):  # rank 0 prepares the built-in corpus once
        stream, validation, data_summary = build_streams(config.data, args.vocab_size, t.seq_len, t.seed)
    accumulation = gradient_accumulation_steps(config, env.world_size)
    model = build_training_model(args, config, env)
    optimizer = build_optimizer(model, config.optimizer, env.device)
    scheduler = build_lr_scheduler(optimizer, config.lr_scheduler, t.steps)
    loader = DataLoader(stream, t.micro_batch_size, env.rank, env.world_size, config.data.num_workers, env.device)
    train_state = TrainState()
    checkpointer = Checkpointer(
        run_dir / "checkpoints",
        config.checkpoint,
        {
            "model": ModelState(model),
            "optimizer": OptimizerState(model, optimizer),
            "lr_scheduler": scheduler,
            "dataloader": loader,
            "train_state": train_state,
            "rng": RNGState(),
        },
        env.cpu_group,
    )
    checkpointer.resume()
    preemption = Preemption(env.cpu_group)
    logger = MetricsLogger(
        run_dir / "tb" if config.metrics.enable_tensorboard and env.is_main else None, quiet=not env.is_main
    )
    throughput = Throughput(
        flops_per_token(args, count_parameters(model, exclude_embedding=True), t.seq_len), peak_flops(env.device)
    )
    if env.is_main:
        print(
            f"model {config.model.flavor}: {count_parameters(model):,} parameters, "
            f"{model.kernels_name} kernels, {env.world_size} rank(s) on {env.device.type}; data: "
            f"{data_summary}; {accumulation} micro-steps of {t.micro_batch_size} x {t.seq_len} tokens per rank "
            "per step",
            flush=True,
        )
    autocast, max_norm = autocast_context(config, env.device), t.max_norm or math.inf  # inf: measure, clip nothing
    records, start, first_step = [], time.perf_counter(), train_state.step + 1
    for step in range(first_step, t.steps + 1):
        lr = optimizer.param_groups[0]["lr"]
        micro_batches = [next(loader) for _ in range(accumulation)]
        loss, grad_norm = train_step(model, optimizer, scheduler, micro_batches, autocast, max_norm, env.world_size)
        train_state.step, train_state.tokens_seen = step, train_state.tokens_seen + t.global_batch_tokens
        throughput.tokens += accumulation * t.micro_batch_size * t.seq_len
        if step == first_step or step % config.metrics.log_freq == 0 or step == t.steps:
            values = step_values(loss, grad_norm, lr, throughput, env.device)
            logger.log(step, values)
            add_record(records, step, values)
        if validation and config.validation.eval_freq and step % config.validation.eval_freq == 0:
            values = evaluate(model, validation, config, env, autocast)
            logger.log(step, values)
            add_record(records, step, values)
            throughput.reset()  # evaluation time is not training throughput
        checkpointer.publish_finished()
        preempted = preemption.agreed()
        if checkpointer.due(step, t.steps) or (preempted and config.checkpoint.enable):
            checkpointer.save(step)
        if preempted:
            if env.is_main:
                print(f"preempted: stopping after step {step}", flush=True)
            break
    checkpointer.wait()
    if config.checkpoint.export_dtype and train_state.step == t.steps:
        checkpointer.export_model(model, train_state.step, getattr(torch, config.checkpoint.export_dtype))
    loader.close()
    logger.close()
    logged = [record for record in records if "loss" in record]
    if env.is_main and logged:
        print(
            f"done: steps {first_step}..{train_state.step} in {time.perf_counter() - start:.0f}s; loss "
            f"{logged[0]['loss']:.3f} at step {logged[0]['step']}, {logged[-1]['loss']:.3f} at step "
            f"{logged[-1]['step']}; run folder {run_dir}",
            flush=True,
        )
    return records


def main(argv: list[str]) -> int:
    if wants_help(argv):
        print(help_text())
        return 0
    train(load_config(argv))
    return 0


if __name__ == "__main__":
    run_entry_point(main)
