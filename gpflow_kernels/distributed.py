"""Sharded kernel reductions over torch.distributed: each rank holds a shard of every point set.

The ops here have the names, arguments and defaults of the top-level ones (``gpflow_kernels.ops``)
plus ``group`` (default: the default process group). Every point argument (x, y, x_ref, v,
weights, score) is this rank's shard along the point dimension N; shards may differ in size
between ranks, and may be empty. Each call returns the rows of the local x and equals, up to
float32 reduction order, the single-process op on the concatenation of the shards in rank order;
``mmd2`` returns the global value on every rank.

How. The source points (y, x_ref, or x itself) travel around a ring: at step s rank r holds the
block of rank (r − s) mod W, starts sending it on to rank r + 1 and receiving the next one from
rank r − 1 (``dist.batch_isend_irecv``), and reduces its local rows against the block in hand
while the transfer runs. Memory is the local shard plus two blocks; bytes sent per rank and call
are the other ranks' blocks, Σ_{q≠r} M_q·(D + P)·itemsize, never an all-gather of everything.
Each block is reduced by the local backend (tiled torch on CPUs, Triton or CUDA on GPUs).
Backward passes run the ring again: gradients of the local rows stay, gradients of a travelling
block follow it round the ring and arrive back at its owner after W hops.

Sums merge exactly. The KDE ops (``kde_score``, ``kde_denoiser``) merge the blocks' soft-assignment
means with their log-normalisers, which share one convention: every backend's logits are the exact
−r²/(2σ²) (each backend declares its unit, the Triton one base 2). Their backward pass per block
gets the global normaliser and mean, so the blocks' gradients add up (see _RingSoftmax).

Agreement and failures. Before any transfer every rank publishes, in one small all-gather, what it
was given (op, batch shape, D, dtype, kernel, bandwidth, optional arguments, shard sizes) and
whether its own input checks passed. Ranks that disagree all raise the same ValueError naming the
ranks and the field; a rank whose input is bad raises its own error and the others raise one
naming it, instead of waiting for it forever.

Gradients. Autograd works as usual, provided every rank runs the backward pass (the ring needs all
of them). ``mmd2``'s value is all-reduced with an identity backward: when every rank backpropagates
the same global value, each gets the gradient of that value with respect to its own shards.
"""

from __future__ import annotations

import math
import zlib
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist

from . import _bandwidth, _checks, ops
from .kernels import Kernel, get_kernel
from .ops import _compute_dtype, _first_order_only, _impl

Tensor = torch.Tensor
Bandwidth = ops.Bandwidth

__all__ = ["mmd_field", "mmd2", "kernel_integral", "kde_score", "kde_denoiser", "svgd_field", "shard_bounds",
           "comm_device"]


# --------------------------------------------------------------------------------------------
# process group, agreement


def _flat(t: Optional[Tensor], trailing: int, dtype: torch.dtype) -> Optional[Tensor]:
    """(..., *last) -> (B, *last) contiguous in ``dtype``; unlike ``ops._flat`` it takes empty shards."""
    if t is None:
        return None
    lead = tuple(t.shape[: t.dim() - trailing])
    last = tuple(t.shape[t.dim() - trailing:])
    return t.to(dtype).reshape((math.prod(lead),) + last).contiguous()


def _group_info(group) -> Tuple[int, int, torch.device]:
    """(rank, world size, device for collectives) of ``group``; a clear error without a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "gpflow_kernels.distributed needs an initialised process group: call "
            "torch.distributed.init_process_group (torchrun sets the environment for it)"
        )
    return dist.get_rank(group), dist.get_world_size(group), comm_device(group)


def comm_device(group) -> torch.device:
    """Where ``group``'s collectives take their tensors: the current CUDA device for NCCL, else the CPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _code(value) -> float:
    """A float that identifies a value the same way on every rank: integers as themselves (so an
    error can show every rank's value), anything else (strings, tuples) by a CRC of its repr."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**52:
        return float(value)
    return float(zlib.crc32(repr(value).encode()) + 2**53)


def _kernel_key(kernel: Kernel) -> str:
    """The resolved kernel's class and parameters (its repr), not its address."""
    return f"{type(kernel).__module__}.{type(kernel).__qualname__}:{kernel!r}"


