"""Runs under torchrun: the process group, DDP for the networks, sharded samples and gathered results.

``torchrun --nproc-per-node W -m gpflow_kernels run ...`` starts W processes with RANK, WORLD_SIZE,
LOCAL_RANK and a rendezvous in their environment; :func:`from_env` joins them in one process group
(gloo on CPUs, NCCL on GPUs, each process on ``cuda:LOCAL_RANK``). Without torchrun (WORLD_SIZE unset
or 1) nothing changes: :data:`SINGLE` stands for the one process.

What the runner does with W ranks (our choices, documented in the README):
- trained methods: each network is wrapped in DistributedDataParallel (gradients averaged over the
  ranks); each rank draws its minibatches from its own shard of the training set, so the global
  batch is ``batch`` × W; rank r > 0 draws its random numbers from a stream of its own;
- sampling: the n samples (``--samples``) are split over the ranks; flows draw their noise per
  global particle (``solvers.sharded``), so a seed gives the same particles on any number of ranks;
- metrics: MMD² and the energy distance are sharded ops; classifier metrics see all samples;
- only rank 0 writes (checkpoints, figures, metrics) and prints; a checkpoint holds every rank's
  random state, so ``--resume`` continues exactly with the same number of ranks. The loss history
  in metrics.json holds the ranks' mean; the progress line shows rank 0's losses.
"""

from __future__ import annotations

import os
import types
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..distributed import comm_device, shard_bounds

Tensor = torch.Tensor

#: Seconds a collective may wait for the other ranks before it fails (GPFLOW_DIST_TIMEOUT overrides).
DEFAULT_TIMEOUT_S = 300


@dataclass(frozen=True)
class Parallel:
    """The ranks of a run: ``group`` None means one process."""

    group: Any = None
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> Tuple[int, int]:
        """[start, stop) of this rank's share of n items (even split, rank order)."""
        return shard_bounds(n, self.world, self.rank)

    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on any rank (one small all-reduce)."""
        if self.world == 1:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=comm_device(self.group))
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return bool(t.item())

    def gather_rows(self, x: Tensor) -> Tensor:
        """All ranks' rows of x (n_r, ...) concatenated in rank order, on every rank."""
        if self.world == 1:
            return x
        dev = comm_device(self.group)
        n = torch.tensor([x.shape[0]], dtype=torch.int64, device=dev)
        sizes = [torch.empty_like(n) for _ in range(self.world)]
        dist.all_gather(sizes, n, group=self.group)
        sizes = [int(s) for s in sizes]
        pad = x.new_zeros((max(sizes),) + tuple(x.shape[1:])).to(dev)
        pad[: x.shape[0]] = x.to(dev)
        parts = [torch.empty_like(pad) for _ in range(self.world)]
        dist.all_gather(parts, pad.contiguous(), group=self.group)
        return torch.cat([p[:s] for p, s in zip(parts, sizes)]).to(x.device)

    def mean_stats(self, stats: dict) -> dict:
        """The ranks' mean of each value of ``stats`` (float losses; same keys on every rank)."""
        if self.world == 1 or not stats:
            return stats
        t = torch.tensor([float(v) for v in stats.values()], dtype=torch.float64, device=comm_device(self.group))
        dist.all_reduce(t, group=self.group)
        return {k: float(v) / self.world for k, v in zip(stats, t.tolist())}

    def gather_objects(self, obj) -> List[Any]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out: List[Any] = [None] * self.world
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def offset(self, n_local: int) -> int:
        """Index of this rank's first item among all ranks' items."""
        from solvers.sharded import global_offset

        return global_offset(n_local, self.group)


SINGLE = Parallel()


def current() -> Parallel:
    """The ranks of the initialised default process group, or SINGLE when there is none (the
    Python API called inside a torchrun job that set up torch.distributed itself)."""
    if dist.is_available() and dist.is_initialized():
        return Parallel(dist.group.WORLD, dist.get_rank(), dist.get_world_size())
    return SINGLE


