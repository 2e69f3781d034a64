"""The one table of floating-point types that users name: in the config (training.mixed_precision,
checkpoint.export_dtype) and in the scripts' --dtype.

The spelling is torch's own (float32, bfloat16, float16). The short forms that older configs and
commands used (fp32, bf16, fp16) are accepted everywhere and read as the long ones. Importing this
module does not import torch, so that the launcher's config check stays fast.
"""

DTYPE_NAMES = ("float32", "bfloat16", "float16")
ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def canonical_dtype_name(name: str) -> str | None:
    """The table's spelling of `name` (an alias or the name itself), or None if it is no dtype here."""
    name = ALIASES.get(name, name)
    return name if name in DTYPE_NAMES else None


def torch_dtype(name: str):
    """The torch.dtype called `name` (either spelling); a ValueError for anything else."""
    import torch

    canonical = canonical_dtype_name(name)
    if canonical is None:
        raise ValueError(f"dtype {name!r}: expected one of {', '.join(DTYPE_NAMES)}")
    return getattr(torch, canonical)


def dtype_name(dtype) -> str:
    """The table's name of a torch.dtype (str(dtype) for one outside the table)."""
    name = str(dtype).removeprefix("torch.")
    return name if name in DTYPE_NAMES else str(dtype)
