"""``gpflow`` (or ``python -m gpflow_kernels``): train, sample, measure and draw the papers' methods.

    gpflow methods                                  list the methods and their options
    gpflow run METHOD --data NAME --out DIR         train + sample + metrics.json + PNGs + checkpoint
    gpflow run METHOD ... --resume                  continue a run from its checkpoint
    gpflow compare --data NAME --out DIR            several methods, one budget, a table
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from typing import Any, Dict, List, Optional

from .methods import DATASETS, METHODS
from .methods.runner import COMPARE_DEFAULT, RunError, compare, run_method


def _convert(method: str, key: str, text: str) -> Any:
    cls = METHODS[method]
    hints = typing.get_type_hints(cls.Options)
    if key not in hints:
        raise RunError(f"method {method!r} has no option {key!r}; its options are: {', '.join(sorted(hints))}")
    want = hints[key]
    if want is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise RunError(f"option {key} of {method!r} must be true or false, got {text!r}")
    try:
        return want(text)
    except ValueError:
        raise RunError(f"option {key} of {method!r} must be {want.__name__}, got {text!r}") from None


def parse_sets(method: str, items: List[str]) -> Dict[str, Any]:
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise RunError(f"--set takes KEY=VALUE, got {item!r}")
        out[key.strip()] = _convert(method, key.strip(), value.strip())
    return out


def _methods_text() -> str:
    lines = []
    for name, cls in METHODS.items():
        lines.append(f"{name:13s} {cls.kind:7s} {cls.summary}  [{cls.paper}]")
        opts = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cls.Options))
        lines.append(f"{'':21s} options: {opts}")
    lines.append(f"\ndata sets: {', '.join(DATASETS)}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpflow", description="GANs, diffusion and gradient flows as particle models: "
                                "train, sample and measure the methods of the three papers on embedded data.")
    sub = p.add_subparsers(dest="command", metavar="{run,methods,compare}")
    sub.required = True
    sub.add_parser("methods", help="list the methods, their kind (PM / Int-PM / flow) and options")

    r = sub.add_parser("run", help="train and sample one method, write metrics.json, PNGs and a checkpoint")
    r.add_argument("method", help="one of: " + ", ".join(METHODS))
    common = [r]
    c = sub.add_parser("compare", help="run several methods with one budget and write a comparison table")
    c.add_argument("--methods", default=",".join(COMPARE_DEFAULT), help="comma-separated method names")
    common.append(c)
    for q in common:
        q.add_argument("--data", required=True, help="one of: " + ", ".join(DATASETS))
        q.add_argument("--out", required=True, help="output folder")
        q.add_argument("--steps", type=int, default=None, help="training steps (default: the method's)")
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--device", default="cpu", help="cpu or cuda")
        q.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a method option (repeatable)")
    r.add_argument("--samples", type=int, default=None, help="samples for the metrics and figures")
    r.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    r.add_argument("--ckpt-every", type=int, default=500, help="checkpoint every this many training steps")
    r.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "methods":
        print(_methods_text())
        return 0
    try:
        if args.data not in DATASETS:
            raise RunError(f"unknown data set {args.data!r}; choose one of {', '.join(DATASETS)}")
        if args.steps is not None and args.steps < 0:
            raise RunError(f"--steps must be >= 0, got {args.steps}")
        if args.command == "compare":
            names = [s.strip() for s in args.methods.split(",") if s.strip()]
            unknown = [s for s in names if s not in METHODS]
            if unknown or not names:
                raise RunError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
            compare(args.data, args.out, methods=names, steps=args.steps, seed=args.seed, device=args.device,
                    progress=not args.quiet)
            return 0
        if args.method not in METHODS:
            raise RunError(f"unknown method {args.method!r}; choose one of {', '.join(METHODS)} (see 'gpflow methods')")
        if args.ckpt_every < 1:
            raise RunError(f"--ckpt-every must be >= 1, got {args.ckpt_every}")
        opts = parse_sets(args.method, args.set)
        if args.steps is not None:
            opts["steps"] = args.steps
        run_method(args.method, args.data, args.out, options=opts, seed=args.seed, device=args.device,
                   resume=args.resume, n_samples=args.samples, ckpt_every=args.ckpt_every,
                   plots=not args.no_plots, progress=not args.quiet)
    except (RunError, ValueError, TypeError) as e:
        parser.exit(2, f"gpflow: error: {e}\n")
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
