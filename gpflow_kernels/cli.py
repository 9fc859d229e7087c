"""``gpflow`` (or ``python -m gpflow_kernels``): train, sample, measure and draw the papers' methods.

    gpflow methods                                  list the methods and their options
    gpflow run METHOD --data NAME --out DIR         train + sample + metrics.json + PNGs + checkpoint
    gpflow run METHOD --data points.npy --out DIR   the same on your (N, D) points (.npy .npz .pt .csv)
    gpflow run METHOD ... --resume [auto]           continue a run from its checkpoint (auto: if there is one)
    gpflow sample RUN_DIR --n N --out FILE          N samples of a trained run (.npy, .pt or a folder of PNGs)
    gpflow run METHOD ... --overwrite               start over in a folder that holds a run
    gpflow compare --data NAME --out DIR            several methods, one budget, a table
    gpflow check [--quick] [--device cuda] [--json PATH] [--jsonl PATH]   every op and backend against float64

Every argument, option and the output folder are checked before torch is imported (torch takes
seconds to import), so a mistake is reported at once and before anything is written. Failures are
one line on stderr, ``gpflow: error: ...``, with exit code 2 when the run could not start as asked,
1 when it failed while running, 130 when a signal stopped it; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from typing import Any, Dict, List, Optional, Tuple

from .data import paths as data_paths
from .methods.options import COMPARE_DEFAULT, DATA_NAMES, IMAGE_DATA, OPTIONS, OptionError
from .methods.outdir import Interrupted, RunError, RunFailed, check, resolve_resume
from .methods.signals import DeferredSignals
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (argparse prints its usage block first)."""

    def error(self, message):
        self.exit(2, f"gpflow: error: {message} (see 'gpflow --help')\n")


def parse_sets(method: str, items: List[str]) -> Dict[str, Any]:
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise RunError(f"--set takes KEY=VALUE, got {item!r}")
        out[key.strip()] = OPTIONS[method].parse(method, key.strip(), value.strip())
    return out


def compare_sets(names: List[str], items: List[str]) -> Dict[str, Dict[str, Any]]:
    """compare's --set: each option goes to the methods that have it; one no method has is an error."""
    per = {name: {} for name in names}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise RunError(f"--set takes KEY=VALUE, got {item!r}")
        takers = [n for n in names if key in OPTIONS[n].types()]
        if not takers:
            raise RunError(f"--set {key}: none of the compared methods ({', '.join(names)}) has that option")
        for n in takers:
            per[n][key] = OPTIONS[n].parse(n, key, value.strip())
    return per


def _methods_text() -> str:
    from .methods import METHODS

    lines = []
    for name, cls in METHODS.items():
        lines.append(f"{name:13s} {cls.kind:7s} {cls.summary}  [{cls.paper}]")
        opts = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cls.Options))
        lines.append(f"{'':21s} options: {opts}")
    lines.append(f"\ndata sets: {', '.join(DATA_NAMES)}; or a file of (N, D) points or (N, [C,] H, W) images "
                 f"({', '.join(data_paths.POINT_SUFFIXES)}), or an *-images-idx3-ubyte[.gz] file")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="gpflow", description="GANs, diffusion and gradient flows as particle models: "
                "train, sample and measure the methods of the three papers on embedded data.")
    sub = p.add_subparsers(dest="command", metavar="{run,sample,methods,compare,check}", parser_class=_Parser)
    sub.required = True
    sub.add_parser("methods", help="list the methods, their kind (PM / Int-PM / flow) and options")

    r = sub.add_parser("run", help="train and sample one method, write metrics.json, PNGs and a checkpoint")
    r.add_argument("method", help="one of: " + ", ".join(OPTIONS))
    c = sub.add_parser("compare", help="run several methods with one budget and write a comparison table")
    c.add_argument("--methods", default=",".join(COMPARE_DEFAULT), help="comma-separated method names")
    for q in (r, c):
        q.add_argument("--data", required=True, help="one of: " + ", ".join(DATA_NAMES)
                       + "; or a file of (N, D) points or (N, [C,] H, W) images: " + ", ".join(data_paths.POINT_SUFFIXES)
                       + ", or an *-images-idx3-ubyte[.gz] file")
        q.add_argument("--out", required=True, help="output folder")
        q.add_argument("--steps", type=int, default=None, help="training steps (default: the method's)")
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
        q.add_argument("--threads", type=int, default=None,
                       help="CPU threads for torch (default: torch's choice, all cores); set it on shared machines")
        q.add_argument("--quiet", action="store_true", help="no progress output")
        q.add_argument("--debug", action="store_true", help="show the traceback of a failure")
        q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="a method option (repeatable); compare gives it to every method that has it")
    r.add_argument("--samples", type=int, default=None, help="samples for the metrics and figures (>= 2)")
    r.add_argument("--resume", nargs="?", const=True, default=False, metavar="auto",
                   help="continue the run in --out from its checkpoint; '--resume auto': continue it if there is "
                        "one, else start (what a run restarted by torchrun's elastic agent does)")
    r.add_argument("--overwrite", action="store_true", help="start over in an --out that holds a run")
    r.add_argument("--ckpt-every", type=int, default=500, help="checkpoint every this many training steps")
    r.add_argument("--keep", type=int, default=1, metavar="K",
                   help="keep the last K checkpoints (checkpoint-STEP.pt beside checkpoint.pt; default 1: the latest)")
    r.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    s = sub.add_parser("sample", help="draw N samples of a trained run (its --out folder) into a .npy/.pt file or "
                                      "a folder of PNGs; sample i depends only on the seed and i")
    s.add_argument("run", help="the --out folder of a 'gpflow run'")
    s.add_argument("-n", "--n", "--num-samples", dest="n", type=int, required=True,
                   help="number of samples (under torchrun write -n or --num-samples: torchrun reads --n as its own)")
    s.add_argument("--out", required=True, help="FILE.npy, FILE.pt, or a folder (no suffix) of PNG files for image runs")
    s.add_argument("--batch", type=int, default=4096, help="samples kept on the device at once (whole blocks of 256)")
    s.add_argument("--seed", type=int, default=None, help="default: the run's seed + 1, the seed its own samples used")
    s.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (under torchrun: cuda:LOCAL_RANK)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a sampling option of the method, e.g. sample_steps=40 (repeatable)")
    s.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    s.add_argument("--quiet", action="store_true", help="no summary line")
    s.add_argument("--debug", action="store_true", help="show the traceback of a failure")
    k = sub.add_parser("check", help="every op on every backend usable here, forward and backward, against the "
                                     "float64 reference, with a median time; exit 1 on any failure")
    k.add_argument("--quick", action="store_true", help="a small grid (two kernels, D = 1, 3, 17, 130)")
    k.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    k.add_argument("--json", default=None, metavar="PATH", help="write every row and the environment to PATH")
    k.add_argument("--jsonl", default=None, metavar="PATH",
                   help="append each row to PATH as one JSON line the moment it is measured")
    k.add_argument("--ops", default=None, help="comma-separated ops to check (default: all)")
    k.add_argument("--dims", default=None, help="comma-separated point dimensions D (default: 1,2,3,16,17,64,130,512; "
                                                "--quick: 1,3,17,130)")
    k.add_argument("--debug", action="store_true", help="show the traceback of a failure")
    return p


