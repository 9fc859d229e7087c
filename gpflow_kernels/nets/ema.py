"""An exponential moving average of a method's weights, for sampling (Polyak averaging).

After optimiser step k the shadow weights move by s ← d_k s + (1 − d_k) w with
d_k = min(decay, (1 + k) / (10 + k)): the warm-up (as in TensorFlow's ExponentialMovingAverage with
``num_updates``) keeps short runs from sampling with nearly initial weights. Buffers are copied.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Dict, Iterator

import torch
from torch import nn


def _tensors(m: nn.Module):
    return list(m.parameters()) + list(m.buffers())


class EMA:
    """Shadow copies of ``modules`` (a name -> module dict, the method's ``modules()``)."""

    def __init__(self, modules: Dict[str, nn.Module], decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay!r}")
        self.decay = float(decay)
        self.shadow = {k: copy.deepcopy(m).requires_grad_(False) for k, m in modules.items()}

    @torch.no_grad()
    def update(self, modules: Dict[str, nn.Module], step: int) -> None:
        d = min(self.decay, (1.0 + step) / (10.0 + step))
        for k, m in modules.items():
            for s, w in zip(self.shadow[k].parameters(), m.parameters()):
                s.lerp_(w.detach(), 1.0 - d)
            for s, w in zip(self.shadow[k].buffers(), m.buffers()):
                s.copy_(w)

    @contextmanager
    def swapped(self, modules: Dict[str, nn.Module]) -> Iterator[None]:
        """The averaged weights in ``modules`` for the duration (restored after, even on error)."""
        saved = {k: [t.detach().clone() for t in _tensors(m)] for k, m in modules.items()}
        try:
            with torch.no_grad():
                for k, m in modules.items():
                    for t, s in zip(_tensors(m), _tensors(self.shadow[k])):
                        t.copy_(s)
            yield
        finally:
            with torch.no_grad():
                for k, m in modules.items():
                    for t, s in zip(_tensors(m), saved[k]):
                        t.copy_(s)

    def state_dict(self) -> Dict[str, dict]:
        return {k: m.state_dict() for k, m in self.shadow.items()}

    def load_state_dict(self, state: Dict[str, dict]) -> None:
        for k, m in self.shadow.items():
            m.load_state_dict(state[k])
