"""The skeleton every method shares: options, training steps, sampling, and state for checkpoints.

A method is a small object:
- ``Options``: a dataclass of its settings (``steps`` training steps, ``batch``, ``lr``, ...), defined
  and checked in :mod:`.options` (no torch there, so the command line checks them at once);
- ``train_step(step)``: one optimisation step (all randomness from torch's global generator, whose
  state the runner checkpoints, so a resumed run repeats an uninterrupted one exactly);
- ``sample(n, generator, trajectory)``: n samples (n, D) drawn with ``generator`` only, the number
  of field (network or kernel) evaluations per sample, and optionally the particles' path;
- ``state_dict``/``load_state_dict``: networks and optimisers.

``kind`` places it in the GPM paper's taxonomy: "PM" (particles follow a field at generation time),
"Int-PM" (a generator trained by the field; one network call per sample) or "flow" (a training-free
particle flow toward the data).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn

from ..data.dataset import Dataset
from .options import Options
from .parallel import SINGLE

Tensor = torch.Tensor


@dataclass
class Sample:
    """x: (n, D) samples; nfe: field evaluations per sample; path: (T, n, D) particle states or None."""

    x: Tensor
    nfe: int
    path: Optional[Tensor] = None


@dataclass
class LikelihoodFlow:
    """A per-sample flow for ``solvers.log_prob``: field(t, x (n, D)), times ts from the data
    (ts[0]) to the prior (ts[-1]), the prior's log-density, and one line saying what it is."""

    field: Callable[[Tensor, Tensor], Tensor]
    ts: Tensor
    prior_log_prob: Callable[[Tensor], Tensor]
    what: str


class Method:
    name = ""
    kind = ""        # "PM", "Int-PM" or "flow"
    #: True when ``sample`` draws its randomness per global particle (the same generator on every
    #: rank gives the same particles on any number of ranks); else each rank gets its own generator.
    sharded_sampling = False
    paper = ""
    summary = ""
    Options = Options

    def __init__(self, data: Dataset, options: Options, device: torch.device):
        self.data, self.opts, self.device = data, options, torch.device(device)
        self.x_train = data.train.to(self.device)
        self.dim = data.dim
        self.losses: Dict[str, float] = {}
        # Under torchrun the runner sets ``par`` (the ranks) and ``batch_pool`` (this rank's shard of
        # the training set, where minibatches come from); ``x_train`` stays the whole set.
        self.par = SINGLE
        self.batch_pool = self.x_train
        #: minibatches read from the file (``data.stream.Batches``) when the data are streamed; set by
        #: the runner, and then ``batch()`` draws from it instead of ``batch_pool``
        self.batches = None
        #: the weights' moving average (``nets.EMA``) when the option ``ema`` is on; set by the runner
        self.ema = None

    # ----- settings ---------------------------------------------------------------------------
    @classmethod
    def make_options(cls, data: Dataset, overrides: Dict[str, Any]) -> Options:
        """The Options for this data set (image defaults on images) with ``overrides``, checked."""
        return cls.Options.build(cls.name, overrides, is_image=data.is_image)

    @property
    def total_steps(self) -> int:
        return self.opts.steps

    # ----- work -------------------------------------------------------------------------------
    def batch(self, n: Optional[int] = None) -> Tensor:
        """A minibatch of training data (with replacement, from this rank's shard under torchrun),
        drawn from the global generator; for streamed data, the next of ``self.batches``."""
        n = getattr(self.opts, "batch", 256) if n is None else n
        if self.batches is not None:
            if n != self.batches.batch:
                raise ValueError(f"streamed data give minibatches of {self.batches.batch} rows (option batch), "
                                 f"not {n}")
            return self.batches.next()
        return self.batch_pool[torch.randint(0, len(self.batch_pool), (n,), device=self.device)]

    def train_step(self, step: int) -> Dict[str, float]:
        return {}

    def sample(self, n: int, generator: torch.Generator, trajectory: bool = False) -> Sample:
        raise NotImplementedError

    def likelihood_flow(self, generator: torch.Generator) -> Optional[LikelihoodFlow]:
        """The flow whose change of variables gives this method's model density, or None when
        the method has none (GANs, interacting particle flows)."""
        return None

    def prior(self, n: int, generator: torch.Generator, scale: float = 1.0) -> Tensor:
        return scale * torch.randn(n, self.dim, generator=generator, device=self.device)

    # ----- state ------------------------------------------------------------------------------
    def modules(self) -> Dict[str, nn.Module]:
        return {}

    def optimizers(self) -> Dict[str, torch.optim.Optimizer]:
        return {}

    def state_dict(self) -> Dict[str, Any]:
        state = {f"module.{k}": m.state_dict() for k, m in self.modules().items()}
        state.update({f"optim.{k}": o.state_dict() for k, o in self.optimizers().items()})
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        if self.batches is not None:
            state["data.batches"] = self.batches.drawn
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for k, m in self.modules().items():
            m.load_state_dict(state[f"module.{k}"])
        for k, o in self.optimizers().items():
            o.load_state_dict(state[f"optim.{k}"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        if self.batches is not None:
            self.batches.set_drawn(state["data.batches"])


def adam(params, lr: float, betas=(0.9, 0.999)) -> torch.optim.Adam:
    return torch.optim.Adam(list(params), lr=lr, betas=betas)


def step_on(opt: torch.optim.Optimizer, loss: Tensor) -> float:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def solver_sample(out: Tensor, nfe: int, trajectory: bool) -> Sample:
    """A Sample from a solver's output: the path (T, n, D) when ``trajectory``, else the final state."""
    return Sample(out[-1] if trajectory else out, nfe, out if trajectory else None)


def particle_normals(m: "Method", n: int, generator) -> "solvers.ParticleNormals":
    """Normals per global particle for this rank's n particles: the seed comes from ``generator``
    (the same draw on every rank), the offset from the ranks' particle counts."""
    import solvers  # layer 2

    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    return solvers.ParticleNormals(seed, m.par.offset(n), device=m.device)
