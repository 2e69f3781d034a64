"""Throughput, model FLOPs utilisation, memory, and the log line plus TensorBoard scalars.

FLOPs per token (forward + backward) = 6 * N + 12 * L * d * T, where N counts every parameter
except the input embedding (a lookup, not a matmul), L is the number of layers, d the model
dimension and T the sequence length (the attention score and value matmuls). For TinyLlama-1.1B
at T = 2048 that is 7.31 GFLOP per token. MFU divides the achieved FLOP rate by the device's
dense bf16 peak from the table below; on an unknown device or on CPU no MFU is reported.
"""

import resource
import sys
from pathlib import Path

import torch

from tinytitan.models.llama import ModelArgs

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
    return 6 * num_params_without_embedding + 12 * args.n_layers * args.dim * seq_len


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


class MetricsLogger:
    """Prints the log line and, when enabled, writes the same numbers as TensorBoard scalars."""

    def __init__(self, tensorboard_dir: Path | None, quiet: bool = False):
        self._writer, self._quiet = None, quiet
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(tensorboard_dir))

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self._quiet:
            print("  ".join([f"step {step:>6}"] + [_format(name, value) for name, value in values.items()]), flush=True)
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(name, value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


_FORMATS = {
    "loss": "loss {:.4f}",
    "grad_norm": "grad_norm {:.3f}",
    "lr": "lr {:.3e}",
    "tokens_per_second": "tok/s {:,.0f}",
    "mfu_percent": "mfu {:.1f}%",
    "memory_gib": "mem {:.2f}GiB",
}


def _format(name: str, value: float) -> str:
    if name.endswith("/loss"):  # val/<source>/loss, val/<source>/perplexity
        return f"{name} {value:.4f}"
    if name.endswith("/perplexity"):
        return f"{name} {value:.2f}"
    return _FORMATS.get(name, name + " {:.4g}").format(value)