def _bandwidth_key(bandwidth) -> str:
    if isinstance(bandwidth, torch.Tensor):
        return repr([float(b) for b in bandwidth.detach().double().reshape(-1).cpu()])
    if isinstance(bandwidth, (list, tuple)):
        return repr([float(b) for b in bandwidth])
    if isinstance(bandwidth, (int, float)) and not isinstance(bandwidth, bool):
        return repr([float(bandwidth)])
    return repr(bandwidth)


class _Agreement:
    """What this rank was given, gathered from all ranks in one all-gather.

    ``fields``: (name, value) that must be equal on every rank; ``sizes``: this rank's shard sizes
    (N of x, M of y, ...). After :meth:`gather`, ``self.sizes[k]`` is the list over ranks.
    """

    def __init__(self, op: str, group):
        self.op, self.group = op, group
        self.rank, self.world, self.dev = _group_info(group)

    def gather(self, fields: Sequence[Tuple[str, object]], sizes: Sequence[int], error: Optional[BaseException]):
        if len(fields) > _MAX_FIELDS or len(sizes) > _MAX_SIZES:
            raise AssertionError("agreement vector too short")
        vec = [0.0 if error is None else 1.0, _code(self.op)]
        vec += [_code(v) for _, v in fields] + [0.0] * (_MAX_FIELDS - len(fields))
        vec += [float(s) for s in sizes] + [0.0] * (_MAX_SIZES - len(sizes))
        mine = torch.tensor(vec, dtype=torch.float64, device=self.dev)
        parts = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(parts, mine, group=self.group)
        allv = torch.stack(parts).cpu()
        if error is not None:
            raise error
        failed = [r for r in range(self.world) if allv[r, 0] != 0]
        if failed:
            raise RuntimeError(f"gpflow_kernels.distributed.{self.op}: rank(s) {failed} rejected their input "
                               "(their error says why); this rank stops too")
        if bool((allv[:, 1] != allv[0, 1]).any()):
            raise RuntimeError(f"gpflow_kernels.distributed.{self.op}: the ranks called different ops at the same "
                               "time (each collective call must be made on every rank, in the same order)")
        for k, (name, value) in enumerate(fields):
            col = allv[:, 2 + k]
            bad = [r for r in range(self.world) if col[r] != col[0]]
            if bad:
                if all(v < 2**52 for v in col.tolist()):
                    each = ", ".join(f"rank {r} has {int(v)}" for r, v in enumerate(col.tolist()))
                else:
                    each = f"rank {self.rank} has {value!r}; rank(s) {bad} differ from rank 0"
                raise ValueError(f"gpflow_kernels.distributed.{self.op}: the ranks disagree on {name} ({each}); "
                                 "every rank must pass the same")
        base = 2 + _MAX_FIELDS
        self.sizes = [[int(v) for v in allv[:, base + k].tolist()] for k in range(len(sizes))]
        return self


def _fields(x: Tensor, grads: Sequence[Optional[Tensor]], **extra) -> List[Tuple[str, object]]:
    """The fields every rank must agree on. ``grads``: the point tensors whose requires_grad must
    agree too (the backward ring carries a gradient for a block only if its owner needs one)."""
    out = [("the batch shape", tuple(x.shape[:-2])), ("the point dimension D", x.shape[-1]),
           ("the dtype", str(x.dtype)),
           ("which inputs require grad", tuple(None if t is None else bool(t.requires_grad) for t in grads))]
    return out + list(extra.items())


def _agree(op: str, group, check, fields_of, sizes_of):
    """Run the local ``check`` (which returns the checked tensors), then agree with every rank.

    A check that fails still takes part in the all-gather (with an error flag), so that the other
    ranks raise too instead of waiting in the next collective.
    """
    ag = _Agreement(op, group)
    try:
        checked = check()
        fields, sizes = fields_of(checked), sizes_of(checked)
        err = None
    except (ValueError, TypeError) as e:
        checked, fields, sizes, err = None, [], [], e
    ag.gather(fields, sizes, err)
    return checked, ag


#: Length of the agreement vector: every rank sends the same length, a failing rank zeros.
_MAX_FIELDS, _MAX_SIZES = 12, 4