def _check_common(args) -> None:
    """Checks shared by run and compare; no torch."""
    if args.data not in DATA_NAMES:
        try:
            data_paths.check(args.data)  # a file of points: its type and that it is readable (content later)
        except ValueError as e:
            raise RunError(str(e)) from None
    if args.steps is not None and args.steps < 0:
        raise RunError(f"--steps must be >= 0, got {args.steps}")
    if args.seed < 0:
        raise RunError(f"--seed must be >= 0, got {args.seed}")
    if not _DEVICE.match(args.device):
        raise RunError(f"--device {args.device!r} is not a device this command runs on; use cpu, cuda or cuda:N")
    if args.threads is not None and args.threads < 1:
        raise RunError(f"--threads must be >= 1, got {args.threads}")


def _checked_run(args) -> Dict[str, Any]:
    """The run's keyword arguments once every argument is checked; raises RunError/OptionError."""
    _check_common(args)
    if args.method not in OPTIONS:
        raise RunError(f"unknown method {args.method!r}; choose one of {', '.join(OPTIONS)} (see 'gpflow methods')")
    if args.ckpt_every < 1:
        raise RunError(f"--ckpt-every must be >= 1, got {args.ckpt_every}")
    if args.keep < 1:
        raise RunError(f"--keep must be >= 1, got {args.keep}")
    if args.samples is not None and args.samples < 2:
        raise RunError(f"--samples must be >= 2, got {args.samples}")
    opts = parse_sets(args.method, args.set)
    if args.steps is not None:
        opts["steps"] = args.steps
    OPTIONS[args.method].build(args.method, opts, is_image=args.data in IMAGE_DATA)
    resume, overwrite = resolve_resume(args.out, args.resume, args.overwrite)
    check(args.out, resume=resume, overwrite=overwrite)
    return dict(options=opts, seed=args.seed, device=args.device, resume=resume, overwrite=overwrite,
                n_samples=args.samples, ckpt_every=args.ckpt_every, keep=args.keep, plots=not args.no_plots, progress=not args.quiet)


def _checked_compare(args) -> Tuple[List[str], Dict[str, Dict[str, Any]]]:
    _check_common(args)
    names = [s.strip() for s in args.methods.split(",") if s.strip()]
    unknown = [s for s in names if s not in OPTIONS]
    if unknown or not names:
        raise RunError(f"unknown method(s) {unknown}; choose from {', '.join(OPTIONS)}")
    per = compare_sets(names, args.set)
    for name in names:  # each method's options checked now, before torch is imported
        OPTIONS[name].build(name, per[name], is_image=args.data in IMAGE_DATA)
    check(args.out)
    return names, per


#: gpflow check's ops (check.OPS; named here so that --ops is checked before torch is imported)
CHECK_OPS = ("mmd_field", "mmd2", "kernel_integral", "kde_score", "kde_denoiser", "svgd_field", "contract")


