"""The main job: train a method with checkpoints, sample, measure, draw.

``run_method`` writes into ``out``:
- ``checkpoint.pt``: networks, optimisers, the step reached, torch's RNG state and the history,
  saved every ``ckpt_every`` steps, at the end of training and on Ctrl-C, so ``resume=True``
  continues exactly where the run stopped (the result equals an uninterrupted run's);
- ``samples.png``, ``trajectory.png`` and ``metrics.json`` (metrics of the untrained method and of
  the trained one, field evaluations per sample, training and sampling seconds).
For Int-PMs the trajectory is the generator's outputs for fixed latents during training; for PMs
and flows it is the particles' path at generation time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

from . import get_method
from .data import Dataset, load
from .metrics import digits_classifier, evaluate
from .progress import Progress

CHECKPOINT = "checkpoint.pt"
FORMAT = 1


class RunError(ValueError):
    """A run cannot start as asked (an option, the output folder or the checkpoint); the message says why."""


def _save(path: Path, obj: Dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a broken checkpoint


def _rng_state(device: torch.device) -> Dict[str, Any]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: Dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def resolve_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise RunError(f"--device {device!r} is not a torch device: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"--device {device} asked for, but torch sees no CUDA device (torch {torch.__version__})")
    return dev


def run_method(method: str, data: str, out, *, options: Optional[Dict[str, Any]] = None, seed: int = 0,
               device: str = "cpu", resume: bool = False, n_samples: Optional[int] = None,
               ckpt_every: int = 500, plots: bool = True, progress: bool = True,
               stop_after: Optional[int] = None, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Train (if the method trains), sample and measure ``method`` on the data set ``data``.

    options: method options (see ``gpflow methods``); n_samples: samples drawn for the metrics and
    figures (default 1000 for 2-D, 500 for digits); stop_after: stop training after this many
    steps in this call (a checkpoint is written; used to test resuming).
    Returns the metrics dictionary that is also written to ``out/metrics.json``.
    """
    cls = get_method(method)
    dev = resolve_device(device)
    if plots:
        from .plots import pyplot

        pyplot()  # fail before training, not after, when matplotlib is missing
    out = Path(out)
    ckpt_path = out / CHECKPOINT
    if ckpt_path.exists() and not resume:
        raise RunError(f"{out} already holds a run ({CHECKPOINT}); pass --resume to continue it or choose another --out")
    ds: Dataset = load(data, seed=seed)
    opts = cls.make_options(ds, dict(options or {}))
    n = n_samples or (500 if ds.is_image else 1000)
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise RunError(f"n_samples must be an integer >= 2, got {n!r}")
    ds = ds.to(dev)
    torch.manual_seed(seed)
    m = cls(ds, opts, dev)
    classifier = digits_classifier(ds) if ds.is_image else None
    sample_gen = lambda: torch.Generator(device=dev).manual_seed(seed + 1)
    record = {"format": FORMAT, "method": method, "data": data, "seed": seed, "options": dataclasses.asdict(opts)}
    step, history, snapshots = 0, [], []
    init_metrics = None
    if resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location=dev, weights_only=False)
        theirs = {k: ck.get(k) for k in ("format", "method", "data", "seed")}
        ours = {k: record[k] for k in theirs}
        if theirs != ours:
            raise RunError(f"{ckpt_path} is from another run ({theirs}), not {ours}")
        diff = {k for k in record["options"] if k != "steps" and ck["options"].get(k) != record["options"][k]}
        if diff:
            raise RunError(f"--resume with changed options {sorted(diff)}: the checkpoint has "
                           + ", ".join(f"{k}={ck['options'].get(k)!r}" for k in sorted(diff)))
        m.load_state_dict(ck["state"])
        _set_rng_state(ck["rng"], dev)
        step, history, snapshots, init_metrics = ck["step"], ck["history"], ck["snapshots"], ck["init_metrics"]
        log(f"resuming {method} on {data} from step {step}")
    else:
        out.mkdir(parents=True, exist_ok=True)
        # The untrained method (or, for flows, the starting particles) is the baseline to improve on.
        rng = _rng_state(dev)
        if m.total_steps == 0:  # training-free: the starting particles
            x_init = m.prior(n, sample_gen())
        else:
            x_init = m.sample(n, sample_gen()).x
        init_metrics = evaluate(x_init, ds, classifier)
        _set_rng_state(rng, dev)

    def checkpoint():
        _save(ckpt_path, {**record, "step": step, "state": m.state_dict(), "rng": _rng_state(dev),
                          "history": history, "snapshots": snapshots, "init_metrics": init_metrics})

    total = m.total_steps
    snap_every = max(1, total // 20)
    bar = Progress(total, f"{method}/{data}", enabled=progress, start=step)
    t0 = time.perf_counter()
    train_seconds = 0.0 if not history else history[-1].get("seconds", 0.0)
    stopped_early = False
    try:
        while step < total:
            if stop_after is not None and step >= stop_after:
                stopped_early = True
                break
            stats = m.train_step(step)
            step += 1
            if step % max(1, total // 50) == 0 or step == total:
                history.append({"step": step, **stats, "seconds": train_seconds + time.perf_counter() - t0})
            if m.kind == "Int-PM" and (step % snap_every == 0 or step == total):
                with torch.no_grad():
                    snapshots.append(m.sample(min(n, 256), torch.Generator(device=dev).manual_seed(seed + 2)).x.cpu())
            bar.update(step, stats)
            if step % ckpt_every == 0:
                checkpoint()
    except KeyboardInterrupt:
        checkpoint()
        log(f"\ninterrupted at step {step}/{total}; checkpoint saved in {ckpt_path}, continue with --resume")
        raise
    train_seconds += time.perf_counter() - t0
    if history:
        history[-1]["seconds"] = train_seconds
    checkpoint()
    if stopped_early:
        return {"stopped_at": step}

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t1 = time.perf_counter()
    smp = m.sample(n, sample_gen(), trajectory=m.kind != "Int-PM")
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    sample_seconds = time.perf_counter() - t1
    final = evaluate(smp.x, ds, classifier)
    metrics = {"method": method, "data": data, "kind": m.kind, "paper": cls.paper, "seed": seed,
               "options": record["options"], "train_steps": total, "train_seconds": round(train_seconds, 3),
               "n_samples": n, "nfe": smp.nfe, "sample_seconds": round(sample_seconds, 4),
               "init": init_metrics, "final": final, "history": history}
    if method == "mmd-guidance" and opts.guidance:
        metrics["unguided"] = evaluate(m.sample(n, sample_gen(), guidance=0.0).x, ds, classifier)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if plots:
        from .plots import samples_png, trajectory_png

        title = f"{method} on {data}: " + ", ".join(f"{k} {v:.4g}" for k, v in final.items())
        samples_png(out / "samples.png", smp.x, ds, title)
        if m.kind == "Int-PM":
            traj, label = torch.stack(snapshots), "training step"
        else:
            traj, label = smp.path, "integration time"
        trajectory_png(out / "trajectory.png", traj, ds, f"{method}: particle trajectories", label)
    log(f"{method} on {data}: " + ", ".join(f"{k} {init_metrics[k]:.4g} -> {final[k]:.4g}" for k in final)
        + f"; {smp.nfe} field evaluations per sample, sampling {sample_seconds:.2f} s; wrote {out}")
    return metrics


COMPARE_DEFAULT = ("edm", "disc-flow", "score-gan", "gan", "diffflow", "mmd-guidance", "mmd-flow")


def compare(data: str, out, *, methods=COMPARE_DEFAULT, steps: Optional[int] = None, seed: int = 0,
            device: str = "cpu", progress: bool = True, log: Callable[[str], None] = print) -> List[Dict[str, Any]]:
    """Run several methods with one training budget (``steps``, where they train) and tabulate them.

    Writes ``out/METHOD/`` per method, ``out/compare.json`` and ``out/compare.md`` (a table in the
    manner of the GPM paper: PM vs Int-PM, quality, field evaluations per sample, sampling time).
    """
    out = Path(out)
    for name in methods:
        get_method(name)
    rows = []
    for name in methods:
        cls = get_method(name)
        opts = {}
        if steps is not None and cls.kind != "flow":
            opts["steps"] = steps
        res = run_method(name, data, out / name, options=opts, seed=seed, device=device,
                         resume=(out / name / CHECKPOINT).exists(), progress=progress, log=log)
        rows.append({"method": name, "kind": res["kind"], **res["final"], "nfe": res["nfe"],
                     "sample_seconds": res["sample_seconds"], "train_seconds": res["train_seconds"]})
    (out / "compare.json").write_text(json.dumps(rows, indent=2))
    keys = [k for k in rows[0] if k not in ("method", "kind", "nfe", "sample_seconds", "train_seconds")]
    lines = [f"# {data}: methods compared (seed {seed}, training steps {steps if steps is not None else 'default'})", "",
             "| method | kind | " + " | ".join(keys) + " | field evals / sample | sampling s | training s |",
             "|---|---|" + "---|" * (len(keys) + 3)]
    for r in rows:
        lines.append(f"| {r['method']} | {r['kind']} | " + " | ".join(f"{r[k]:.4g}" for k in keys)
                     + f" | {r['nfe']} | {r['sample_seconds']:.3f} | {r['train_seconds']:.1f} |")
    (out / "compare.md").write_text("\n".join(lines) + "\n")
    log("\n".join(lines))
    return rows
