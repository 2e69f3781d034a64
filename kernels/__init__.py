"""Building blocks of the Llama layers, one file each, installed as `tinytitan.kernels`.

Each file holds a plain-PyTorch reference that the model calls and the tests use as the oracle,
and beside it a fused Triton version registered as a `torch.library` custom op (namespace
`tinytitan`), so that `torch.compile(fullgraph=True)` traces through it; `_common.py` holds what
they share (input guards, launch sizes, the optional Triton import). The folder is not installed
under the bare name `kernels`, which belongs to an unrelated Hugging Face package that
`transformers` probes for.
"""


def triton_unusable_reason(device_type: str) -> str | None:
    """Why the Triton kernels cannot run on a device of this type ("cuda", "cpu", ...), or None when
    they can: on CUDA with Triton installed, elsewhere only under the Triton interpreter."""
    from tinytitan.kernels import _common  # here, so that importing the package stays light

    if _common.triton is None:
        return "Triton is not installed"
    if device_type != "cuda" and not _common.INTERPRET:
        return f"the device is {device_type}"
    return None
