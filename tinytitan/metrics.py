"""Throughput, model FLOPs utilisation, memory, progress (tokens seen, elapsed time, ETA), and the log
line: printed, and as TensorBoard scalars and Weights & Biases history.

FLOPs per token (forward + backward) = 6 * N + 12 * L * d * T, where N counts every parameter
except the input embedding (a lookup, not a matmul; a tied embedding is the output projection, so
it is counted, once), L is the number of layers, d the attention width (n_heads x head_dim) and T
the sequence length (the attention score and value matmuls). For TinyLlama-1.1B
at T = 2048 that is 7.31 GFLOP per token. MFU divides the achieved FLOP rate by the device's
dense bf16 peak from the table below; on an unknown device or on CPU no MFU is reported.
"""

import math
import resource
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tinytitan.models.llama import ModelArgs, Transformer, count_parameters

# Dense bf16 tensor-core peak FLOP/s by device name (matched as a substring of the CUDA name, in
# this order). From the vendors' data sheets, without sparsity.
PEAK_BF16_FLOPS = [
    ("H200", 989e12),
    ("GH200", 989e12),
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("H800", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
]


def flops_per_token(args: ModelArgs, num_params_without_embedding: int, seq_len: int) -> float:
    return 6 * num_params_without_embedding + 12 * args.n_layers * args.n_heads * args.head_dim * seq_len


def peak_flops_of(device_name: str) -> float | None:
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in device_name), None)


def peak_flops(device: torch.device) -> float | None:
    return peak_flops_of(torch.cuda.get_device_name(device)) if device.type == "cuda" else None


def memory_gib(device: torch.device) -> float:
    """Peak GPU memory allocated since the last call (CUDA), or the process's peak RSS (CPU)."""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        return peak / 2**30
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib * (1 if sys.platform != "darwin" else 1 / 1024) / 2**20


@dataclass
class Throughput:
    """Counts tokens between log lines and turns them into tokens/s and MFU (per device)."""

    flops_per_token: float
    peak_flops: float | None
    tokens: int = 0
    since: float = field(default_factory=time.perf_counter)

    @classmethod
    def of(cls, model: Transformer, seq_len: int, device: torch.device) -> "Throughput":
        without_embedding = count_parameters(model, exclude_embedding=True)
        return cls(flops_per_token(model.args, without_embedding, seq_len), peak_flops(device))

    def reset(self) -> None:
        self.tokens, self.since = 0, time.perf_counter()

    def report(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.since, 1e-9)
        values = {"tokens_per_second": self.tokens / elapsed}
        if self.peak_flops:
            values["mfu_percent"] = 100 * values["tokens_per_second"] * self.flops_per_token / self.peak_flops
        return values


class Progress:
    """Tokens seen, time elapsed and the estimated time left, from the wall time per step over the
    last `window` log intervals (a moving average: the first, slow steps are soon forgotten)."""

    def __init__(self, first_step: int, last_step: int, window: int = 10):
        self.last_step, self.start = last_step, time.perf_counter()
        self._previous = (first_step - 1, self.start)
        self._intervals: deque[tuple[int, float]] = deque(maxlen=window)

    def report(self, step: int, tokens_seen: int) -> dict[str, float]:
        now = time.perf_counter()
        steps, since = step - self._previous[0], now - self._previous[1]
        if steps > 0:
            self._intervals.append((steps, since))
        self._previous = (step, now)
        per_step = sum(t for _, t in self._intervals) / max(sum(n for n, _ in self._intervals), 1)
        return {"tokens_seen": tokens_seen, "elapsed_s": now - self.start, "eta_s": per_step * (self.last_step - step)}


def step_values(
    loss: torch.Tensor, grad_norm: torch.Tensor, lr: float, throughput: Throughput, device: torch.device
) -> dict[str, float]:
    """The numbers of a log line (`loss`: the step's mean loss over all ranks). `.item()` waits for
    the device: the only host synchronisation of a step (with the divergence guard off), and only on
    logging steps."""
    values = {
        "loss": loss.item(),
        "grad_norm": grad_norm.item(),
        "lr": lr,
        **throughput.report(),
        "memory_gib": memory_gib(device),
    }
    throughput.reset()
    return values


def add_record(records: list[dict], step: int, values: dict[str, float]) -> None:
    """What a step logged: merged into that step's record when it has one (validation after training)."""
    if records and records[-1]["step"] == step:
        records[-1].update(values)
    else:
        records.append({"step": step, **values})


