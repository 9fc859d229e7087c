"""A trained run, loaded back to draw samples: ``load_run`` and ``gpflow sample``.

``load_run(run_dir)`` rebuilds the method of a finished (or checkpointed) ``gpflow run`` from its
``checkpoint.pt``: the options and seed recorded there, the data set it names (methods read it at
sampling time: reference points, σ_data, the latent codes) and the networks, with the weights'
moving average in place when the run kept one (what the run itself sampled with).

``draw(m, n, seed)`` gives n samples whose i-th depends only on (seed, i): samples come in fixed
blocks of ``BLOCK``, block k drawn with its own generator seeded from (seed, k), and the last block
cut to n. So ``--batch`` (blocks per call), the number of ranks and n itself change how the work is
split, never a sample: one sample can be regenerated alone (``start=i``), and sampling split over
GPUs gives the same images. Methods whose particles interact while sampling (MMD guidance's
witness, DiffFlow's generated-data score) are systems of ``BLOCK`` particles per block: their law
is that of a BLOCK-particle run (ours, documented). Training-free flows have no model to sample
from and are refused.

``sample_to_file`` writes them, from rank 0 under torchrun (each rank draws its share of the
blocks): ``.npy`` or ``.pt`` (the points, (n, D), or images (n, C, H, W) in [-1, 1]) or, for
images, a folder of PNG files (``000000.png``, ...) that FID tools read. The file or folder
appears whole or not at all (written under a temporary name, then renamed).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch

from . import get_method
from ..data import load
from .base import Method
from .outdir import CHECKPOINT, RunError
from .parallel import SINGLE, Parallel

#: samples per block; each block has its own generator (see the module doc)
BLOCK = 256


def read_run(run_dir, device="cpu") -> Dict[str, Any]:
    """The checkpoint of the run in ``run_dir``; RunError (one line) when there is none to read."""
    from .runner import read_checkpoint

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir} is not a folder: give the --out folder of a 'gpflow run'")
    if not (run_dir / CHECKPOINT).is_file():
        raise RunError(f"{run_dir} holds no {CHECKPOINT}: it is not the folder of a trained 'gpflow run'")
    return read_checkpoint(run_dir / CHECKPOINT, torch.device(device),
                           keys=("format", "method", "data", "seed", "options", "step", "state"))


def load_run(run_dir, device: str = "cpu", options: Optional[Dict[str, Any]] = None) -> Method:
    """The method of the run in ``run_dir``, its networks loaded, ready for ``.sample(n, generator)``.

    options: overrides of the recorded options that only change how it samples (e.g.
    ``sample_steps``, ``churn``, ``sampler``); one that no longer fits the networks is refused.
    Raises RunError (one line) for a missing, foreign, truncated or incompatible checkpoint.
    """
    run_dir, dev = Path(run_dir), torch.device(device)
    ck = read_run(run_dir, dev)
    cls = get_method(ck["method"])
    if cls.kind == "flow":
        raise RunError(f"{run_dir} is a run of {ck['method']}, a training-free flow: it has no model to sample from; "
                       "its samples are the particles of one 'gpflow run ... --samples N'")
    recorded = dict(ck["options"])
    opts = {**recorded, **(options or {})}
    try:
        ds = load(ck["data"], seed=ck["seed"], image_size=opts.get("image_size") or None,
                  stream=opts.get("stream", "auto"), stream_subset=opts.get("stream_subset", 10_000))
    except ValueError as e:
        raise RunError(f"the run's data {ck['data']!r} cannot be read again ({e}); the sampler needs them") from None
    try:
        o = cls.make_options(ds, opts)
    except ValueError as e:
        raise RunError(f"--set: {e}") from None
    if getattr(o, "image_size", 0):
        from ..data.images import resized

        ds = resized(ds, o.image_size)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):  # the caller's RNG untouched
        torch.manual_seed(ck["seed"])
        m = cls(ds.to(dev), o, dev)
    state = ck["state"]
    try:
        for k, module in m.modules().items():
            module.load_state_dict(state[f"module.{k}"])
        if "ema" in state and getattr(o, "ema", 0) > 0:  # sample with the average, as the run did
            from ..nets import EMA

            ema = EMA(m.modules(), o.ema)
            ema.load_state_dict(state["ema"])
            for k, module in m.modules().items():
                module.load_state_dict(ema.shadow[k].state_dict())
    except (KeyError, RuntimeError, ValueError) as e:
        raise RunError(f"{run_dir / CHECKPOINT} does not fit {ck['method']}'s networks with these options "
                       f"({str(e)[:200]})") from None
    for module in m.modules().values():
        module.eval()
    shape = None
    if ds.is_image:  # (C, H, W) of the flattened images
        h, w = ds.image_shape
        shape = (ds.dim // (h * w), h, w)
    m.run_info = {"method": ck["method"], "data": ck["data"], "seed": ck["seed"], "step": ck["step"],
                  "is_image": ds.is_image, "shape": shape}
    return m


def block_generator(seed: int, k: int, device) -> torch.Generator:
    """Block k's generator: seeded from (seed, k) by a hash, so that nearby seeds and blocks do not
    give overlapping streams."""
    h = int.from_bytes(hashlib.sha256(f"gpflow-sample:{seed}:{k}".encode()).digest()[:8], "little") >> 1
    return torch.Generator(device=device).manual_seed(h)


@torch.no_grad()
def draw(m: Method, n: int, seed: int, *, start: int = 0, batch_blocks: int = 1,
         par: Parallel = SINGLE) -> torch.Tensor:
    """Samples start … start + n − 1 of (m, seed), this rank's share under ``par``: (n_local, D),
    float32 on the CPU.

    The blocks that hold those samples are split over the ranks in contiguous runs
    (``par.shard``: rank r the r-th), so the ranks' rows concatenated in rank order are the n samples in order. Each block is
    one call of ``m.sample`` with its own generator; ``batch_blocks`` blocks are kept on the device
    before they are moved off it together.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    first, last = start // BLOCK, (start + n - 1) // BLOCK
    lo, hi = par.shard(last + 1 - first)
    mine = range(first + lo, first + hi)
    out, pending = [], []
    for k in mine:
        x = m.sample(BLOCK, block_generator(seed, k, m.device)).x
        a, b = max(start, k * BLOCK) - k * BLOCK, min(start + n, (k + 1) * BLOCK) - k * BLOCK
        pending.append(x[a:b])
        if len(pending) >= batch_blocks:
            out += [p.float().cpu() for p in pending]
            pending = []
    out += [p.float().cpu() for p in pending]
    return torch.cat(out) if out else torch.empty(0, m.dim)