def _check_total(op: str, name: str, sizes: List[int], at_least: int = 1) -> int:
    total = sum(sizes)
    if total < at_least:
        raise ValueError(f"gpflow_kernels.distributed.{op}: {name} has {total} points over all ranks "
                         f"(shards {sizes}); at least {at_least} needed")
    return total


# --------------------------------------------------------------------------------------------
# the ring


class _Ring:
    """Blocks of one point set travelling rank r -> r + 1; ``sizes[q]`` is rank q's block length."""

    def __init__(self, group, rank: int, world: int, sizes: List[int]):
        self.group, self.rank, self.world, self.sizes = group, rank, world, sizes
        self.next = dist.get_global_rank(group, (rank + 1) % world) if group is not None else (rank + 1) % world
        self.prev = dist.get_global_rank(group, (rank - 1) % world) if group is not None else (rank - 1) % world

    def owner(self, s: int) -> int:
        """Whose block this rank holds at step s."""
        return (self.rank - s) % self.world

    def exchange(self, send: Sequence[Optional[Tensor]], recv_shapes: Sequence[Optional[Tuple[int, ...]]], like: Tensor,
                 tag: int):
        """Start sending ``send`` to the next rank and receiving tensors of ``recv_shapes`` from the
        previous one. Empty tensors are not sent (both sides know the sizes). Returns (buffers, wait)."""
        ops_ = []
        for t in send:
            if t is not None and t.numel():
                ops_.append(dist.P2POp(dist.isend, t.contiguous(), self.next, self.group, tag))
        bufs = []
        for shp in recv_shapes:
            if shp is None:
                bufs.append(None)
                continue
            b = like.new_empty(shp)
            bufs.append(b)
            if b.numel():
                ops_.append(dist.P2POp(dist.irecv, b, self.prev, self.group, tag))
        reqs = dist.batch_isend_irecv(ops_) if ops_ else []

        def wait():
            for r in reqs:
                r.wait()

        return bufs, wait


def _block_shapes(ring: _Ring, owner: int, proto: Sequence[Optional[Tensor]]):
    """Shapes of rank ``owner``'s block of each tensor in ``proto`` (B, M_owner, ...)."""
    m = ring.sizes[owner]
    return [None if t is None else (t.shape[0], m) + tuple(t.shape[2:]) for t in proto]


def _ring_forward(ring: _Ring, local: Sequence[Optional[Tensor]], compute, tag: int = 11):
    """Call compute(block tensors) for every rank's block, overlapping the transfers with it."""
    cur = list(local)
    for s in range(ring.world):
        wait = None
        if s < ring.world - 1:
            nxt, wait = ring.exchange(cur, _block_shapes(ring, ring.owner(s + 1), local), local[0], tag)
        if ring.sizes[ring.owner(s)]:
            compute(cur)
        if wait is not None:
            wait()
            cur = nxt


def _ring_backward(ring: _Ring, local: Sequence[Optional[Tensor]], needs: Sequence[bool], grads_of):
    """Gradients of the local block's tensors, summed over every rank's contribution.

    ``grads_of(block)`` returns one gradient per tensor of ``local`` where ``needs`` says so
    (else None), shaped like that block (zeros when this rank contributes nothing). ``needs`` is
    the same on every rank (the ops agree on requires_grad first), so every rank sends and
    receives the same accumulators. The block data travel ahead, prefetched as in the forward pass;
    each block's accumulator follows one hop behind and is back at its owner after W hops.
    """
    cur = list(local)
    acc_in, acc_wait = None, None
    for s in range(ring.world):
        owner = ring.owner(s)
        wait = None
        if s < ring.world - 1:
            nxt, wait = ring.exchange(cur, _block_shapes(ring, ring.owner(s + 1), local), local[0], 21)
        contrib = grads_of(cur)
        if acc_wait is not None:
            acc_wait()
            contrib = [c if a is None else a.add_(c) for a, c in zip(acc_in, contrib)]
        if ring.world == 1:
            return contrib
        # The accumulator of block (r − s) goes on to r + 1; this rank receives that of block (r − s − 1).
        want = [shp if need else None for shp, need in zip(_block_shapes(ring, (owner - 1) % ring.world, local), needs)]
        acc_in, acc_wait = ring.exchange([c if need else None for c, need in zip(contrib, needs)], want, local[0], 22)
        if wait is not None:
            wait()
            cur = nxt
    acc_wait()
    return acc_in


