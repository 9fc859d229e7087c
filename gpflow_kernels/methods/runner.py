"""The main job: train a method with checkpoints, sample, measure, draw.

``run_method`` writes into ``out`` (through :class:`.outdir.OutDir`: the folder appears with the
first file, and every file is written whole or not at all):
- ``checkpoint.pt``: networks, optimisers, the step reached, the RNG states (which also fix the data
  order) and the history, saved every ``ckpt_every`` steps, at the end of training and when a
  signal stops the run. Ctrl-C (SIGINT) or SIGTERM during training only sets a flag: the step in
  progress finishes and the checkpoint is taken at that step boundary, so ``resume=True`` continues
  exactly where the run stopped and ends bit-identical to an uninterrupted run (same machine,
  threads and versions). A second Ctrl-C stops at once, without saving the step in progress;
- ``samples.png``, ``trajectory.png`` and ``metrics.json`` (metrics of the untrained method and of
  the trained one, field evaluations per sample, training and sampling seconds), written last.
For Int-PMs the trajectory is the generator's outputs for fixed latents during training; for PMs
and flows it is the particles' path at generation time. Training-free runs (flows, or
``steps=0``) write nothing until they have every result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import torch

from . import get_method
from ..data import Dataset, load
from ..data.stream import DataError
from .metrics import evaluate, feature_space
from .nll import held_out_nll
from .options import COMPARE_DEFAULT
from .outdir import CHECKPOINT, Interrupted, NoWrites, OutDir, RunError, RunFailed, check, resolve_resume
from .parallel import Parallel, current, rank_seed, wrap_networks
from .progress import Progress
from .signals import DeferredSignals

__all__ = ["run_method", "compare", "RunError", "RunFailed", "Interrupted", "CHECKPOINT", "COMPARE_DEFAULT"]

FORMAT = 1
_CKPT_KEYS = ("format", "method", "data", "seed", "options", "step", "state", "rng", "history", "snapshots", "init_metrics")


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
    except (RuntimeError, TypeError) as e:
        raise RunError(f"--device {device!r} is not a torch device: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"--device {device} asked for, but torch sees no CUDA device (torch {torch.__version__})")
    if dev.type not in ("cpu", "cuda"):
        raise RunError(f"--device {device!r}: only cpu and cuda are supported")
    return dev


def _my_rng(ck: Dict[str, Any], par: Parallel, out: Path) -> Dict[str, Any]:
    """This rank's random state from a checkpoint written by the same number of ranks."""
    world = ck.get("world", 1)
    if world != par.world:
        raise RunError(f"--resume: {out / CHECKPOINT} was written by {world} rank(s), this run has {par.world}; "
                       f"resume with --nproc-per-node {world} (or without torchrun for 1), or --overwrite")
    return ck["rng_ranks"][par.rank] if par.world > 1 else ck["rng"]


def read_checkpoint(path: Path, dev: torch.device, what: str = "", hint: str = "",
                    keys=_CKPT_KEYS) -> Dict[str, Any]:
    """The gpflow checkpoint at ``path`` (holding ``keys``); RunError naming the problem otherwise.
    what/hint: the message's prefix (e.g. "--resume: ") and its closing advice."""
    hint = f"; {hint}" if hint else ""
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of foreign files
            warnings.simplefilter("ignore")
            ck = torch.load(path, map_location=dev, weights_only=True)
    except Exception as e:  # garbage, truncated, empty or not a torch file: all one answer
        raise RunError(f"{what}{path} cannot be read as a checkpoint: it is empty, truncated or not written by "
                       f"gpflow ({type(e).__name__}){hint}") from None
    missing = [k for k in keys if not isinstance(ck, dict) or k not in ck]
    if missing:
        raise RunError(f"{what}{path} is not a gpflow checkpoint (no {', '.join(missing)}){hint}")
    return ck


