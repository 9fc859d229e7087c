"""CUDA-graph replay of a fixed-step loop, shared by ``odeint`` and ``sdeint``.

One step is captured once with static input buffers; each step then copies that step's inputs
(times, step size, Brownian increment) into the buffers and replays the graph, so the per-step
cost is the copies plus one graph launch instead of every kernel launch of the field.

Finiteness is checked inside the graph (``_checks.FiniteWatch``): each replay folds "is any
particle non-finite?" into a device-side index of the first bad step, read once after the loop.
The error therefore names the same step as the eager loop's, without a host sync per step.
"""

from __future__ import annotations

from typing import Callable, Dict, List

import torch

from . import _checks

Tensor = torch.Tensor


class CudaCapture:
    """The CUDA side: warm up on a side stream, capture once, replay."""

    def __init__(self):
        self.graph = None

    def capture(self, run: Callable[[], Tensor]) -> Tensor:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up outside the graph (allocator, lazy initialisation)
                run()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            return run()

    def replay(self) -> None:
        self.graph.replay()


def check_options(x: Tensor, compile: bool, cuda_graph: bool) -> None:
    if cuda_graph and compile:
        raise ValueError("choose one of compile=True and cuda_graph=True")
    if cuda_graph and x.device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs particles on a CUDA device, got x0 on {x.device}")


def replay_loop(
    step: Callable[..., Tensor],
    x: Tensor,
    inputs_at: Callable[[int], Dict[str, Tensor]],
    n: int,
    t_at: List[Tensor],
    after: Callable[[int, Tensor], None],
    check_finite: bool,
) -> Tensor:
    """Run ``x ← step(x=x, **inputs_at(i))`` for i < n with the step captured once.

    Args:
        inputs_at: step i's inputs as tensors of fixed shapes, made outside the graph (random
            increments are thus the same numbers as in the eager loop).
        t_at: the grid's times (for the error message).
        after: ``after(i + 1, x)`` once step i is done; ``x`` is the static state buffer.
    Returns the final state (a fresh tensor).
    """
    capture = CudaCapture()  # looked up at call time: the CPU tests put a stand-in here
    watch = _checks.FiniteWatch(x, t_at, check_finite, lazy=True)
    static = {k: v.clone() for k, v in inputs_at(0).items()}
    static["x"] = x.clone()

    def run():
        new = step(**static)
        if check_finite:
            watch.record(new)
        return new

    static_out = capture.capture(run)
    if check_finite:
        watch.first.fill_(-1)  # the warm-up runs may have written it
    for i in range(n):
        if i > 0:
            for k, v in inputs_at(i).items():
                static[k].copy_(v)
        if check_finite:
            watch.set_step(i + 1)
        capture.replay()
        static["x"].copy_(static_out)
        after(i + 1, static["x"])
    watch.finish()
    return static["x"].clone()
