"""Every method end to end on tiny settings: it improves its metrics over its starting point.

"Starting point": the untrained method's samples for methods that train, the initial particles
for training-free flows (runner.py). Settings are small so the whole file runs in about a minute.
"""

import math
import json
import os
import random
import signal

import pytest
import torch

from gpflow_kernels.methods import METHODS, get_method
from gpflow_kernels.methods.runner import Interrupted, RunError, run_method

TINY = {
    "edm": {"steps": 1000, "lr": 2e-3, "hidden": 64, "sample_steps": 10, "nll_points": 50},
    "score-gan": {"data_steps": 300, "steps": 300, "batch": 256, "hidden": 64, "gen_lr": 1e-3},
    "disc-flow": {"steps": 150, "batch": 128, "hidden": 64, "flow_steps": 5},
    "disc-flow-gen": {"steps": 150, "distill_steps": 150, "batch": 128, "hidden": 64, "flow_steps": 5},
    "gan": {"steps": 300, "batch": 128, "hidden": 64},
    "diffflow": {"sample_steps": 40, "nll_points": 30},
    "mmd-guidance": {"steps": 1000, "lr": 2e-3, "hidden": 64, "sample_steps": 10, "n_data": 300, "nll_points": 50},
    "mmd-flow": {"sample_steps": 40, "n_data": 500},
    "svgd": {"sample_steps": 60, "n_data": 500},
    "langevin": {"sample_steps": 5, "n_data": 500},
}


def tiny_run(tmp_path, method, data="8gaussians", **kw):
    opts = dict(TINY[method])
    opts.update(kw.pop("options", {}))
    return run_method(method, data, tmp_path / method, options=opts, n_samples=300, plots=False,
                      progress=False, log=lambda s: None, **kw)


def test_every_method_has_tiny_settings():
    assert set(TINY) == set(METHODS)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_improves_on_its_starting_point(tmp_path, method):
    res = tiny_run(tmp_path, method)
    init, final = res["init"], res["final"]
    assert final["mmd2"] < 0.5 * init["mmd2"], (init, final)
    assert final["energy"] < 0.7 * init["energy"], (init, final)
    written = json.loads((tmp_path / method / "metrics.json").read_text())
    assert written["final"] == final and written["kind"] == get_method(method).kind
    assert written["nfe"] >= 1 and written["sample_seconds"] >= 0
    # A held-out NLL exactly where the method has a per-sample density (mmd-guidance: its unguided model).
    where = {"edm": final, "diffflow": final, "mmd-guidance": written.get("unguided", final)}.get(method)
    assert ("nll" in written) == (where is not None)
    if where is not None:
        assert math.isfinite(where["nll"]) and written["nll"]["units"] == "nats/dim"


def test_closed_form_guidance_improves_the_plain_sampler_of_an_undertrained_denoiser(tmp_path):
    """Both forms pull samples of a poorly trained denoiser toward the data (same denoiser calls). The
    score form acts mostly at large σ (its weight is λσ), the post-step kick as much at every step, so
    with a denoiser that is wrong at small σ the kick corrects more (see benchmarks/RESULTS.md)."""
    score = tiny_run(tmp_path / "score", "mmd-guidance", options={"steps": 100, "guidance": 3.0})
    assert score["final"]["mmd2"] < 0.85 * score["unguided"]["mmd2"], (score["unguided"], score["final"])
    kick = tiny_run(tmp_path / "kick", "mmd-guidance", options={"steps": 100, "guidance": 1.0, "guidance_mode": "kick"})
    assert kick["final"]["mmd2"] < 0.5 * kick["unguided"]["mmd2"], (kick["unguided"], kick["final"])


def test_guidance_in_the_latent_space_of_an_autoencoder(tmp_path):
    res = tiny_run(tmp_path, "mmd-guidance", options={"latent": 2, "ae_steps": 200, "steps": 200})
    assert res["final"]["mmd2"] < 0.5 * res["init"]["mmd2"]
    assert res["train_steps"] == 400


@pytest.mark.parametrize("mix", [0.0, 1.0])
def test_diffflow_reaches_the_data_at_both_ends(tmp_path, mix):
    res = tiny_run(tmp_path, "diffflow", options={"mix": mix})
    assert res["final"]["mmd2"] < 0.1 * res["init"]["mmd2"]


