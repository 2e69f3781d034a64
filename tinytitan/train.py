"""The training loop: `python -m tinytitan.train --job.config_file=FILE [--section.key=value ...]`.

It wires config, data, model, parallelism, optimizer, checkpoints and metrics together and owns
none of their internals. Run it in one process, or in several with torchrun (run_train.sh).
"""

import math
import os
import time

import torch

from tinytitan.checkpoint import Checkpointer, Preemption, TrainState, training_states
from tinytitan.config import (
    JobConfig,
    accumulation_steps,
    check_runtime,
    describe_shape,
    help_text,
    load_config,
    model_args,
    shape_source,
    to_toml,
    wants_help,
    with_shape,
)
from tinytitan.data.loader import DataLoader
from tinytitan.data.sources import build_streams, document_bos_id, tokenizer_vocab_size, with_chat_template
from tinytitan.divergence import DivergenceGuard, poison_gradient
from tinytitan.dtypes import torch_dtype
from tinytitan.errors import run_entry_point
from tinytitan.evaluation.suite import load_validation_tasks
from tinytitan.files import atomic_write_text
from tinytitan.gc_control import restore_automatic_gc
from tinytitan.kernels.cross_entropy import IGNORE_INDEX
from tinytitan.models.attention import AttentionOptions
from tinytitan.models.llama import build_model, count_parameters, select_kernels
from tinytitan.monitor import Monitor
from tinytitan.optim import build_lr_scheduler, build_optimizer
from tinytitan.parallel import Precision, all_reduce_sum, is_main_process, main_process_first, parallel_env, parallelize
from tinytitan.run_folder import RunFolder
from tinytitan.validation import evaluate


def train(config: JobConfig) -> list[dict[str, float]]:
    """Train as configured; returns what each log line showed (step, loss, grad_norm, lr, ...)."""
    world_size, per_node = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    check_runtime(config, world_size, per_node, torch.cuda.device_count())  # before any folder, corpus or group
    with parallel_env(config.training.device, config.parallelism) as env:
        try:
            return _train(config, env)
        finally:
            restore_automatic_gc()  # also when training stops with an error (training.gc_freq turned it off)