def _check(args) -> int:
    """gpflow check: arguments checked before torch is imported; rows printed as they come."""
    if not _DEVICE.match(args.device):
        raise RunError(f"--device {args.device!r} is not a device this command runs on; use cpu, cuda or cuda:N")
    names = None if args.ops is None else [s.strip() for s in args.ops.split(",") if s.strip()]
    if names is not None and (not names or set(names) - set(CHECK_OPS)):
        raise RunError(f"--ops: unknown op(s) {sorted(set(names) - set(CHECK_OPS))}; choose from {', '.join(CHECK_OPS)}")
    dims = None
    if args.dims is not None:
        try:
            dims = [int(s) for s in args.dims.split(",") if s.strip()]
        except ValueError:
            dims = []
        if not dims or min(dims) < 1:
            raise RunError(f"--dims {args.dims!r}: expected comma-separated integers >= 1, e.g. --dims 2,17")
    for flag, path in (("--json", args.json), ("--jsonl", args.jsonl)):
        if path is not None:
            parent = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(parent):
                raise RunError(f"{flag} {path}: the folder {parent} does not exist")
    from .check import run_check

    return run_check(args.device, quick=args.quick, json_path=args.json, ops_filter=names,
                     out=lambda line: print(line, flush=True), dims=dims, jsonl_path=args.jsonl)


def _sample(args) -> int:
    """gpflow sample: the paths checked before torch is imported, then load_run and the samples."""
    if not _DEVICE.match(args.device):
        raise RunError(f"--device {args.device!r} is not a device this command runs on; use cpu, cuda or cuda:N")
    if args.n < 1 or args.batch < 1:
        raise RunError(f"--n and --batch must be >= 1, got {args.n} and {args.batch}")
    if args.seed is not None and args.seed < 0:
        raise RunError(f"--seed must be >= 0, got {args.seed}")
    if not os.path.isdir(args.run):
        raise RunError(f"{args.run} is not a folder: give the --out folder of a 'gpflow run'")
    if args.threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    from .methods import parallel
    from .methods.serve import read_run, sample_to_file

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    options = parse_sets(read_run(args.run)["method"], args.set) if args.set else {}
    par, device = parallel.from_env(args.device)
    sample_to_file(args.run, args.n, args.out, seed=args.seed, batch=args.batch, device=device, options=options,
                   par=par, log=(lambda _: None) if args.quiet or not par.main else print)
    parallel.close(ok=True)
    return 0


def _fail(code: int, text: str) -> int:
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE", "1")
    if rank is not None and world not in ("", "1"):  # under torchrun: say which rank failed
        text = f"[rank {rank}/{world}] {text}"
    sys.stderr.write(f"gpflow: {text}\n")
    sys.stderr.flush()
    return code


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    started = False
    try:
        if args.command == "methods":
            print(_methods_text())
            return 0
        if args.command == "check":
            return _check(args)
        if args.command == "sample":
            return _sample(args)
        if args.command == "compare":
            names, per_method = _checked_compare(args)
        else:
            kwargs = _checked_run(args)
        started = True
        if args.threads is not None:
            os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch is imported, for its pool
        with DeferredSignals() as sig:  # signals are acted on at safe points only (see methods/signals.py)
            import torch

            from .methods import parallel
            from .methods.runner import compare, run_method

            if sig.signum is not None:
                raise KeyboardInterrupt
            if args.threads is not None:
                torch.set_num_threads(args.threads)
            # Under torchrun: join the process group (gloo on CPUs, NCCL and cuda:LOCAL_RANK on GPUs).
            par, device = parallel.from_env(args.device)
            if args.command == "compare":
                compare(args.data, args.out, methods=names, steps=args.steps, seed=args.seed, device=device,
                        progress=not args.quiet, options=per_method)
            else:
                run_method(args.method, args.data, args.out, **{**kwargs, "device": device}, parallel=par)
            parallel.close(ok=True)
        return 0
    except (RunError, OptionError) as e:
        if debug:
            raise
        return _fail(2, f"error: {e}")
    except (RunFailed, ValueError, TypeError) as e:  # failed while running (ValueError/TypeError: an op refused a value)
        if debug:
            raise
        return _fail(1, f"error: {e}")
    except Interrupted as e:
        return _fail(130, str(e))
    except BrokenPipeError:  # e.g. `gpflow methods | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        # Before the run's first write (start-up: imports, data, networks, the untrained metrics).
        return _fail(130, "interrupted during start-up; nothing was written" if started else "interrupted")
    except Exception as e:  # a bug or an environment problem: still one line, unless --debug
        if debug:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if os.environ.get("WORLD_SIZE", "1") not in ("", "1") and any(k in first for k in ("gloo", "NCCL", "Connection")):
            return _fail(1, "error: another rank stopped answering (it failed or was killed: its own error line and "
                            f"torchrun's summary say which): {first[:200]}")
        return _fail(1, f"error: {type(e).__name__}: {first[:300]} (internal error; rerun with --debug for the traceback)")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