def _load_checkpoint(path: Path, dev: torch.device, record: Dict[str, Any], total: int) -> Dict[str, Any]:
    """The checkpoint at ``path``, checked against this run; RunError naming the problem otherwise."""
    hint = "--overwrite starts the run over"
    ck = read_checkpoint(path, dev, "--resume: ", hint)
    theirs = {k: ck[k] for k in ("format", "method", "data", "seed")}
    ours = {k: record[k] for k in theirs}
    if theirs != ours:
        raise RunError(f"--resume: {path} is from another run ({theirs}), not {ours}; {hint} or match its options")
    # Options that leave the numbers unchanged may differ; options newer than the checkpoint match
    # when they have their default value (the run behaved as the default does).
    defaults = _option_defaults(record["method"])
    diff = sorted(k for k in record["options"] if k not in _FREE_OPTIONS
                  and ck["options"].get(k, defaults.get(k)) != record["options"][k])
    if diff:
        raise RunError(f"--resume with changed options {diff}: the checkpoint has "
                       + ", ".join(f"{k}={ck['options'].get(k)!r}" for k in diff) + f"; {hint}")
    if not isinstance(ck["step"], int) or ck["step"] > total:
        raise RunError(f"--resume: the checkpoint is at step {ck['step']}, past the {total} training steps asked for "
                       "now; pass --steps so that the total is at least the checkpoint's, or --overwrite")
    return ck


#: Options a resumed run may change: they do not change the numbers it computes ("stream" may go
#: from "on" to "auto" and back; whether the data are streamed is checked against the checkpoint).
_FREE_OPTIONS = ("steps", "workers", "stream")


def _option_defaults(method: str) -> Dict[str, Any]:
    return dataclasses.asdict(get_method(method).Options())


def _finite_stats(stats: Dict[str, float], step: int, dirs: OutDir, last_ckpt: Optional[int]) -> None:
    bad = {k: v for k, v in stats.items() if not math.isfinite(v)}
    if bad:
        raise RunFailed(f"training diverged at step {step}: " + ", ".join(f"{k} = {v}" for k, v in bad.items())
                        + f" (lower lr or check the options); {dirs.describe_checkpoint(last_ckpt)}")


def run_method(method: str, data: str, out, *, options: Optional[Dict[str, Any]] = None, seed: int = 0,
               device: str = "cpu", resume: Union[bool, str] = False, overwrite: bool = False,
               n_samples: Optional[int] = None,
               ckpt_every: int = 500, keep: int = 1, plots: bool = True, progress: bool = True,
               stop_after: Optional[int] = None, log: Callable[[str], None] = print,
               parallel: Optional[Parallel] = None) -> Dict[str, Any]:
    """Train (if the method trains), sample and measure ``method`` on the data set ``data``.

    options: method options (see ``gpflow methods``); n_samples: samples drawn for the metrics and
    figures (default 1000 for 2-D, 500 for digits); keep: how many checkpoints stay on disk (the
    latest is ``checkpoint.pt``; with keep > 1 the last ``keep`` are also ``checkpoint-STEP.pt``);
    resume: continue the run in ``out`` from its checkpoint (True), or "auto": continue it if there
    is one, else start (``outdir.resolve_resume``; a worker group restarted by torchrun does this
    unless resume=True); overwrite: start over in a folder that holds a run; stop_after: stop
    training after this many steps in this call (a checkpoint is written; used to test resuming).
    parallel: the ranks of a torchrun job (``parallel.from_env``; default: the initialised default
    process group, if any, else one process); see ``methods/parallel.py`` for what each rank does.
    Returns the metrics dictionary that is also written to ``out/metrics.json`` (by rank 0).

    Raises RunError (the run cannot start as asked; nothing written), RunFailed (it failed while
    running; the message says which checkpoint is left) or Interrupted (a signal stopped it). A
    first SIGINT/SIGTERM is acted on at the next safe point (between start-up stages, at a training
    step boundary, before the results are written; see ``signals.py``), a second one at once.
    """
    parallel = current() if parallel is None else parallel
    if not parallel.main:
        log, progress = (lambda _: None), False
    with DeferredSignals() as sig:
        return _run(sig, method, data, out, options=options, seed=seed, device=device, resume=resume,
                    overwrite=overwrite, n_samples=n_samples, ckpt_every=ckpt_every, keep=keep, plots=plots,
                    progress=progress, stop_after=stop_after, log=log, par=parallel)


def _startup_check(sig: DeferredSignals) -> None:
    if sig.signum is not None:
        raise Interrupted("interrupted during start-up; nothing was written")