# --------------------------------------------------------------------------------------------
# autograd nodes


class _RingPair(torch.autograd.Function):
    """Σ over every rank's block of impl.<fwd>(kernel, x, block_y, block_w, s2) for the local rows x."""

    @staticmethod
    def forward(ctx, impl, kernel, s2, ring, names, x, y, w):
        fwd, bwd = names
        ctx.impl, ctx.kernel, ctx.ring, ctx.bwd = impl, kernel, ring, bwd
        ctx.save_for_backward(s2, x, y, w)
        width = x.shape[-1] if fwd == "grad_sum" else (1 if w is None else w.shape[-1])
        out = x.new_zeros(x.shape[0], x.shape[1], width)

        def compute(block):
            if x.shape[1]:  # an empty local shard still passes the blocks on
                out.add_(getattr(impl, fwd)(kernel, x, block[0], block[1], s2))

        _ring_forward(ring, [y, w], compute)
        return out

    @staticmethod
    @_first_order_only
    def backward(ctx, g):
        s2, x, y, w = ctx.saved_tensors
        need_x, need_y, need_w = ctx.needs_input_grad[5:8]
        need_w = need_w and w is not None
        g = g.contiguous()
        gx = torch.zeros_like(x) if need_x else None
        bwd = getattr(ctx.impl, ctx.bwd)

        def grads_of(block):
            yb, wb = block
            gyb = torch.zeros_like(yb) if need_y else None
            gwb = torch.zeros_like(wb) if need_w else None
            if x.shape[1] and yb.shape[1]:
                a, b, c = bwd(ctx.kernel, x, yb, wb, s2, g, (need_x, need_y, need_w))
                if a is not None:
                    gx.add_(a)
                gyb = gyb if b is None else b
                gwb = gwb if c is None else c
            return gyb, gwb

        if need_y or need_w:
            gy, gw = _ring_backward(ctx.ring, [y, w], [need_y, need_w], grads_of)
        else:
            _ring_forward(ctx.ring, [y, w], grads_of)
            gy = gw = None
        return None, None, None, None, None, gx, gy, gw


def _merge(mu: Optional[Tensor], lse: Optional[Tensor], mu_b: Tensor, lse_b: Tensor):
    """Combine two soft-assignment means with their log-normalisers (one convention)."""
    if mu is None:
        return mu_b, lse_b
    m = torch.maximum(lse, lse_b)
    wa, wb = torch.exp(lse - m), torch.exp(lse_b - m)
    tot = wa + wb
    return (mu * wa[..., None] + mu_b * wb[..., None]) / tot[..., None], m + torch.log(tot)


class _RingSoftmax(torch.autograd.Function):
    """μ_i = Σ_j softmax_j(−|x_i − y_j|²/(2σ²)) y_j over every rank's block of y."""

    @staticmethod
    def forward(ctx, impl, s2, ring, x, y):
        ctx.impl, ctx.ring = impl, ring
        state = [None, None]

        def compute(block):
            if x.shape[1]:
                mu_b, lse_b = _block_softmax(impl, x, block[0], s2)
                state[0], state[1] = _merge(state[0], state[1], mu_b, lse_b)

        _ring_forward(ring, [y], compute)
        mu, lse = state
        if mu is None:  # no local rows
            mu, lse = torch.zeros_like(x), x.new_zeros(x.shape[:2])
        ctx.save_for_backward(s2, x, y, lse, mu)
        return mu

    @staticmethod
    @_first_order_only
    def backward(ctx, g):
        s2, x, y, lse, mu = ctx.saved_tensors
        impl = ctx.impl
        need_x, need_y = ctx.needs_input_grad[3:5]
        g = g.contiguous()
        gx = torch.zeros_like(x) if need_x else None

        def grads_of(block):
            yb = block[0]
            gyb = torch.zeros_like(yb) if need_y else None
            if not (x.shape[1] and yb.shape[1]):
                return (gyb,)
            native = lse * impl.LSE_UNIT
            gxb, b = impl.softmax_mean_backward(x, yb, s2, native, mu, g, (need_x, need_y))
            if gxb is not None:
                # The backends compute Σ_{j∈b} c_ij (y_j − μ_i)/σ² with the global μ_i passed in,
                # so the blocks' results simply add up to the full x gradient.
                gx.add_(gxb)
            return (gyb if b is None else b,)

        if need_y:
            (gy,) = _ring_backward(ctx.ring, [y], [True], grads_of)
        else:
            _ring_forward(ctx.ring, [y], grads_of)
            gy = None
        return None, None, None, gx, gy


