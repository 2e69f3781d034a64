"""Processes, device mesh, and how the model is wrapped: activation checkpointing, per-block
torch.compile, and FSDP2 `fully_shard` (in that order).

One process per device, started by torchrun (RANK, WORLD_SIZE, LOCAL_RANK). Several processes
use NCCL on CUDA and gloo on CPU. The data-parallel mesh is [replicate, shard]: parameters are
sharded within a group of `data_parallel_shard_degree` ranks (a node, typically) and replicated
across groups (HSDP); -1 means "all the ranks left".
"""

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from tinytitan.config import JobConfig, Parallelism
from tinytitan.errors import UserError
from tinytitan.models.llama import Transformer


@dataclass(frozen=True)
class ParallelEnv:
    rank: int
    world_size: int
    device: torch.device
    mesh: DeviceMesh | None  # None in a single process
    # gloo group for small agreements between ranks on CPU tensors, so that asking every step
    # (was a rank signalled? has every rank finished its background save?) never syncs the GPU
    cpu_group: dist.ProcessGroup | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def select_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError('training.device = "cuda": expected a CUDA device, but torch sees none (use "auto" or "cpu")')
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def mesh_shape(config: Parallelism, world_size: int) -> tuple[int, int]:
    """(replicate, shard) degrees whose product is the world size."""
    replicate, shard = config.data_parallel_replicate_degree, config.data_parallel_shard_degree
    if replicate == -1 and shard == -1:
        raise UserError(
            "parallelism: data_parallel_replicate_degree and data_parallel_shard_degree are both -1: "
            "expected at most one to be -1"
        )
    if replicate == -1:
        replicate = world_size // shard if world_size % shard == 0 else 0
    if shard == -1:
        shard = world_size // replicate if world_size % replicate == 0 else 0
    if replicate * shard != world_size:
        raise UserError(
            f"parallelism: replicate degree {config.data_parallel_replicate_degree} x shard degree "
            f"{config.data_parallel_shard_degree}: expected a product equal to the {world_size} ranks"
        )
    return replicate, shard


def init_parallel(config: JobConfig) -> ParallelEnv:
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    device = select_device(config.training.device)
    if world_size == 1:
        return ParallelEnv(0, 1, device, None)
    replicate, shard = mesh_shape(config.parallelism, world_size)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    mesh = init_device_mesh(device.type, (replicate, shard), mesh_dim_names=("dp_replicate", "dp_shard"))
    return ParallelEnv(dist.get_rank(), world_size, device, mesh, dist.new_group(backend="gloo"))


def close_parallel(env: ParallelEnv) -> None:
    """Barrier, then destroy the process group: gloo otherwise aborts at exit now and then."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def main_process_first(env: ParallelEnv):
    """Rank 0 runs the block first (say, to prepare a shared cache), then the other ranks."""
    if not env.is_main and dist.is_initialized():
        dist.barrier()
    yield
    if env.is_main and dist.is_initialized():
        dist.barrier()


def apply_activation_checkpointing(model: Transformer, mode: str, every: int) -> None:
    """Recompute activations in backward: of every block (full), or of every n-th (selective)."""
    for index, block in enumerate(model.layers.values()):
        block.checkpoint_activations = mode == "full" or (mode == "selective" and index % every == 0)


def apply_compile(model: Transformer) -> None:
    for block in model.layers.values():
        block.compile(fullgraph=True)  # in place: parameter names stay unchanged


def apply_fsdp(model: Transformer, env: ParallelEnv, config: JobConfig, bf16: bool) -> None:
    """fully_shard each block, then the embedding, then norm + output together, then the root."""
    mesh = env.mesh if env.mesh.size(0) > 1 else env.mesh["dp_shard"]  # HSDP when replicated
    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    )
    options = {"mesh": mesh, "mp_policy": policy, "reshard_after_forward": config.parallelism.reshard_after_forward}
    for block in model.layers.values():
        fully_shard(block, **options)
    fully_shard(model.tok_embeddings, **options)
    fully_shard([model.norm, model.output], **options)
    fully_shard(model, **options)


def any_rank(flag: bool, cpu_group: dist.ProcessGroup | None) -> bool:
    """Whether `flag` is true on any rank (on all of them, negate in and out)."""
    if cpu_group is None:
        return flag
    value = torch.tensor([int(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=cpu_group)
    return bool(value.item())


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.AVG if value.device.type == "cuda" else dist.ReduceOp.SUM)
        if value.device.type != "cuda":
            value /= dist.get_world_size()  # gloo has no AVG
    return value


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value
