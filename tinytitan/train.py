"""The training loop: `python -m tinytitan.train --job.config_file=FILE [--section.key=value ...]`.

It wires config, data, model, optimizer and metrics together and owns none of their internals.
"""

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tinytitan.config import JobConfig, help_text, load_config, to_toml, wants_help
from tinytitan.data.builtin_corpus import prepare_builtin_corpus
from tinytitan.data.loader import DataLoader
from tinytitan.data.sources import Source, check_sources, training_stream, validation_streams
from tinytitan.data.streams import SampleStream, Stream, SyntheticStream
from tinytitan.data.tokenizer import Tokenizer
from tinytitan.errors import UserError, run_entry_point
from tinytitan.metrics import MetricsLogger, flops_per_token, memory_gib, peak_flops
from tinytitan.models.llama import FLAVORS, ModelArgs, build_model, count_parameters
from tinytitan.optim import build_lr_scheduler, build_optimizer


def select_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("training.device = \"cuda\": expected a CUDA device, but torch sees none (use \"auto\" or \"cpu\")")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def check_single_process() -> None:
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size > 1:
        raise UserError(f"WORLD_SIZE={world_size}: this version trains in one process; run with NGPU=1")


def resolve_sources(config: JobConfig) -> tuple[list[Source], Tokenizer | None]:
    """The data sources to mix, and the tokenizer they must have been made with (if one is named)."""
    data = config.data
    if data.dataset == "builtin":
        corpus = prepare_builtin_corpus(data.cache_dir, data.tokenizer_path or None)
        sources = [Source(name, path, corpus.weights[name]) for name, path in corpus.sources.items()]
        return sources, Tokenizer(corpus.tokenizer_path)
    sources = [Source(s.name, Path(s.path).expanduser(), s.weight) for s in data.sources]
    return sources, Tokenizer(data.tokenizer_path) if data.tokenizer_path else None


def build_streams(config: JobConfig, args: ModelArgs) -> tuple[Stream, dict[str, SampleStream], str]:
    """The global training stream, the validation stream of each source, and a few words on them."""
    seq_len, seed = config.training.seq_len, config.training.seed
    if config.data.dataset == "synthetic":
        return SyntheticStream(args.vocab_size, seq_len, seed=(seed,)), {}, f"synthetic tokens over {args.vocab_size} ids"
    sources, tokenizer = resolve_sources(config)
    check_sources(sources, args.vocab_size, tokenizer)
    mix = ", ".join(f"{s.name} {s.weight / sum(x.weight for x in sources):.1%}" for s in sources)
    return training_stream(sources, seq_len, seed), validation_streams(sources, seq_len), f"sources {mix}"


def gradient_accumulation_steps(config: JobConfig, world_size: int) -> int:
    """Micro-steps per optimizer step, so that every step sees global_batch_tokens tokens."""
    t = config.training
    tokens_per_micro_step = t.micro_batch_size * t.seq_len * world_size
    if t.global_batch_tokens % tokens_per_micro_step:
        raise UserError(
            f"training.global_batch_tokens = {t.global_batch_tokens}: expected a multiple of micro_batch_size "
            f"x seq_len x ranks = {t.micro_batch_size} x {t.seq_len} x {world_size} = {tokens_per_micro_step}")
    return t.global_batch_tokens // tokens_per_micro_step


def autocast_context(config: JobConfig, device: torch.device):
    precision = config.training.mixed_precision
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def start_run_folder(config: JobConfig) -> Path:
    """Print the resolved config and save it as <run folder>/config.toml."""
    run_dir = Path(config.job.dump_folder).expanduser() / config.job.name
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = to_toml(config)
    print(f"resolved config (saved to {run_dir / 'config.toml'}):\n{resolved}", flush=True)
    (run_dir / "config.toml").write_text(resolved)
    return run_dir


