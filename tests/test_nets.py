"""Image networks (U-Net, DCGAN), the weights' moving average, and the training options around them."""

import json

import pytest
import torch

from gpflow_kernels.nets import EMA, DCGANDiscriminator, DCGANGenerator, EDMPrecond, UNet
from gpflow_kernels.methods.runner import RunError, run_method


@pytest.mark.parametrize("shape", [(8, 8), (3, 7, 5), (2, 2)])
def test_shapes_on_odd_sizes_and_gradients(shape):
    d = int(torch.tensor(shape).prod())
    x = torch.randn(4, d, requires_grad=True)
    unet = UNet(shape, channels=8, levels=3)
    out = unet(x, torch.rand(4))
    assert out.shape == (4, d)
    gen, disc = DCGANGenerator(5, shape, 8), DCGANDiscriminator(shape, 8, conditioned=True)
    img = gen(torch.randn(4, 5))
    assert img.shape == (4, d) and float(img.detach().abs().max()) < 1
    score = disc(x, torch.tensor(0.3))
    assert score.shape == (4, 1)
    (g,) = torch.autograd.grad(score.sum() + out.square().sum(), x)
    assert g.shape == x.shape and bool(torch.isfinite(g).all())


def test_untrained_unet_denoiser_is_edms_skip_term():
    # The U-Net's output convolution starts at zero, so D(x; σ) = c_skip x = σ_d² / (σ² + σ_d²) x.
    net = EDMPrecond(64, 8, 2, 0.5, backbone=UNet((8, 8), channels=8))
    x, sigma = torch.randn(3, 64), torch.tensor(0.7)
    torch.testing.assert_close(net(x, sigma), 0.25 / (0.49 + 0.25) * x)


def test_ema_follows_the_warm_up_formula_and_swaps_back():
    m = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(0.0)
    ema = EMA({"m": m}, 0.9)
    want = 0.0
    for k in range(20):
        with torch.no_grad():
            m.weight.fill_(float(k + 1))
        ema.update({"m": m}, k)
        d = min(0.9, (1 + k) / (10 + k))
        want = d * want + (1 - d) * (k + 1)
    assert float(ema.shadow["m"].weight[0, 0]) == pytest.approx(want, rel=1e-6)
    with ema.swapped({"m": m}):
        assert float(m.weight[0, 0]) == pytest.approx(want, rel=1e-6)
    assert float(m.weight[0, 0]) == 20.0


def test_resume_with_ema_equals_an_uninterrupted_run(idx_set, tmp_path, monkeypatch):
    monkeypatch.setenv("GPFLOW_CACHE", str(tmp_path / "cache"))
    opts = {"steps": 6, "batch": 8, "channels": 8, "depth": 2, "sample_steps": 3, "ema": 0.9, "nll_points": 3}
    kw = dict(n_samples=16, plots=False, progress=False, log=lambda s: None)
    full = run_method("edm", str(idx_set[0]), tmp_path / "a", options=opts, **kw)
    assert run_method("edm", str(idx_set[0]), tmp_path / "b", options=opts, stop_after=4, **kw) == {"stopped_at": 4}
    resumed = run_method("edm", str(idx_set[0]), tmp_path / "b", options=opts, resume=True, **kw)
    assert resumed["final"] == full["final"]
    assert "ema" in torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["state"]
    written = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert written["train_images_per_second"] > 0


def test_bf16_and_arch_options(idx_set, tmp_path, monkeypatch):
    monkeypatch.setenv("GPFLOW_CACHE", str(tmp_path / "cache"))
    kw = dict(n_samples=16, plots=False, progress=False, log=lambda s: None)
    res = run_method("gan", str(idx_set[0]), tmp_path / "bf16", options={"steps": 3, "batch": 8, "precision": "bf16"}, **kw)
    assert res["final"]["fd"] > 0
    mlp = run_method("gan", str(idx_set[0]), tmp_path / "mlp", options={"steps": 3, "batch": 8, "arch": "mlp"}, **kw)
    state = torch.load(tmp_path / "mlp" / "checkpoint.pt", weights_only=False)["state"]
    assert not any("conv" in k or k.endswith(".c1.weight") for k in state["module.discriminator"]) and mlp["final"]
    with pytest.raises(RunError, match="arch=conv needs image data"):
        run_method("gan", "moons", tmp_path / "conv", options={"steps": 3, "arch": "conv"}, **kw)
    assert not (tmp_path / "conv").exists()


@pytest.mark.slow
def test_compile_option_keeps_checkpoints_loadable(idx_set, tmp_path, monkeypatch):
    monkeypatch.setenv("GPFLOW_CACHE", str(tmp_path / "cache"))
    kw = dict(n_samples=16, plots=False, progress=False, log=lambda s: None)
    with pytest.raises(ValueError, match="compile=true of 'gan' needs penalty=0"):
        run_method("gan", str(idx_set[0]), tmp_path / "p", options={"steps": 2, "compile": True}, **kw)
    opts = {"steps": 2, "batch": 8, "compile": True, "penalty": 0.0}
    run_method("gan", str(idx_set[0]), tmp_path / "c", options=opts, **kw)
    state = torch.load(tmp_path / "c" / "checkpoint.pt", weights_only=False)["state"]
    assert not any("_orig_mod" in k for k in state["module.generator"])