def launched() -> bool:
    """True when torchrun (or an equivalent launcher) started this process as one of several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def from_env(device: str) -> Tuple[Parallel, str]:
    """Join the process group torchrun describes; (SINGLE, device) when not launched by it.

    On CUDA each rank takes ``cuda:LOCAL_RANK`` (``--device cuda``) and NCCL; on the CPU gloo.
    """
    if not launched():
        return SINGLE, device
    from .outdir import RunError

    cuda = device.startswith("cuda")
    if cuda:
        if not torch.cuda.is_available():
            raise RunError(f"--device {device} asked for, but torch sees no CUDA device")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise RunError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA devices: "
                           "use --nproc-per-node <= the number of GPUs")
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    timeout = timedelta(seconds=float(os.environ.get("GPFLOW_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
    if not dist.is_initialized():
        # torchrun's store as env:// makes it, its keys prefixed with the elastic restart count:
        # the agent's store outlives a restart, and without the prefix a restarted rank could read
        # an address the previous attempt's rank 0 published and fail to connect to it (seen with
        # gloo: "Connection refused", then the restart was lost).
        store, rank, world = next(dist.rendezvous("env://", timeout=timeout))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        store = dist.PrefixStore(f"gpflow/attempt_{attempt}", store)
        dist.init_process_group("nccl" if cuda else "gloo", store=store, rank=rank, world_size=world,
                                timeout=timeout)
    return current(), device


def close(ok: bool) -> None:
    """Leave the process group. After a success the ranks first free their DDP wrappers and meet
    at a barrier (tearing the group down under a live reducer aborted the process now and then:
    "terminate called without an active exception"); after a failure the peers may be gone, so
    the process just exits and torchrun reaps the rest."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if ok:
        import gc

        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


class _DDP(DistributedDataParallel):
    """DistributedDataParallel that still looks like the network it wraps to the method's code.

    A method calls its networks' own methods (``net.score(x, σ)``, which calls ``self(x, σ)``),
    reads and sets their attributes (``net.sigma_data``). Such methods run here with ``self`` = this
    wrapper, so the forward passes inside them go through DDP's forward (which prepares the
    gradient all-reduce); attributes are read from and written to the network. State dicts are the
    network's, so checkpoints do not depend on the number of ranks.
    """

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            pass
        module = super().__getattr__("module")
        attr = getattr(type(module), name, None)
        if isinstance(attr, types.FunctionType) and not hasattr(nn.Module, name):
            return types.MethodType(attr, self)
        return getattr(module, name)

    def __setattr__(self, name, value):
        modules = self.__dict__.get("_modules", {})
        module = modules.get("module")
        if module is not None and name not in self.__dict__ and hasattr(module, name) \
                and not isinstance(value, (nn.Module, nn.Parameter)):
            setattr(module, name, value)
            return
        super().__setattr__(name, value)

    def state_dict(self, *args, **kwargs):
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state, strict: bool = True):
        return self.module.load_state_dict(state, strict=strict)


def wrap_networks(method, par: Parallel, device: torch.device) -> None:
    """Replace each trainable network of ``method`` (``method.modules()``) by its DDP wrapper.

    DDP's construction copies rank 0's parameters to every rank. Buffers are not broadcast at each
    forward (``forward_sync_buffers=False``): our networks' buffers are constants, and sampling on
    some ranks only must not start a collective.
    """
    if par.world == 1:
        return
    for mod in method.modules().values():
        if not any(p.requires_grad for p in mod.parameters()):
            continue
        wrapped = _DDP(mod, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=False,
                       process_group=par.group)
        for attr, value in list(vars(method).items()):
            if value is mod:
                setattr(method, attr, wrapped)


def rank_seed(seed: int, rank: int) -> Optional[int]:
    """The seed of rank r > 0's own random stream (rank 0 keeps the run's seed, so one rank is the
    single-process run)."""
    return None if rank == 0 else (seed * 1_000_003 + rank * 7_919) % (2**63)
