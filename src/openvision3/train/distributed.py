"""Process group, device, seeding and model wrapping (DDP or FSDP2) for the trainer.

Launch with ``torchrun``; a plain ``python``/``ov3`` call is a single process. We never start
processes ourselves: torchrun (or SLURM + torchrun) owns that.
"""
from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistInfo:
    """Join the process group torchrun set up (NCCL on GPU, gloo on CPU); else one process."""
    cuda = torch.cuda.is_available()
    if not dist.is_torchelastic_launched() and "RANK" not in os.environ:
        return DistInfo(device=torch.device("cuda", 0) if cuda else torch.device("cpu"))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))  # set by torchrun
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def launched_world_size() -> int:
    """How many processes torchrun launched (1 for a plain call), known before the group is joined:
    a config's batches must split over them before anything is built."""
    return int(os.environ.get("WORLD_SIZE", 1))


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def seed_everything(seed: int, rank: int = 0) -> None:
    """Different streams per rank (noise, caption subsets), reproducible per (seed, rank)."""
    s = seed + rank
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= dist.get_world_size()
    return values


def any_rank(flag: bool, device) -> bool:
    """True on every rank if it is true on one (e.g. a signal that reached one process)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_objects(obj) -> list:
    """Per-rank picklable objects (RNG states, data positions) -> list on every rank."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def enable_grad_checkpointing(model: nn.Module) -> None:
    """Recompute every transformer block in backward, on its forward's path (models/transformer.py):
    the four towers of an OpenVision 3 model, the body and head of a DiT-DH."""
    for m in model.modules():
        if hasattr(m, "grad_checkpointing"):
            m.grad_checkpointing = True


def wrap_model(model: nn.Module, info: DistInfo, fsdp: bool = False, find_unused: bool | None = None) -> nn.Module:
    """DDP (replicated) or FSDP2 (``fully_shard`` per transformer block, then the root; bf16 compute
    comes from the run's autocast). ``find_unused``: DDP's flag; None derives it from an OpenVision 3
    model's loss weights (other models, e.g. the generator's DiT, pass it). The single-process model
    is returned unchanged."""
    if not info.distributed:
        return model
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        from ..models.transformer import Transformer
        # Every rank built its own (differently seeded) model; DDP starts all from rank 0's weights
        # and buffers, and FSDP2 would shard each rank's own, a mix of inits: broadcast first.
        with torch.no_grad():
            for t in [*model.parameters(), *model.buffers()]:
                dist.broadcast(t, src=0)
        for tower in [m for m in model.modules() if isinstance(m, Transformer)]:
            for block in tower.resblocks:
                fully_shard(block)
        # FSDP2 cannot shard scalars (logit_scale): keep them replicated, their grads are averaged
        # by sync_replicated_grads.
        scalars = {p for p in model.parameters() if p.ndim == 0}
        fully_shard(model, ignored_params=scalars or None)
        model._replicated_params = sorted(scalars, key=id)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP
    if find_unused is None:
        lc = model.cfg.loss
        # A disabled branch leaves its parameters without gradients; DDP must then look for them.
        find_unused = min(lc.w_rec, lc.w_und, lc.alpha_contrastive, lc.caption_weight) <= 0
    return DDP(model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
               find_unused_parameters=find_unused)


def reshard_fsdp(model: nn.Module) -> None:
    """Return FSDP2 modules to their sharded parameters. A forward without backward (validation
    under no_grad) leaves the root's parameters unsharded, and torch.distributed.checkpoint then
    cannot map the optimizer's (sharded) parameters to names (KeyError). No-op without FSDP2."""
    from torch.distributed.fsdp import FSDPModule
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def set_grad_sync(model: nn.Module, enabled: bool):
    """Skip the gradient all-reduce on accumulation micro-steps (DDP no_sync / FSDP2 flag)."""
    inner = getattr(model, "_orig_mod", model)
    if isinstance(inner, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext() if enabled else inner.no_sync()
    if hasattr(inner, "set_requires_gradient_sync"):  # FSDP2 module
        inner.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


def sync_replicated_grads(model: nn.Module) -> None:
    """Average the gradients of parameters FSDP2 left out (see wrap_model; FSDP2 shards in place,
    so only torch.compile's wrapper is between)."""
    for p in getattr(getattr(model, "_orig_mod", model), "_replicated_params", []):
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= dist.get_world_size()


def full_state_dict(module: nn.Module) -> dict:
    """State dict with every sharded (DTensor) entry gathered to a plain CPU tensor."""
    from torch.distributed.tensor import DTensor
    state = module.state_dict()
    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().cpu() for k, v in state.items()}


def load_full_state_dict(module: nn.Module, state: dict) -> None:
    """Load plain tensors into a module whose parameters may be FSDP2-sharded DTensors."""
    from torch.distributed.tensor import DTensor, distribute_tensor
    own = module.state_dict()
    converted = {}
    for k, v in state.items():
        target = own.get(k)
        if isinstance(target, DTensor):  # shard it as the module's parameter is sharded
            v = distribute_tensor(v.to(target.device_mesh.device_type), target.device_mesh, target.placements)
        converted[k] = v
    module.load_state_dict(converted, strict=False)