def _block_softmax(impl, x, yb, s2):
    """(μ_b, lse_b) of one block, lse_b = log Σ_{j∈b} exp(−r²_ij/(2σ²)) in natural units (every
    backend's logits are exact, so the blocks share one convention)."""
    mu_b, lse_b = impl.softmax_mean(x, yb, s2)
    return mu_b, lse_b / impl.LSE_UNIT


class _AllReduceSum(torch.autograd.Function):
    """Σ over ranks. Backward: ``"identity"`` when every rank backpropagates the same global value
    (``mmd2``), ``"sum"`` when each rank backpropagates its own local loss and the global loss is
    their sum (a total used inside a local result: the adjoint sums the ranks' gradients)."""

    @staticmethod
    def forward(ctx, t, group, backward):
        ctx.group, ctx.mode = group, backward
        out = t.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, g):
        if ctx.mode == "sum":
            g = g.clone()
            dist.all_reduce(g, group=ctx.group)
        return g, None, None


# --------------------------------------------------------------------------------------------
# shared preparation


def _all_sum(t: Tensor, group, dev: torch.device) -> Tensor:
    """Σ over ranks of a small tensor (no gradient)."""
    buf = t.detach().to(dev).clone()
    dist.all_reduce(buf, group=group)
    return buf.to(t.device)


def _median_pool(pools: Sequence[Tensor], sizes: Sequence[List[int]], rank: int, group, dev) -> Tensor:
    """The points the single-process median heuristic looks at, assembled on every rank.

    The single-process op pools the concatenations (pool 0 over all ranks, then pool 1 ...) and,
    above ``_bandwidth.MEDIAN_POINTS`` points, keeps a fixed random subset (seed 0). Each rank
    writes the chosen points it holds into a zero buffer of that subset's size and the buffers are
    summed (exact: every entry has one non-zero writer).
    """
    totals = [sum(s) for s in sizes]
    total = sum(totals)
    ref = pools[0]
    wdtype = torch.float64 if ref.dtype == torch.float64 else torch.float32
    if total > _bandwidth.MEDIAN_POINTS:
        idx = torch.randperm(total, generator=torch.Generator().manual_seed(0))[: _bandwidth.MEDIAN_POINTS]
    else:
        idx = torch.arange(total)
    buf = torch.zeros(ref.shape[0], idx.numel(), ref.shape[-1], dtype=wdtype)
    base = 0
    for p, pool in enumerate(pools):
        start = base + sum(sizes[p][:rank])
        n = sizes[p][rank]
        sel = ((idx >= start) & (idx < start + n)).nonzero().flatten()
        if sel.numel():
            buf[:, sel] = pool.detach()[:, (idx[sel] - start).to(pool.device)].to(wdtype).cpu()
        base += totals[p]
    buf = buf.to(dev)
    dist.all_reduce(buf, group=group)
    return buf.to(ref.device)


def _resolve(bandwidth, pools, sizes, ag: _Agreement, cd, device, scale=None) -> Tensor:
    if isinstance(bandwidth, str) and bandwidth == "median":
        z = _median_pool(pools, sizes, ag.rank, ag.group, ag.dev)
        return _bandwidth.resolve("median", [z], cd, device, scale=scale)
    return _bandwidth.resolve(bandwidth, pools, cd, device, scale=scale)


def _ring(ag: _Agreement, sizes: List[int]) -> _Ring:
    return _Ring(ag.group, ag.rank, ag.world, sizes)


def _pair(impl, kern, s2, ring, names, x, y, w):
    if ring.world == 1:  # no transfers: the single-process node
        node = ops._Integral if names[0] == "integral" else ops._GradSum
        return node.apply(impl, kern, s2, x, y, w)
    return _RingPair.apply(impl, kern, s2, ring, names, x, y, w)


_INTEGRAL = ("integral", "integral_backward")
_GRADSUM = ("grad_sum", "grad_sum_backward")


# --------------------------------------------------------------------------------------------
# public ops