def build_training_model(args: ModelArgs, config: JobConfig, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(config.training.seed)
    model = build_model(args, device)
    if config.compile.enable:
        for block in model.layers.values():
            block.compile(fullgraph=True)  # in place: parameter names stay unchanged
    return model


@torch.no_grad()
def evaluate(model, streams: dict[str, SampleStream], config: JobConfig, device, autocast) -> dict[str, float]:
    """Mean loss (and perplexity) of eval_steps micro-batches of each source's validation split."""
    model.eval()
    values = {}
    for name, stream in streams.items():
        loader = DataLoader(stream, config.training.micro_batch_size, num_workers=config.data.num_workers, device=device)
        total = torch.zeros((), device=device)
        for _ in range(config.validation.eval_steps):
            inputs, labels = next(loader)
            with autocast:
                total += model(inputs, labels).float()
        loss = total.item() / config.validation.eval_steps
        values[f"val/{name}/loss"] = loss
        values[f"val/{name}/perplexity"] = math.exp(min(loss, 50.0))
    model.train()
    return values


def train_step(model, optimizer, scheduler, loader, accumulation: int, autocast, max_norm: float):
    """One optimizer step over `accumulation` micro-batches; returns (mean loss, grad norm) as
    tensors, without waiting for the device."""
    step_loss = None
    for _ in range(accumulation):
        inputs, labels = next(loader)
        with autocast:
            loss = model(inputs, labels) / accumulation
        loss.backward()
        step_loss = loss.detach() if step_loss is None else step_loss + loss.detach()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return step_loss, grad_norm


@dataclass
class Throughput:
    """Counts tokens between log lines and turns them into tokens/s and MFU."""

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


def train(config: JobConfig) -> list[dict[str, float]]:
    """Train as configured; returns what each log line showed (step, loss, grad_norm, lr, ...)."""
    check_single_process()
    device = select_device(config.training.device)
    run_dir = start_run_folder(config)
    args = FLAVORS[config.model.flavor]
    stream, validation, data_summary = build_streams(config, args)
    accumulation = gradient_accumulation_steps(config, world_size=1)
    model = build_training_model(args, config, device)
    optimizer = build_optimizer(model, config.optimizer, device)
    scheduler = build_lr_scheduler(optimizer, config.lr_scheduler, config.training.steps)
    loader = DataLoader(stream, config.training.micro_batch_size, num_workers=config.data.num_workers, device=device)
    logger = MetricsLogger(run_dir / "tb" if config.metrics.enable_tensorboard else None)
    t = config.training
    throughput = Throughput(flops_per_token(args, count_parameters(model, exclude_embedding=True), t.seq_len), peak_flops(device))
    print(f"model {config.model.flavor}: {count_parameters(model):,} parameters on {device}; data: {data_summary}; "
          f"{accumulation} micro-steps of {t.micro_batch_size} x {t.seq_len} tokens per step", flush=True)
    autocast, max_norm = autocast_context(config, device), t.max_norm or math.inf  # inf: measure, clip nothing
    records, start = [], time.perf_counter()
    throughput.reset()
    for step in range(1, t.steps + 1):
        lr = optimizer.param_groups[0]["lr"]
        loss, grad_norm = train_step(model, optimizer, scheduler, loader, accumulation, autocast, max_norm)
        throughput.tokens += accumulation * t.micro_batch_size * t.seq_len
        if step == 1 or step % config.metrics.log_freq == 0 or step == t.steps:
            # .item() waits for the device: the only host sync of a step, and only on logging steps.
            values = {"loss": loss.item(), "grad_norm": grad_norm.item(), "lr": lr, **throughput.report(),
                      "memory_gib": memory_gib(device)}
            if not math.isfinite(values["loss"]):
                raise RuntimeError(f"loss is {values['loss']} at step {step}")
            logger.log(step, values)
            records.append({"step": step, **values})
            throughput.reset()
        if validation and config.validation.eval_freq and step % config.validation.eval_freq == 0:
            values = evaluate(model, validation, config, device, autocast)
            logger.log(step, values)
            if records and records[-1]["step"] == step:
                records[-1].update(values)
            else:
                records.append({"step": step, **values})
            throughput.reset()  # evaluation time is not training throughput
    loader.close()
    logger.close()
    print(f"done: {t.steps} steps in {time.perf_counter() - start:.0f}s; loss {records[0]['loss']:.3f} at step 1, "
          f"{records[-1]['loss']:.3f} at step {t.steps}; run folder {run_dir}", flush=True)
    return records


def main(argv: list[str]) -> int:
    if wants_help(argv):
        print(help_text())
        return 0
    train(load_config(argv))
    return 0


if __name__ == "__main__":
    run_entry_point(main)