def test_diffflow_with_a_learned_data_score(tmp_path):
    res = tiny_run(tmp_path, "diffflow", options={"scores": "net", "steps": 2000, "lr": 2e-3, "hidden": 64})
    assert res["final"]["mmd2"] < 0.3 * res["init"]["mmd2"]


def test_ipm_losses_with_gradient_penalty(tmp_path):
    res = tiny_run(tmp_path, "disc-flow", options={"loss": "ipm", "penalty": 1.0, "eta": 1.0, "steps": 300})
    assert res["final"]["mmd2"] < 0.5 * res["init"]["mmd2"]
    res = tiny_run(tmp_path / "g", "gan", options={"loss": "ipm", "penalty": 1.0, "d_steps": 2})
    assert res["final"]["mmd2"] < 0.5 * res["init"]["mmd2"]


def test_score_gan_with_the_closed_form_data_score(tmp_path):
    res = tiny_run(tmp_path, "score-gan", options={"data_score": "kde", "steps": 600})
    assert res["train_steps"] == TINY["score-gan"]["data_steps"] + 600
    assert res["final"]["mmd2"] < 0.5 * res["init"]["mmd2"]


# Short trainings (a few hundred milliseconds each) for the resume checks: resuming is a property
# of the runner and of each method's saved state, not of how well the method trains.
SHORT = {
    "edm": {"steps": 150, "batch": 128, "hidden": 32, "sample_steps": 4, "nll_points": 20},
    "score-gan": {"data_steps": 60, "steps": 60, "batch": 64, "hidden": 32},
    "gan": {"steps": 120, "batch": 64, "hidden": 32},
    "disc-flow": {"steps": 60, "batch": 64, "hidden": 32, "flow_steps": 3},
    "disc-flow-gen": {"steps": 40, "distill_steps": 40, "batch": 64, "hidden": 32, "flow_steps": 3},
    "diffflow": {"scores": "net", "steps": 150, "batch": 128, "hidden": 32, "sample_steps": 10, "nll_points": 20},
    "mmd-guidance": {"steps": 150, "batch": 128, "hidden": 32, "sample_steps": 4, "n_data": 100, "nll_points": 20},
}
_TIMINGS = {"seconds", "train_seconds", "sample_seconds", "train_points_per_second", "train_images_per_second"}


def _untimed(d):
    """metrics without wall-clock entries, at any depth (history rows, the likelihood's block)."""
    if isinstance(d, dict):
        return {k: _untimed(v) for k, v in d.items() if k not in _TIMINGS}
    if isinstance(d, list):
        return [_untimed(v) for v in d]
    return d