def kernel_integral(x: Tensor, y: Tensor, v: Optional[Tensor] = None, *, kernel: Union[str, Kernel] = "gaussian",
                    bandwidth: Bandwidth = 1.0, backend: str = "auto", group=None) -> Tensor:
    """Sharded ``gpflow_kernels.kernel_integral``: Σ_j k(x_i, y_j) v_j over the y (and v) of every rank.

    x: (..., N_r, D) local queries; y: (..., M_r, D) and v: (..., M_r, P) or (..., M_r) local shards.
    Returns the local rows (..., N_r, P) or (..., N_r).
    """

    def check():
        xx, yy = _checks.point_pair("x", x, "y", y, allow_empty=True)
        vv, squeeze = v, True
        if vv is not None:
            if isinstance(vv, torch.Tensor) and vv.dim() == yy.dim():
                vv = _checks.per_point("v", vv, "y", yy, trailing=vv.shape[-1])
                squeeze = False
            else:
                vv = _checks.per_point("v", vv, "y", yy, trailing=None).unsqueeze(-1)
        kern = get_kernel(kernel)
        _bandwidth_check(bandwidth)
        return xx, yy, vv, squeeze, kern, _impl(backend, xx, kern)

    (xx, yy, vv, squeeze, kern, impl), ag = _agree(
        "kernel_integral", group, check,
        lambda c: _fields(c[0], [c[0], c[1], c[2]], kernel=_kernel_key(c[4]), bandwidth=_bandwidth_key(bandwidth),
                          v=None if c[2] is None else (c[2].shape[-1], c[3])),
        lambda c: [c[0].shape[-2], c[1].shape[-2]])
    _check_total("kernel_integral", "y", ag.sizes[1])
    cd = _compute_dtype(xx.dtype)
    xf, yf = _flat(xx, 2, cd), _flat(yy, 2, cd)
    s2 = _resolve(bandwidth, [xf, yf], ag.sizes, ag, cd, xx.device)
    out = _pair(impl, kern, s2, _ring(ag, ag.sizes[1]), _INTEGRAL, xf, yf, _flat(vv, 2, cd))
    out = out.reshape(tuple(xx.shape[:-1]) + (out.shape[-1],))
    if squeeze:
        out = out.squeeze(-1)
    return ops._cast_back("kernel_integral", out, xx.dtype, bandwidth)


def _bandwidth_check(bandwidth) -> None:
    """The local part of the bandwidth checks (its value is resolved after the agreement)."""
    if isinstance(bandwidth, str):
        if bandwidth != "median":
            raise ValueError(f'bandwidth must be a positive number, a list or 1-d tensor of them, or "median", got {bandwidth!r}')
        return
    _bandwidth.resolve(bandwidth, [], torch.float64, "cpu")


def mmd_field(x: Tensor, y: Tensor, *, kernel: Union[str, Kernel] = "gaussian", bandwidth: Bandwidth = 1.0,
              x_ref: Optional[Tensor] = None, weights: Optional[Tensor] = None, backend: str = "auto",
              group=None) -> Tensor:
    """Sharded ``gpflow_kernels.mmd_field``: ∇h at the local x, h the witness between all ranks' y
    (weighted by all ranks' ``weights``, normalised by their global sum) and all ranks' x_ref
    (default: all ranks' x). Returns (..., N_r, D)."""

    def check():
        xx, yy = _checks.point_pair("x", x, "y", y, allow_empty=True)
        rr = None
        if x_ref is not None:
            _, rr = _checks.point_pair("x", xx, "x_ref", x_ref, allow_empty=True)
        ww = None
        if weights is not None:
            ww = _checks.per_point("weights", weights, "y", yy, trailing=None)
            if bool((ww < 0).any()):
                raise ValueError("weights must be >= 0 with a positive sum over the M points of y")
        kern = get_kernel(kernel)
        _bandwidth_check(bandwidth)
        return xx, yy, rr, ww, kern, _impl(backend, xx, kern)

    (xx, yy, rr, ww, kern, impl), ag = _agree(
        "mmd_field", group, check,
        lambda c: _fields(c[0], [c[0], c[1], c[2], c[3]], kernel=_kernel_key(c[4]),
                          bandwidth=_bandwidth_key(bandwidth), x_ref=c[2] is not None, weights=c[3] is not None),
        lambda c: [c[0].shape[-2], c[1].shape[-2], (c[0] if c[2] is None else c[2]).shape[-2]])
    _check_total("mmd_field", "y", ag.sizes[1])
    _check_total("mmd_field", "x_ref" if rr is not None else "x", ag.sizes[2])
    cd = _compute_dtype(xx.dtype)
    xf, yf = _flat(xx, 2, cd), _flat(yy, 2, cd)
    rf = xf if rr is None else _flat(rr, 2, cd)
    s2 = _resolve(bandwidth, [xf, yf], ag.sizes[:2], ag, cd, xx.device)
    M, L = sum(ag.sizes[1]), sum(ag.sizes[2])
    if ww is None:
        attract = _pair(impl, kern, s2, _ring(ag, ag.sizes[1]), _GRADSUM, xf, yf, None) / M
    else:
        wf = _flat(ww, 1, cd)
        total = _AllReduceSum.apply(wf.sum(-1, keepdim=True), ag.group, "sum") if ag.world > 1 else wf.sum(-1, keepdim=True)
        if not bool((total > 0).all()):
            raise ValueError("weights must be >= 0 with a positive sum over the M points of y (summed over all ranks)")
        attract = _pair(impl, kern, s2, _ring(ag, ag.sizes[1]), _GRADSUM, xf, yf, wf / total)
    repel = _pair(impl, kern, s2, _ring(ag, ag.sizes[2]), _GRADSUM, xf, rf, None) / L
    return ops._cast_back("mmd_field", (attract - repel).reshape(xx.shape), xx.dtype, bandwidth)


