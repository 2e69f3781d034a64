"""Building blocks of the Llama layers, one file each, installed as `tinytitan.kernels`.

Each file holds a plain-PyTorch reference that the model calls and the tests use as the oracle;
fused Triton versions come beside them. The folder is not installed under the bare name `kernels`,
which belongs to an unrelated Hugging Face package that `transformers` probes for.
"""