def _run(sig, method, data, out, *, options, seed, device, resume, overwrite, n_samples, ckpt_every, keep, plots,
         progress, stop_after, log, par: Parallel) -> Dict[str, Any]:
    cls = get_method(method)
    resume, overwrite = resolve_resume(out, resume, overwrite)
    out = check(out, resume=resume, overwrite=overwrite)
    for name, v, low in (("ckpt_every", ckpt_every, 1), ("keep", keep, 1), ("seed", seed, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise RunError(f"{name} must be an integer >= {low}, got {v!r}")
    dev = resolve_device(device)
    if plots and par.main:
        from .plots import pyplot

        pyplot()  # fail before training, not after, when matplotlib is missing
    # A folder's images are resized as they are decoded (they may differ in size), so image_size is
    # read, checked, before the data; the options proper are built once the data are known.
    # So are the options that say how to read the data (streamed or loaded whole).
    given = {k: v for k, v in (options or {}).items() if k in ("image_size", "stream", "stream_subset")}
    early = cls.Options.build(cls.name, given, is_image=True)
    try:
        ds: Dataset = load(data, seed=seed, image_size=early.image_size or None, stream=early.stream,
                           stream_subset=early.stream_subset)
    except ValueError as e:  # a user's file that cannot be used: nothing is written
        raise RunError(str(e)) from None
    _startup_check(sig)
    opts = cls.make_options(ds, dict(options or {}))
    if opts.image_size:
        from ..data.images import resized

        try:
            ds = resized(ds, opts.image_size)
        except ValueError as e:
            raise RunError(str(e)) from None
    n = (500 if ds.is_image else 1000) if n_samples is None else n_samples
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise RunError(f"--samples must be an integer >= 2, got {n!r}")
    if getattr(opts, "arch", "mlp") == "conv" and not ds.is_image:
        raise RunError(f"option arch=conv needs image data; {data} holds points")
    if getattr(opts, "precision", "fp32") == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise RunError(f"precision=bf16: {torch.cuda.get_device_name(dev)} has no bfloat16 support")
    ds = ds.to(dev)
    torch.manual_seed(seed)
    m = cls(ds, opts, dev)
    m.par = par
    if getattr(opts, "ema", 0) > 0 and m.modules():
        from ..nets import EMA

        m.ema = EMA(m.modules(), opts.ema)
    if getattr(opts, "compile", False):
        for module in m.modules().values():
            module.compile()  # in place: parameter names, checkpoints and DDP unchanged
    n_train = len(ds.stream.indices) if ds.stream is not None else len(m.x_train)
    if getattr(opts, "batch", 0) and m.total_steps > 0 and n_train < par.world:
        raise RunError(f"{data} has {n_train} training rows for {par.world} ranks: every rank draws its minibatches "
                       "from its own share, so use fewer ranks or more data")
    if ds.stream is not None and getattr(opts, "batch", 0) and m.total_steps > 0:
        from ..data.stream import Batches

        rows = ds.stream.indices[slice(*par.shard(n_train))]
        # workers=-1: none on the CPU, where they would take cores from the training (measured in
        # RESULTS.md), 4 beside a GPU (at most half the cores), to read while it computes
        workers = opts.workers if opts.workers >= 0 else (min(4, max(1, (os.cpu_count() or 2) // 2)) if dev.type == "cuda" else 0)
        m.batches = Batches(ds.stream, rows, opts.batch, seed if par.main else rank_seed(seed, par.rank), dev, workers)
    if par.world > 1:
        m.batch_pool = m.x_train[slice(*par.shard(len(m.x_train)))]
        wrap_networks(m, par, dev)
        if not par.main:  # rank 0 keeps the run's stream: one rank is the single-process run
            torch.manual_seed(rank_seed(seed, par.rank))
    first, stop = par.shard(n)
    n_local = stop - first
    try:
        classifier = feature_space(ds, opts.features)
    except ValueError as e:
        raise RunError(str(e)) from None
    _startup_check(sig)
    # Methods that sample per global particle use one generator on every rank; the others a
    # stream per rank, so that the ranks' samples are independent.
    gen_seed = seed + 1 if (m.sharded_sampling or par.main) else rank_seed(seed + 1, par.rank)
    sample_gen = lambda: torch.Generator(device=dev).manual_seed(gen_seed)
    record = {"format": FORMAT, "method": method, "data": data, "seed": seed, "options": dataclasses.asdict(opts)}
    dirs = OutDir(out, overwrite=overwrite) if par.main else NoWrites(out)
    total = m.total_steps
    step, history, snapshots = 0, [], []
    init_metrics = None
    last_ckpt: Optional[int] = None
    if resume:
        ck = _load_checkpoint(out / CHECKPOINT, dev, record, total)
        if ("data.batches" in ck["state"]) != (m.batches is not None):
            was = "streamed" if "data.batches" in ck["state"] else "loaded whole"
            raise RunError(f"--resume: the checkpoint's run read {data} {was}, this one would not (option stream="
                           f"{opts.stream}); resume with --set stream={'on' if was == 'streamed' else 'off'}, or --overwrite")
        try:
            m.load_state_dict(ck["state"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise RunError(f"--resume: {out / CHECKPOINT} does not fit this method's networks ({str(e)[:200]}); "
                           "--overwrite starts the run over") from None
        _set_rng_state(_my_rng(ck, par, out), dev)
        step, history, snapshots, init_metrics = ck["step"], ck["history"], ck["snapshots"], ck["init_metrics"]
        last_ckpt = step
        log(f"resuming {method} on {data} from step {step}")
    else:
        # The untrained method (or, for flows, the starting particles) is the baseline to improve on.
        rng = _rng_state(dev)
        if total == 0:  # training-free: the starting particles
            x_init = m.prior(n_local, sample_gen())
        else:
            x_init = m.sample(n_local, sample_gen()).x
        init_metrics = evaluate(x_init, ds, classifier, par)
        _set_rng_state(rng, dev)
    _startup_check(sig)

    def checkpoint():
        state = {**record, "step": step, "state": m.state_dict(), "rng": _rng_state(dev), "history": history,
                 "snapshots": snapshots, "init_metrics": init_metrics, "world": par.world}
        if par.world > 1:  # every rank's stream, so that --resume continues each exactly (a collective)
            state["rng_ranks"] = par.gather_objects(_rng_state(dev))
        try:
            dirs.write(CHECKPOINT, lambda p: torch.save(state, p))
            dirs.keep_last(step, keep)
        except OSError as e:  # disk full, folder removed or made read-only while running
            raise RunFailed(f"writing the checkpoint at step {step} failed ({e.strerror or e}); "
                            f"{dirs.describe_checkpoint(last_ckpt)}") from None

    snap_every = max(1, total // 20)
    bar = Progress(total, f"{method}/{data}", enabled=progress, start=step)
    t0 = time.perf_counter()
    train_seconds = 0.0 if not history else history[-1].get("seconds", 0.0)
    import solvers  # the particle solvers' error type (layer 3 may import them)

    try:
        bf16 = getattr(opts, "precision", "fp32") == "bf16"
        while step < total and not par.any(sig.signum is not None) and not (stop_after is not None and step >= stop_after):
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                stats = m.train_step(step)
            if m.ema is not None:
                m.ema.update(m.modules(), step)
            _finite_stats(stats, step + 1, dirs, last_ckpt)
            step += 1
            if step % max(1, total // 50) == 0 or step == total:
                # under torchrun: the ranks' mean (each rank's loss is on its own minibatch)
                history.append({"step": step, **par.mean_stats(stats), "seconds": train_seconds + time.perf_counter() - t0})
            if m.kind == "Int-PM" and (step % snap_every == 0 or step == total):
                with torch.no_grad():
                    snapshots.append(m.sample(min(n_local, 256), torch.Generator(device=dev).manual_seed(seed + 2)).x.cpu())
            bar.update(step, stats)
            if step % ckpt_every == 0:
                checkpoint()
                last_ckpt = step
    except (solvers.NonFiniteError, DataError) as e:
        bar.close()
        raise RunFailed(f"training failed at step {step + 1}: {e}; {dirs.describe_checkpoint(last_ckpt)}") from None
    except KeyboardInterrupt:
        bar.close()
        raise Interrupted(f"interrupted twice: stopped in step {step + 1} without saving it; "
                          f"{dirs.describe_checkpoint(last_ckpt)}") from None
    bar.close()
    if m.batches is not None:
        m.batches.close()  # the reading workers are not needed past training
    train_seconds += time.perf_counter() - t0
    if history:
        history[-1]["seconds"] = train_seconds
    if total > 0 and last_ckpt != step:
        checkpoint()
        last_ckpt = step
    if par.any(sig.signum is not None):
        raise Interrupted(f"interrupted at step {step}/{total}: checkpoint saved in {out / CHECKPOINT}; "
                          "--resume continues the run exactly")
    if stop_after is not None and step < total:
        return {"stopped_at": step}
    try:
        # Sampling and the likelihood use the weights' moving average when there is one.
        with (m.ema.swapped(m.modules()) if m.ema is not None else contextlib.nullcontext()):
            return _finish(m, cls, method, data, ds, dev, dirs, record, classifier, sample_gen, n, n_local, total,
                           train_seconds, history, snapshots, init_metrics, checkpoint if total == 0 else None, plots,
                           opts, log, sig, par)
    except solvers.NonFiniteError as e:
        raise RunFailed(f"sampling failed: {e}; smaller step sizes (options step_size, eps, eta, guidance, "
                        f"sample_steps) keep particles finite; {dirs.describe_checkpoint(last_ckpt)}") from None
    except OSError as e:
        raise RunFailed(f"writing the results to {out} failed ({e.strerror or e}); "
                        f"{dirs.describe_checkpoint(last_ckpt)}") from None
    except (KeyboardInterrupt, _SignalledBeforeWrite):
        raise Interrupted("interrupted while sampling; " + (
            f"training is complete and saved in {out / CHECKPOINT}: --resume samples and measures it"
            if last_ckpt is not None else f"nothing was written to {out}")) from None


class _SignalledBeforeWrite(Exception):
    """A signal arrived while sampling; raised before the results are written."""


def _finish(m, cls, method, data, ds, dev, dirs, record, classifier, sample_gen, n, n_local, total, train_seconds,
            history, snapshots, init_metrics, checkpoint, plots, opts, log, sig, par) -> Dict[str, Any]:
    """Sample, measure and write the results (every file whole, metrics.json last)."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t1 = time.perf_counter()
    smp = m.sample(n_local, sample_gen(), trajectory=m.kind != "Int-PM" and plots)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    sample_seconds = time.perf_counter() - t1
    if par.any(not bool(torch.isfinite(smp.x).all())):
        raise RunFailed("the samples hold NaN or infinite values although training stayed finite; "
                        "lower lr or the step sizes")
    final = evaluate(smp.x, ds, classifier, par)
    metrics = {"method": method, "data": data, "kind": m.kind, "paper": cls.paper, "seed": record["seed"],
               "options": record["options"], "train_steps": total, "train_seconds": round(train_seconds, 3),
               "n_samples": n, "nfe": smp.nfe, "sample_seconds": round(sample_seconds, 4),
               "init": init_metrics, "final": final, "history": history}
    per_second = None
    if total > 0 and train_seconds > 0 and getattr(opts, "batch", 0):
        # Training examples drawn per second (batch × steps / seconds, all ranks together).
        per_second = opts.batch * total * par.world / train_seconds
        metrics["train_images_per_second" if ds.is_image else "train_points_per_second"] = round(per_second, 1)
    guided = method == "mmd-guidance" and opts.guidance
    if guided:
        metrics["unguided"] = evaluate(m.sample(n_local, sample_gen(), guidance=0.0).x, ds, classifier, par)
    nll = held_out_nll(m, ds, par, seed=record["seed"])
    if nll is not None:  # the guided sampler has no density: its NLL is the unguided model's
        (metrics["unguided"] if guided else final)["nll"] = nll["value"]
        metrics["nll"] = nll
    figures: Dict[str, bytes] = {}
    # Every rank takes part in the gathers (collectives); only rank 0 draws. ``plots`` is the same
    # on every rank, so is whether a path was kept.
    x_all = par.gather_rows(smp.x) if par.world > 1 and plots else smp.x
    path_all = smp.path
    if par.world > 1 and smp.path is not None:
        path_all = par.gather_rows(smp.path.transpose(0, 1)).transpose(0, 1)
    if plots and par.main:
        from .plots import samples_png, trajectory_png

        title = f"{method} on {data}: " + ", ".join(f"{k} {v:.4g}" for k, v in final.items())
        figures["samples.png"] = _png(samples_png, x_all, ds, title)
        if m.kind == "Int-PM":
            traj, label = torch.stack(snapshots), "training step"
        else:
            traj, label = path_all, "integration time"
        figures["trajectory.png"] = _png(trajectory_png, traj, ds, f"{method}: particle trajectories", label)
    if par.any(sig.signum is not None):  # the last safe point: nothing of the results is written yet
        raise _SignalledBeforeWrite
    if checkpoint is not None:  # training-free runs write their (step 0) checkpoint with the results
        checkpoint()
    for name, content in figures.items():
        dirs.write(name, lambda p, c=content: p.write_bytes(c))
    dirs.write_text("metrics.json", json.dumps(metrics, indent=2))
    init = metrics["init"]
    nll_text = f"; {'unguided ' if guided else ''}held-out NLL {nll['value']:.4g} {nll['units']}" if nll is not None else ""
    log(f"{method} on {data}: " + ", ".join(f"{k} {init[k]:.4g} -> {final[k]:.4g}" for k in final if k in init)
        + f"{nll_text}" + (f"; training {per_second:.0f} {'images' if ds.is_image else 'points'}/s" if per_second else "")
        + f"; {smp.nfe} field evaluations per sample, sampling {sample_seconds:.2f} s; wrote {dirs.path}")
    return metrics


def _png(draw, *args) -> bytes:
    buf = io.BytesIO()
    draw(buf, *args)
    return buf.getvalue()




def compare(data: str, out, *, methods=COMPARE_DEFAULT, steps: Optional[int] = None, seed: int = 0,
            device: str = "cpu", progress: bool = True, log: Callable[[str], None] = print,
            options: Optional[Dict[str, Dict[str, Any]]] = None) -> List[Dict[str, Any]]:
    """Run several methods with one training budget (``steps``, where they train) and tabulate them.
    ``options``: per-method option overrides (method name -> {option: value}).

    Writes ``out/METHOD/`` per method, ``out/compare.json`` and ``out/compare.md`` (a table in the
    manner of the GPM paper: PM vs Int-PM, quality, field evaluations per sample, sampling time).
    """
    out = check(out)
    for name in methods:
        get_method(name)
    main = current().main
    if not main:  # under torchrun only rank 0 writes and prints
        log, progress = (lambda _: None), False
    dirs = OutDir(out) if main else NoWrites(out)
    rows = []
    for name in methods:
        cls = get_method(name)
        opts = dict((options or {}).get(name, {}))
        if steps is not None and cls.kind != "flow":
            opts["steps"] = steps
        res = run_method(name, data, out / name, options=opts, seed=seed, device=device,
                         resume=(out / name / CHECKPOINT).exists(), progress=progress, log=log)
        rows.append({"method": name, "kind": res["kind"], **res["final"], "nfe": res["nfe"],
                     "sample_seconds": res["sample_seconds"], "train_seconds": res["train_seconds"]})
    dirs.write_text("compare.json", json.dumps(rows, indent=2))
    lines = compare_table(rows, data, seed, steps)
    dirs.write_text("compare.md", "\n".join(lines) + "\n")
    log("\n".join(lines))
    return rows


def compare_table(rows: List[Dict[str, Any]], data: str, seed: int, steps: Optional[int]) -> List[str]:
    """The Markdown lines of ``gpflow compare``'s table: a column per metric any method reports
    (— where a method has none, as nll for methods without a density)."""
    fixed = ("method", "kind", "nfe", "sample_seconds", "train_seconds")
    keys = list(dict.fromkeys(k for r in rows for k in r if k not in fixed))  # nll only where a method has one
    lines = [f"# {data}: methods compared (seed {seed}, training steps {steps if steps is not None else 'default'})", "",
             "| method | kind | " + " | ".join(keys) + " | field evals / sample | sampling s | training s |",
             "|---|---|" + "---|" * (len(keys) + 3)]
    for r in rows:
        lines.append(f"| {r['method']} | {r['kind']} | " + " | ".join(f"{r[k]:.4g}" if k in r else "—" for k in keys)
                     + f" | {r['nfe']} | {r['sample_seconds']:.3f} | {r['train_seconds']:.1f} |")
    if "nll" in keys:
        lines += ["", "nll: held-out negative log-likelihood by the probability-flow ODE (bits/dim on quantised "
                      "images such as uint8 or the digits, nats/dim otherwise); — where the method has no density."]
    return lines