def _train(config: JobConfig, env) -> list[dict[str, float]]:
    t, run = config.training, RunFolder.of_job(config.job.dump_folder, config.job.name)
    if is_main_process():
        print(f"resolved config (the model's shape is resolved on the model line):\n{to_toml(config)}", flush=True)
    with main_process_first():  # rank 0 prepares the built-in corpus once
        # vocab_size 0: the tokenizer's; no flavor: initial_load_path's saved arguments, if any
        args = model_args(config.model, tokenizer_vocab_size(config.data), config.checkpoint)
        stream, validation, data_summary = build_streams(
            config.data, args.vocab_size, t.seq_len, t.seed, t.global_batch_tokens // t.seq_len
        )
        config.data = with_chat_template(config.data)  # the saved config.toml names it for an export
        per_document, bos_id = config.data.document_positions == "per_document", document_bos_id(config.data)
        attention = AttentionOptions(config.model.attention, config.data.document_masking, per_document, bos_id)
    tasks = load_validation_tasks(config.validation.tasks, config.data, args.max_seq_len)  # a bad file fails here
    config.model = with_shape(config.model, args)  # the saved config.toml says the shape itself
    accumulation, precision = accumulation_steps(t, env.world_size), Precision.of(t.mixed_precision, env.device)
    torch.manual_seed(t.seed)  # the full model, initialised alike on every rank: any number of ranks starts alike
    model = build_model(args, env.device, select_kernels(config.model.kernels, env.device), attention)
    parallelize(model, env, precision, config.activation_checkpoint, config.compile, config.parallelism)
    optimizer = build_optimizer(model, config.optimizer, env.device)
    scheduler = build_lr_scheduler(optimizer, config.lr_scheduler, t.steps)
    loader = DataLoader(stream, t.micro_batch_size, env.rank, env.world_size, config.data.num_workers, env.device)
    train_state = TrainState()
    states = training_states(model, optimizer, scheduler, loader, train_state)
    checkpointer = Checkpointer(run, config.checkpoint, states, env.cpu_group)
    resumed_step = checkpointer.resume()
    if is_main_process():  # only once the checkpoint accepted these settings: a refused resume keeps the old file
        run.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run.config, to_toml(config))  # with the resolved shape
        print(f"resolved config saved to {run.config}", flush=True)
    if checkpointer.finished(resumed_step, t.steps):
        loader.close()
        return []
    preemption = Preemption(env.cpu_group)
    if is_main_process():
        print(
            f"model of {shape_source(config.model, config.checkpoint)} ({describe_shape(args)}): "
            f"{count_parameters(model):,} parameters, {model.kernels_name} kernels, {attention.describe()}, "
            f"{env.world_size} rank(s) on {env.device.type}; data: {data_summary}; {accumulation} micro-steps of "
            f"{t.micro_batch_size} x {t.seq_len} tokens per rank per step",
            flush=True,
        )
    first_step, guard = train_state.step + 1, DivergenceGuard(t.skip_nonfinite_steps, run, env.rank)
    monitor = Monitor(config, run, env, model, first_step, guard.enabled)  # log line, TensorBoard, W&B, profiler
    max_norm, start = t.max_norm or math.inf, time.perf_counter()  # inf: measure the norm, clip nothing
    for step in range(first_step, t.steps + 1):
        lr = optimizer.param_groups[0]["lr"]
        with monitor.step(step) as timer:
            micro_batches = [next(loader) for _ in range(accumulation)]
            timer.mark("data")
            loss, grad_norm = forward_backward(model, micro_batches, precision, max_norm, step in guard.nan_steps)
            timer.mark("forward_backward")
            skipped = guard.skips(step, loss, grad_norm)  # the same on every rank
            optimizer_step(optimizer, scheduler, skipped)
            timer.mark("optimizer")
        train_state.step, train_state.tokens_seen = step, train_state.tokens_seen + t.global_batch_tokens
        if skipped:
            monitor.event(step, f"skipped: non-finite loss or gradient norm ({guard.skipped} step(s) skipped so far)")
        monitor.after_step(step, loss, grad_norm, lr, train_state.tokens_seen, loader.source_counters)
        if validation and config.validation.eval_freq and step % config.validation.eval_freq == 0:
            with monitor.timer.phase("validation"):
                values = evaluate(model, validation, config.validation, t.micro_batch_size, env, precision, tasks)
            monitor.validation(step, values)
        checkpointer.publish_finished()
        preempted = preemption.agreed()
        if checkpointer.due(step, t.steps) or (preempted and config.checkpoint.enable):
            with monitor.timer.phase("checkpoint"):
                checkpointer.save(step)
        if preempted:
            if is_main_process():
                print(f"preempted: stopping after step {step}", flush=True)
            break
    checkpointer.wait()
    if config.checkpoint.export_dtype and train_state.step == t.steps:
        checkpointer.export_model(model, train_state.step, torch_dtype(config.checkpoint.export_dtype))
    loader.close()
    monitor.close()
    losses, steps = monitor.logger.loss_summary(), f"{first_step}..{train_state.step}"
    if is_main_process() and losses:
        print(f"done: steps {steps} in {time.perf_counter() - start:.0f}s; {losses}; run folder {run.root}", flush=True)
    return monitor.logger.records


def forward_backward(model, micro_batches, precision: Precision, max_norm: float, poison: bool = False):
    """The gradient of one optimizer step, clipped; returns (this rank's part of the step's mean
    loss, grad norm) as tensors, without waiting for the device. The step's loss is the mean over
    every non-ignored label of all its micro-batches on all ranks. FSDP sums the ranks' gradients without dividing them
    (parallel.apply_fsdp), so each micro-batch adds its summed loss divided by the step's global
    label count, and the sum over micro-batches and ranks is the gradient of that mean."""
    counts = [(labels != IGNORE_INDEX).sum() for _, labels in micro_batches]
    global_label_count = all_reduce_sum(torch.stack(counts).sum()).clamp(min=1)
    step_loss = torch.zeros((), device=counts[0].device)
    for index, ((inputs, labels), count) in enumerate(zip(micro_batches, counts)):
        model.set_requires_gradient_sync(index == len(micro_batches) - 1)  # reduce-scatter once, after the last
        with precision.autocast():
            summed_loss = model(inputs, labels) * count  # the model returns the mean over this micro-batch's labels
            loss = summed_loss / global_label_count
        loss.backward()
        step_loss += loss.detach()
    if poison:
        poison_gradient(model)  # the divergence guard's test hook
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm).full_tensor()  # of all ranks' shards
    return step_loss, grad_norm


def optimizer_step(optimizer, scheduler, skip: bool) -> None:
    """Apply the gradient, unless the divergence guard skips the step; the lr schedule advances
    either way, so the lr stays a function of the step."""
    if not skip:
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def main(argv: list[str]) -> int:
    if wants_help(argv):
        print(help_text())
        return 0
    train(load_config(argv))
    return 0


if __name__ == "__main__":
    run_entry_point(main)