def mmd2(x: Tensor, y: Tensor, *, kernel: Union[str, Kernel] = "gaussian", bandwidth: Bandwidth = 1.0,
         unbiased: bool = False, backend: str = "auto", group=None) -> Tensor:
    """Sharded ``gpflow_kernels.mmd2`` between all ranks' x and all ranks' y: the global value, shape
    (...), on every rank. Its backward gives each rank the gradient with respect to its own shards
    (every rank must run it, with the same upstream gradient)."""

    def check():
        xx, yy = _checks.point_pair("x", x, "y", y, allow_empty=True)
        if not isinstance(unbiased, bool):
            raise TypeError(f"unbiased must be a bool, got {type(unbiased).__name__}")
        kern = get_kernel(kernel)
        _bandwidth_check(bandwidth)
        return xx, yy, kern, _impl(backend, xx, kern)

    (xx, yy, kern, impl), ag = _agree(
        "mmd2", group, check,
        lambda c: _fields(c[0], [c[0], c[1]], kernel=_kernel_key(c[2]), bandwidth=_bandwidth_key(bandwidth),
                          unbiased=unbiased),
        lambda c: [c[0].shape[-2], c[1].shape[-2]])
    need = 2 if unbiased else 1
    N = _check_total("mmd2", "x", ag.sizes[0], need)
    M = _check_total("mmd2", "y", ag.sizes[1], need)
    cd = _compute_dtype(xx.dtype)
    xf, yf = _flat(xx, 2, cd), _flat(yy, 2, cd)
    s2 = _resolve(bandwidth, [xf, yf], ag.sizes, ag, cd, xx.device)
    rx, ry = _ring(ag, ag.sizes[0]), _ring(ag, ag.sizes[1])

    # Every rank must enter every ring (even with no local rows): the rings are collectives.
    kxx, kyy, kxy = _ring_total(impl, kern, s2, rx, xf, xf), _ring_total(impl, kern, s2, ry, yf, yf), \
        _ring_total(impl, kern, s2, ry, xf, yf)
    if unbiased:
        k0 = kern.value_at_zero() * s2.shape[1]
        n, m = xf.shape[1], yf.shape[1]
        local = (kxx - n * k0) / (N * (N - 1)) + (kyy - m * k0) / (M * (M - 1)) - 2.0 * kxy / (N * M)
    else:
        local = kxx / (N * N) + kyy / (M * M) - 2.0 * kxy / (N * M)
    val = local if ag.world == 1 else _AllReduceSum.apply(local, ag.group, "identity")
    return ops._cast_back("mmd2", val.reshape(xx.shape[:-2]), xx.dtype, bandwidth)


