"""What the Triton kernels share: the optional Triton import, input guards and launch sizes.

Triton is a Linux-only dependency, but the plain-PyTorch references beside the kernels are what the
model calls by default, so every kernel file must still import where Triton is missing: `jit`
then leaves the kernel an ordinary (never launched) function and `require_triton` says why.

Without CUDA the kernels run under the Triton interpreter (TRITON_INTERPRET=1, set before triton is
first imported). Triton reads that switch when a kernel is decorated, so it is read here once too.
"""

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where Triton is not installed
    triton = None

    class tl:  # a stand-in, so that the kernels' `tl.constexpr` annotations still evaluate
        constexpr = None


INTERPRET = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")
FLOAT_DTYPES = (torch.float32, torch.bfloat16)  # what the kernels are tested with
INDEX_DTYPES = (torch.int32, torch.int64)


def jit(fn):
    """`triton.jit`, or the function unchanged where Triton is not installed."""
    return fn if triton is None else triton.jit(fn)


def require_triton(what: str) -> None:
    if triton is None:
        raise RuntimeError(f"{what} needs Triton, which is not installed (it is Linux-only); use the reference instead")


def _is_dtensor(t: torch.Tensor) -> bool:
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def check_tensor(name: str, t, *, dtypes=FLOAT_DTYPES, ndim: int | None = None, min_ndim: int | None = None) -> None:
    """Raise a ValueError naming `name`, what it is and what was expected, unless `t` is a tensor
    that a kernel can take: one of `dtypes`, of the given rank, on CUDA (any device under the
    interpreter) and not a sharded DTensor."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} is a {type(t).__name__}: expected a torch.Tensor")
    if _is_dtensor(t):
        raise ValueError(
            f"{name} is a DTensor {tuple(t.shape)}: expected a plain tensor; call the kernel inside the "
            "forward of the FSDP-wrapped module that owns the parameter, where it is gathered"
        )
    if t.dtype not in dtypes:
        expected = " or ".join(str(d) for d in dtypes)
        raise ValueError(f"{name} has dtype {t.dtype}: expected {expected}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} has shape {tuple(t.shape)}: expected {ndim} dimensions")
    if min_ndim is not None and t.dim() < min_ndim:
        raise ValueError(f"{name} has shape {tuple(t.shape)}: expected at least {min_ndim} dimension(s)")
    if not (t.is_cuda or INTERPRET):
        raise ValueError(
            f"{name} is on {t.device}: expected a CUDA tensor (without CUDA, set TRITON_INTERPRET=1 "
            "before triton is imported to run the kernels under the Triton interpreter)"
        )


def check_same_device(**tensors: torch.Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{name} on {device}" for name, device in devices.items())
        raise ValueError(f"{listed}: expected all on one device")


def check_shape(name: str, t: torch.Tensor, expected: tuple, why: str) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name} has shape {tuple(t.shape)}: expected {tuple(expected)} ({why})")


def last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    """`t` itself when its last dimension is contiguous (the kernels take any other strides), else a copy."""
    return t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous()


def num_warps(block: int) -> int:
    """More warps for longer rows, so each thread holds a bounded number of elements."""
    return 4 if block <= 2048 else 8 if block <= 8192 else 16


def persistent_programs(device: torch.device, work: int) -> int:
    """How many programs a grid-stride kernel should launch: a few per SM on a GPU (enough to fill it,
    few enough that the per-program partial sums stay small), a handful under the interpreter,
    where every program costs about a millisecond."""
    if device.type == "cuda":
        per_device = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        per_device = 4
    return max(1, min(work, per_device))
