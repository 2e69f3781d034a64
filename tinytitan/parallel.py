"""Processes, the device mesh, the precision policy, and `parallelize()`: how the model is wrapped.

One process per device, started by torchrun (RANK, WORLD_SIZE, LOCAL_RANK), or a single process
started without it. Both train through a process group and FSDP2: a single process makes a group of
one, so one rank and N ranks run the same arithmetic (the same bfloat16 parameters, the same float32
gradient reduction), as TorchTitan does on one GPU. NCCL on CUDA, gloo on CPU. The data-parallel
mesh is [replicate, shard]: parameters are sharded within a group of `data_parallel_shard_degree`
ranks (a node, typically) and replicated across groups (HSDP).
"""

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from tinytitan.config import ActivationCheckpoint, Compile, Parallelism, mesh_degrees
from tinytitan.models.attention import compile_backend
from tinytitan.models.llama import Transformer


@dataclass(frozen=True)
class ParallelEnv:
    rank: int
    world_size: int
    device: torch.device
    mesh: DeviceMesh
    # gloo group for small agreements between ranks on CPU tensors, so that asking every step
    # (was a rank signalled? has every rank finished its background save?) never syncs the GPU
    cpu_group: dist.ProcessGroup


def is_main_process() -> bool:
    """Rank 0, the one that prints and writes what the run shares (also outside a process group)."""
    return not dist.is_initialized() or dist.get_rank() == 0


def select_device(choice: str) -> torch.device:
    """CUDA device LOCAL_RANK when there is one (and the choice allows it), else the CPU; whether a
    "cuda" choice can be met is config.check_runtime's to say."""
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


@contextlib.contextmanager
def parallel_env(device_choice: str, parallelism: Parallelism) -> Iterator[ParallelEnv]:
    """The process group and device mesh of this run, for the duration of the block."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    degrees, device = mesh_degrees(parallelism, world_size), select_device(device_choice)
    # A single process (not started by torchrun) makes a group of one, which needs no rendezvous.
    options = {"store": dist.HashStore(), "rank": 0, "world_size": 1} if world_size == 1 else {}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device, **options)
    else:
        dist.init_process_group("gloo", **options)
    try:
        mesh = init_device_mesh(device.type, degrees, mesh_dim_names=("dp_replicate", "dp_shard"))
        yield ParallelEnv(dist.get_rank(), world_size, device, mesh, dist.new_group(backend="gloo"))
    finally:
        dist.barrier()  # before destroying the group: gloo otherwise aborts at exit now and then
        dist.destroy_process_group()


@contextlib.contextmanager
def main_process_first():
    """Rank 0 runs the block first (say, to prepare a shared cache), then the other ranks."""
    if not is_main_process():
        dist.barrier()
    yield
    if is_main_process() and dist.is_initialized():
        dist.barrier()


@dataclass(frozen=True)
class Precision:
    """How the model computes, one policy for both of its mechanisms. In bfloat16, FSDP gathers the
    parameters in bfloat16 and reduces the gradients in float32 (the weights and the optimizer stay
    float32), and autocast runs the matmuls in bfloat16. In float32, everything is float32."""

    device: torch.device
    bfloat16: bool

    @classmethod
    def of(cls, mixed_precision: str, device: torch.device) -> "Precision":
        """training.mixed_precision: "auto" is bfloat16 on CUDA, float32 elsewhere."""
        return cls(device, mixed_precision == "bfloat16" or (mixed_precision == "auto" and device.type == "cuda"))

    def autocast(self):
        if not self.bfloat16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def fsdp_policy(self) -> MixedPrecisionPolicy:
        if not self.bfloat16:
            return MixedPrecisionPolicy()
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)


def parallelize(
    model: Transformer,
    env: ParallelEnv,
    precision: Precision,
    activation_checkpoint: ActivationCheckpoint,
    compile: Compile,
    parallelism: Parallelism,
) -> None:
    """Wrap the model for training, in place, in this order:
    1. activation checkpointing, inside each block's forward, so that compile sees (and fuses) the
       recomputation too;
    2. torch.compile per block: one graph serves every identical block, and compiling the block
       before FSDP wraps it leaves FSDP's gather and reduce hooks around the compiled code, outside it;
    3. FSDP2 `fully_shard`, last, on the blocks as they will run."""
    apply_activation_checkpointing(model, activation_checkpoint.mode, activation_checkpoint.selective_every)
    if compile.enable:
        apply_compile(model, env.device)
    apply_fsdp(model, env.mesh, precision.fsdp_policy(), parallelism.reshard_after_forward)


def apply_activation_checkpointing(model: Transformer, mode: str, every: int) -> None:
    """Recompute activations in backward: of every block (full), or of every n-th (selective)."""
    for index, block in enumerate(model.layers.values()):
        block.checkpoint_activations = mode == "full" or (mode == "selective" and index % every == 0)


def apply_compile(model: Transformer, device: torch.device) -> None:
    backend = compile_backend(model.attention_options, device)
    for block in model.layers.values():
        block.compile(fullgraph=True, backend=backend)  # in place: parameter names stay unchanged


def apply_fsdp(model: Transformer, mesh: DeviceMesh, policy: MixedPrecisionPolicy, reshard_after_forward: bool):
    """fully_shard each block, then the embedding, then norm + output together, then the root.

    A tied embedding is left to the root's group: it is sharded once, gathered at the start of the
    forward and kept gathered (FSDP never reshards the root after forward) until the output head,
    which receives it from the root's forward, and its gradient (lookup + projection) is reduced once."""
    mesh = mesh if mesh.size(0) > 1 else mesh["dp_shard"]  # HSDP when replicated
    options = {"mesh": mesh, "mp_policy": policy, "reshard_after_forward": reshard_after_forward}
    for block in model.layers.values():
        fully_shard(block, **options)
    if not model.args.tie_embeddings:
        fully_shard(model.tok_embeddings, **options)
    fully_shard([model.norm, model.output], **options)
    fully_shard(model, **options)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            # The gradients are summed over the ranks, not averaged: the loss is normalised by the
            # step's global label count instead (train.forward_backward). Plain sums also suit gloo,
            # which has no averaging or pre-scaled reduction.
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)


def any_rank(flag: bool, cpu_group: dist.ProcessGroup | None) -> bool:
    """Whether `flag` is true on any rank (on all of them, negate in and out)."""
    if cpu_group is None:
        return flag
    value = torch.tensor([int(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=cpu_group)
    return bool(value.item())


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value