def _to_images(x: torch.Tensor, shape) -> torch.Tensor:
    """(n, C·H·W) in [-1, 1] as uint8 (n, H, W, C)."""
    c, h, w = shape
    img = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).reshape(-1, c, h, w)
    return img.permute(0, 2, 3, 1)


def _write_pngs(x: torch.Tensor, shape, folder: Path) -> None:
    from PIL import Image

    folder.mkdir()
    imgs = _to_images(x, shape).numpy()
    digits = max(6, len(str(len(imgs) - 1)))
    for i, im in enumerate(imgs):
        Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im).save(folder / f"{i:0{digits}d}.png")


def sample_to_file(run_dir, n: int, out, *, seed: Optional[int] = None, batch: int = 4096, device: str = "cpu",
                   options: Optional[Dict[str, Any]] = None, par: Parallel = SINGLE,
                   log: Callable[[str], None] = print) -> Path:
    """Draw n samples of the run in ``run_dir`` (seed: the run's own seed + 1, as the run sampled,
    by default) and write them to ``out`` (see the module doc) from rank 0; returns ``out``.
    batch: samples drawn before they are moved off the device (rounded to whole blocks)."""
    out = Path(out)
    kind = "npy" if out.suffix == ".npy" else "pt" if out.suffix == ".pt" else "png" if out.suffix == "" else None
    if kind is None:
        raise RunError(f"--out {out}: write .npy, .pt or a folder of PNG files (a path without a suffix)")
    if out.exists():
        raise RunError(f"--out {out} exists already; choose another path (nothing is overwritten)")
    if not out.parent.is_dir():
        raise RunError(f"--out {out}: the folder {out.parent} does not exist")
    if n < 1 or batch < 1:
        raise RunError(f"--n and --batch must be >= 1, got {n} and {batch}")
    m = load_run(run_dir, device, options)
    info = m.run_info
    if kind == "png" and not info["is_image"]:
        raise RunError(f"--out {out}: a folder of PNG files is for image runs; {info['data']} holds points (use .npy or .pt)")
    seed = info["seed"] + 1 if seed is None else seed
    x = draw(m, n, seed, batch_blocks=max(1, batch // BLOCK), par=par)
    if par.world > 1:
        x = par.gather_rows(x.to(m.device)).cpu()
    if not bool(torch.isfinite(x).all()):
        raise RunError("the samples hold NaN or infinite values; nothing was written")
    if not par.main:
        return out
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        if kind == "npy":
            with open(tmp, "wb") as f:
                np.save(f, x.numpy())
        elif kind == "pt":
            torch.save({"samples": x, "method": info["method"], "run": str(run_dir), "seed": seed,
                        "shape": info["shape"]}, tmp)
        else:
            _write_pngs(x, info["shape"], tmp)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        raise
    log(f"{info['method']} (step {info['step']}) from {run_dir}: {n} samples, seed {seed}, wrote {out}")
    return out
