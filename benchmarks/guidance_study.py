"""Closed-form MMD guidance against the plain sampler at equal denoiser evaluations (issue #13).

For each data set and seed: train the mmd-guidance method's EDM denoiser once, then sample with the
same grid (so the same denoiser calls per sample) unguided and guided over λ, the witness bandwidth
and the guidance form ("score": inside every derivative; "kick": after each step). Metrics are the
runner's (MMD² on held-out data; on digits also the Fréchet distance on classifier features).
Writes a JSON of every run and prints a Markdown table of mean ± std over seeds.

    OMP_NUM_THREADS=2 python benchmarks/guidance_study.py --out guidance.json          (full, ~10 min)
    python benchmarks/guidance_study.py --data digits --lams-score 30,100,300 --lams-kick 2,5 --bandwidths 4,8 --out g2.json
    python benchmarks/guidance_study.py --quick --out /tmp/g.json                      (seconds: smoke)
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time

import torch

from gpflow_kernels.methods import get_method
from gpflow_kernels.data import load
from gpflow_kernels.methods.metrics import evaluate, image_classifier

GRIDS = {
    # data set: (training steps, λ for "score", λ for "kick", witness bandwidths b)
    "8gaussians": (2000, (0.3, 1.0, 3.0, 10.0), (0.1, 0.5), (0.25, 0.5, 1.0)),
    "digits": (2000, (0.3, 1.0, 3.0, 10.0), (0.1, 0.5), (2.0, 4.0, 8.0)),
}
QUICK = {"8gaussians": (30, (1.0,), (0.5,), (0.5,))}


def study(data_name, steps, lams_score, lams_kick, bandwidths, seeds, n_samples, log=print):
    rows = []
    cls = get_method("mmd-guidance")
    for seed in seeds:
        ds = load(data_name, seed=seed)
        opts = cls.make_options(ds, {"steps": steps})
        torch.manual_seed(seed)
        m = cls(ds, opts, torch.device("cpu"))
        t0 = time.perf_counter()
        for step in range(steps):
            m.train_step(step)
        log(f"{data_name} seed {seed}: trained {steps} steps in {time.perf_counter() - t0:.1f} s")
        clf = image_classifier(ds) if ds.is_image else None
        cases = [("none", 0.0, None)]
        cases += [("score", lam, b) for lam, b in itertools.product(lams_score, bandwidths)]
        cases += [("kick", lam, b) for lam, b in itertools.product(lams_kick, bandwidths)]
        for mode, lam, b in cases:
            m.opts.guidance_mode = "score" if mode == "none" else mode
            if b is not None:
                m.opts.bandwidth = b
            gen = torch.Generator().manual_seed(1000 + seed)
            smp = m.sample(n_samples, gen, guidance=lam)
            rows.append({"data": data_name, "seed": seed, "mode": mode, "lambda": lam, "bandwidth": b,
                         "denoiser_calls": smp.nfe,
                         "witness_calls": {"none": 0, "score": smp.nfe, "kick": opts.sample_steps}[mode],
                         **evaluate(smp.x, ds, clf)})
    return rows


def table(rows):
    keys = [k for k in ("mmd2", "energy", "fd", "coverage") if k in rows[0]]
    groups = {}
    for r in rows:
        groups.setdefault((r["data"], r["mode"], r["lambda"], r["bandwidth"]), []).append(r)
    lines = ["| data | guidance | λ | b | denoiser calls | " + " | ".join(f"{k} (mean ± std)" for k in keys) + " | seeds |",
             "|---|---|---|---|---|" + "---|" * len(keys) + "---|"]
    for (data, mode, lam, b), rs in groups.items():
        stats = []
        for k in keys:
            vals = [r[k] for r in rs]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            stats.append(f"{statistics.mean(vals):.4g} ± {sd:.2g}")
        lines.append(f"| {data} | {mode} | {lam:g} | {'' if b is None else f'{b:g}'} | {rs[0]['denoiser_calls']} | "
                     + " | ".join(stats) + f" | {len(rs)} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--data", default="8gaussians,digits")
    p.add_argument("--quick", action="store_true", help="a few steps on 8gaussians, one seed (a smoke test)")
    floats = lambda text: tuple(float(v) for v in text.split(","))
    p.add_argument("--lams-score", type=floats, help="λ values of the score form (comma-separated), instead of the grid's")
    p.add_argument("--lams-kick", type=floats, help="λ values of the kick form, instead of the grid's")
    p.add_argument("--bandwidths", type=floats, help="witness bandwidths b, instead of the grid's")
    a = p.parse_args(argv)
    grids = QUICK if a.quick else {k: GRIDS[k] for k in a.data.split(",")}
    grids = {k: (steps, a.lams_score or ls, a.lams_kick or lk, a.bandwidths or bws) for k, (steps, ls, lk, bws) in grids.items()}
    rows = []
    for name, (steps, ls, lk, bws) in grids.items():
        n = 200 if a.quick else (500 if name == "digits" else 1000)
        rows += study(name, steps, ls, lk, bws, range(1 if a.quick else a.seeds), n)
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