class MetricsLogger:
    """Prints the log line and, when enabled, writes the same numbers as TensorBoard scalars and to
    Weights & Biases (`wandb`: a wandb_run.WandbRun); keeps what each step logged in `records`."""

    def __init__(
        self,
        tensorboard_dir: Path | None,
        quiet: bool = False,
        total_steps: int = 0,
        wandb=None,
        config: tuple[str, dict] | None = None,
    ):
        self._writer, self._quiet, self._total, self._wandb = None, quiet, total_steps, wandb
        self.records: list[dict[str, float]] = []
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(tensorboard_dir))
            write_run_description(self._writer, *(config or ("", {})))

    def log(self, step: int, values: dict[str, float]) -> None:
        add_record(self.records, step, values)
        if not self._quiet:
            where = f"step {step:>6}" + (f"/{self._total}" if self._total else "")
            print("  ".join([where] + [_format(name, value) for name, value in values.items()]), flush=True)
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(name, value, step)
        if self._wandb is not None:
            self._wandb.log(step, values)

    def event(self, step: int, text: str) -> None:
        """Something that happened (a skipped step, a loss spike): printed, and a TensorBoard text."""
        if not self._quiet:
            print(f"step {step:>6}  {text}", flush=True)
        if self._writer is not None:
            self._writer.add_text("events", text, step)

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        """TensorBoard scalars and records, without a printed line (counters such as data/<source>/tokens_seen)."""
        add_record(self.records, step, values)
        for name, value in values.items() if self._writer is not None else ():
            self._writer.add_scalar(name, value, step)
        if self._wandb is not None and values:
            self._wandb.log(step, values)

    def loss_summary(self) -> str | None:
        """The first and the last logged loss, for the closing line of a run (None if none was logged)."""
        logged = [record for record in self.records if "loss" in record]
        if not logged:
            return None
        first, last = logged[0], logged[-1]
        return f"loss {first['loss']:.3f} at step {first['step']}, {last['loss']:.3f} at step {last['step']}"

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._wandb is not None:
            self._wandb.close()


def write_run_description(writer, config_toml: str, config: dict[str, dict]) -> None:
    """The resolved config as text (the run's config.toml) and as hyperparameters (its scalar keys,
    `section.key`), and a chart that draws the training and the validation loss together."""
    from torch.utils.tensorboard.summary import hparams

    if config_toml:  # indented: Markdown shows it as code
        writer.add_text("config", "".join(f"    {line}\n" for line in config_toml.splitlines()))
    if config:
        flat = {
            f"{section}.{key}": value
            for section, keys in config.items()
            for key, value in keys.items()
            if isinstance(value, (int, float, str, bool))
        }
        for summary in hparams(flat, {"loss": math.nan}):  # in this run's own event file, not a sub-run
            writer.file_writer.add_summary(summary)
    writer.add_custom_scalars({"loss": {"training and validation": ["Multiline", ["^loss$", r"^val/.*/loss$"]]}})


_FORMATS = {
    "loss": "loss {:.4f}",
    "grad_norm": "grad_norm {:.3f}",
    "lr": "lr {:.3e}",
    "tokens_per_second": "tok/s {:,.0f}",
    "mfu_percent": "mfu {:.1f}%",
    "memory_gib": "mem {:.2f}GiB",
    "tokens_seen": "tokens {:,.0f}",
}
_DURATIONS = {"elapsed_s": "elapsed", "eta_s": "eta"}


def duration(seconds: float) -> str:
    """1h02m03s, 4m05s, 6s."""
    seconds = round(seconds)
    hours, minutes = divmod(seconds // 60, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{seconds % 60:02d}s"
    return f"{minutes}m{seconds % 60:02d}s" if minutes else f"{seconds}s"


def _format(name: str, value: float) -> str:
    if name in _DURATIONS:
        return f"{_DURATIONS[name]} {duration(value)}"
    if name.startswith("time/"):  # time/<phase>_ms per step, time/<phase>_s in all
        phase, unit = name[5:].rsplit("_", 1)
        return f"{phase} {value:.0f}ms" if unit == "ms" else f"{phase} {value:.1f}s"
    if name.endswith("/loss"):  # val/<source>/loss, val/<source>/perplexity
        return f"{name} {value:.4f}"
    if name.endswith("/perplexity"):
        return f"{name} {value:.2f}"
    return _FORMATS.get(name, name + " {:.4g}").format(value)