def _ring_total(impl, kern, s2, ring, a, b) -> Tensor:
    """Σ_i Σ_j k(a_i, b_j) for the local rows a against every rank's b: (B,)."""
    return _pair(impl, kern, s2, ring, _INTEGRAL, a, b, None).sum((1, 2))


def _kde(op: str, x, y, bandwidth, backend, group):
    def check():
        xx, yy = _checks.point_pair("x", x, "y", y, allow_empty=True)
        _bandwidth.single(bandwidth)
        _bandwidth_check(bandwidth)
        return xx, yy, _impl(backend, xx)

    (xx, yy, impl), ag = _agree(op, group, check,
                                lambda c: _fields(c[0], [c[0], c[1]], bandwidth=_bandwidth_key(bandwidth)),
                                lambda c: [c[0].shape[-2], c[1].shape[-2]])
    _check_total(op, "y", ag.sizes[1])
    cd = _compute_dtype(xx.dtype)
    xf, yf = _flat(xx, 2, cd), _flat(yy, 2, cd)
    s2 = _resolve(bandwidth, [xf, yf], ag.sizes, ag, cd, xx.device)
    if ag.world == 1:
        mu = ops._SoftmaxMean.apply(impl, s2, xf, yf)
    else:
        mu = _RingSoftmax.apply(impl, s2, _ring(ag, ag.sizes[1]), xf, yf)
    return xx, xf, s2, mu


def kde_denoiser(x: Tensor, y: Tensor, *, bandwidth: Bandwidth, backend: str = "auto", group=None) -> Tensor:
    """Sharded ``gpflow_kernels.kde_denoiser``: E[y | x] over all ranks' y, for the local x: (..., N_r, D)."""
    xx, xf, s2, mu = _kde("kde_denoiser", x, y, bandwidth, backend, group)
    return ops._cast_back("kde_denoiser", mu.reshape(xx.shape), xx.dtype, bandwidth)


def kde_score(x: Tensor, y: Tensor, *, bandwidth: Bandwidth, backend: str = "auto", group=None) -> Tensor:
    """Sharded ``gpflow_kernels.kde_score``: the score of all ranks' y convolved with N(0, σ² I), at the
    local x: (..., N_r, D)."""
    xx, xf, s2, mu = _kde("kde_score", x, y, bandwidth, backend, group)
    return ops._cast_back("kde_score", ((mu - xf) / s2.view(-1, 1, 1)).reshape(xx.shape), xx.dtype, bandwidth)


def svgd_field(x: Tensor, score: Tensor, *, kernel: Union[str, Kernel] = "gaussian", bandwidth: Bandwidth = "median",
               backend: str = "auto", group=None) -> Tensor:
    """Sharded ``gpflow_kernels.svgd_field``: φ at the local particles, the sum running over every
    rank's particles and scores, N the global particle count (also in the median rule)."""

    def check():
        xx = _checks.points("x", x, allow_empty=True)
        ss = _checks.per_point("score", score, "x", xx, trailing=xx.shape[-1])
        kern = get_kernel(kernel)
        _bandwidth_check(bandwidth)
        return xx, ss, kern, _impl(backend, xx, kern)

    (xx, ss, kern, impl), ag = _agree(
        "svgd_field", group, check,
        lambda c: _fields(c[0], [c[0], c[1]], kernel=_kernel_key(c[2]), bandwidth=_bandwidth_key(bandwidth)),
        lambda c: [c[0].shape[-2]])
    N = _check_total("svgd_field", "x", ag.sizes[0])
    cd = _compute_dtype(xx.dtype)
    xf, sf = _flat(xx, 2, cd), _flat(ss, 2, cd)
    s2 = _resolve(bandwidth, [xf], ag.sizes, ag, cd, xx.device, scale=_bandwidth.svgd_scale(N))
    ring = _ring(ag, ag.sizes[0])
    drive = _pair(impl, kern, s2, ring, _INTEGRAL, xf, xf, sf)
    repulse = _pair(impl, kern, s2, ring, _GRADSUM, xf, xf, None)
    return ops._cast_back("svgd_field", ((drive - repulse) / N).reshape(xx.shape), xx.dtype, bandwidth)


# --------------------------------------------------------------------------------------------
# sharding helper


def shard_bounds(n: int, world: int, rank: int) -> Tuple[int, int]:
    """[start, stop) of rank's share of n items split as evenly as possible, in rank order."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)