def _same_state(a, b, where=""):
    """Checkpoint contents equal bit for bit: weights, optimiser moments, step counts, RNG states."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _same_state(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (p, q) in enumerate(zip(a, b)):
            _same_state(p, q, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    else:
        assert a == b, where


def test_every_trained_method_has_short_settings():
    # the flows train nothing; diffflow trains its scores with scores=net (SHORT sets it)
    assert set(SHORT) == {m for m in METHODS if get_method(m).kind != "flow"}


@pytest.mark.parametrize("method", sorted(SHORT))
def test_resume_at_a_seeded_step_equals_an_uninterrupted_run(tmp_path, method):
    """Stop after a seeded step (any step, in either phase of a two-phase method), resume in a new
    call: the metrics (timings aside) and the whole final checkpoint equal an uninterrupted run's.
    A real SIGINT in a new process: test_resume_signals.py."""
    run = lambda where, **kw: run_method(method, "8gaussians", tmp_path / where, options=dict(SHORT[method]),
                                         n_samples=200, plots=False, progress=False, log=lambda s: None, **kw)
    full = run("a")
    total = full["train_steps"]
    stop = random.Random(f"resume-{method}").randint(1, total - 1)
    assert run("b", stop_after=stop) == {"stopped_at": stop}
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["step"] == stop
    resumed = run("b", resume=True)
    assert _untimed(resumed) == _untimed(full)
    _same_state(*(_untimed(torch.load(tmp_path / w / "checkpoint.pt", weights_only=True)) for w in "ab"))


def test_a_signal_mid_step_finishes_the_step_then_checkpoints_and_resumes_exactly(tmp_path, monkeypatch):
    """A real SIGINT delivered in the middle of step 120 (after the discriminator's update, before the
    generator's): the step completes, the checkpoint is taken at the boundary (121), and the resumed
    run equals the uninterrupted one. The old behaviour checkpointed the half-done step."""
    full = tiny_run(tmp_path / "a", "gan")
    cls = get_method("gan")
    real_critic = cls.critic
    calls = {"n": 0}

    def critic(self, x):
        if torch.is_grad_enabled() and x.requires_grad and calls["n"] == 0 and len(self.g_opt.state) and \
                self.g_opt.state[next(iter(self.g_opt.state))]["step"] == 120:
            calls["n"] += 1
            os.kill(os.getpid(), signal.SIGINT)  # the handler only sets a flag
        return real_critic(self, x)

    monkeypatch.setattr(cls, "critic", critic)
    with pytest.raises(Interrupted, match=r"interrupted at step 121/"):
        tiny_run(tmp_path / "b", "gan")
    monkeypatch.setattr(cls, "critic", real_critic)
    assert calls["n"] == 1
    assert torch.load(tmp_path / "b" / "gan" / "checkpoint.pt", weights_only=True)["step"] == 121
    assert not (tmp_path / "b" / "gan" / "metrics.json").exists()
    assert tiny_run(tmp_path / "b", "gan", resume=True)["final"] == full["final"]


def test_resume_refuses_changed_options_and_an_existing_run_needs_resume(tmp_path):
    tiny_run(tmp_path, "gan", stop_after=10)
    with pytest.raises(RunError, match="already holds a run"):
        tiny_run(tmp_path, "gan")
    with pytest.raises(RunError, match=r"changed options \['hidden'\]"):
        tiny_run(tmp_path, "gan", resume=True, options={"hidden": 32})
    # more steps is allowed: the run continues
    res = tiny_run(tmp_path, "gan", resume=True, options={"steps": 20})
    assert res["train_steps"] == 20


@pytest.mark.parametrize("bad, match", [
    ({"nope": 1}, "has no option 'nope'"),
    ({"steps": -1}, "must be >= 0"),
    ({"loss": "hinge"}, "option loss of 'gan' must be one of 'ns', 'ipm'"),
    ({"lr": "fast"}, "option lr of 'gan' must be float"),
    ({"hidden": 0}, "option hidden of 'gan' must be >= 1"),
    ({"lr": 0.0}, "option lr of 'gan' must be > 0, got 0.0"),
    ({"lr": float("inf")}, "option lr of 'gan' must be a finite number"),
    ({"penalty": float("nan")}, "option penalty of 'gan' must be a finite number"),
])
def test_bad_options_are_named(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        tiny_run(tmp_path, "gan", options=bad)
    assert not (tmp_path / "gan").exists()


def test_flows_refuse_training_steps_and_unknown_methods_are_named(tmp_path):
    with pytest.raises(ValueError, match="training-free"):
        tiny_run(tmp_path, "svgd", options={"steps": 5})
    with pytest.raises(ValueError, match="unknown method 'vae'"):
        run_method("vae", "moons", tmp_path / "x")


def test_digits_run_reports_frechet_distance_and_coverage(tmp_path, monkeypatch):
    monkeypatch.setenv("GPFLOW_CACHE", str(tmp_path / "cache"))
    # MLPs (arch=mlp) keep this quick; the image networks on digit images: test_data_images.py.
    res = run_method("gan", "digits", tmp_path / "d", options={"steps": 150, "hidden": 128, "arch": "mlp"}, n_samples=200,
                     progress=False, log=lambda s: None)
    assert set(res["final"]) == {"mmd2", "fd", "kid", "coverage"}
    assert res["final"]["fd"] < 0.5 * res["init"]["fd"] and res["final"]["mmd2"] < res["init"]["mmd2"]
    assert (tmp_path / "d" / "samples.png").stat().st_size > 1000
    assert (tmp_path / "d" / "trajectory.png").stat().st_size > 1000
