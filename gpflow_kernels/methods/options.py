"""Every method's options, and their checks, with no torch import.

The command line checks a run's method, data set and options before it imports torch (1–3 s), so
that a wrong option is reported at once and before anything is written. Each method module takes
its ``Options`` class from here.

Rules, read along each class's MRO:
- every number is finite; integers are >= 0 and floats >= 0 unless the name is in ``SIGNED``;
- ``LOWER`` raises the floor of a number: ``{"lr": (0, False)}`` means lr > 0, ``(1, True)`` >= 1;
- ``CHOICES`` lists the allowed strings of a string option;
- ``check()`` holds the rules that tie several options together.
``IMAGE`` holds the defaults that change on image data (wider networks and so on).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Mapping, Tuple, Type

#: Data sets known by name (``data.py`` builds them); those in IMAGE_DATA are images.
DATA_NAMES = ("8gaussians", "5gaussians", "moons", "checkerboard", "swissroll", "digits")
IMAGE_DATA = ("digits",)
#: Kernel names (gpflow_kernels.kernels.KERNELS; a test keeps the two equal).
KERNEL_NAMES = ("energy", "gaussian", "imq", "laplace", "polyharmonic")
#: What ``gpflow compare`` runs when no --methods are given.
COMPARE_DEFAULT = ("edm", "disc-flow", "score-gan", "gan", "diffflow", "mmd-guidance", "mmd-flow")


class OptionError(ValueError):
    """An option's value is not allowed; the message names the option, the method and the rule."""


def _merged(cls: type, attr: str) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k in reversed(cls.__mro__):
        out.update(vars(k).get(attr, {}))
    return out


@dataclass
class Options:
    steps: int = 0          # training steps (0 for training-free flows)
    image_size: int = 0     # image data: resize the shorter side to this and centre-crop a square; 0: as stored
    features: str = ""      # image data: a TorchScript file mapping (N, C, H, W) images to (N, F) features for FD/KID,
    #                         or inception:PATH (torch-fidelity's InceptionV3 weights file: the standard FID)
    stream: str = "auto"    # file data: "on" reads training rows from the file as minibatches are drawn (DataLoader
    #                         workers, pinned memory) instead of loading it; "auto": when the training set as
    #                         float32 would take over a quarter of the available memory; "off": always load it whole
    stream_subset: int = 10000  # streamed data: training rows kept in memory for the kernel methods' reference
    #                             points, the data statistics and the metrics' classifier
    workers: int = -1       # streamed data: DataLoader worker processes reading minibatches (0: the training
    #                         process); -1: 0 on the CPU, up to 4 with --device cuda

    SIGNED: ClassVar[Dict[str, None]] = {}
    LOWER: ClassVar[Dict[str, Tuple[float, bool]]] = {"stream_subset": (2, True), "workers": (-1, True)}
    CHOICES: ClassVar[Dict[str, Tuple[str, ...]]] = {"stream": ("auto", "on", "off")}
    IMAGE: ClassVar[Dict[str, Any]] = {}
    #: named sets of option values (``--set preset=NAME``), applied before the user's own options;
    #: plain class attribute (not merged along the MRO): a subclass states its own
    PRESETS: ClassVar[Dict[str, Dict[str, Any]]] = {}

    @classmethod
    def types(cls) -> Dict[str, type]:
        return {f.name: typing.get_type_hints(cls)[f.name] for f in dataclasses.fields(cls)}

    @classmethod
    def _unknown(cls, method: str, key: str) -> OptionError:
        return OptionError(f"method {method!r} has no option {key!r}; its options are: {', '.join(sorted(cls.types()))}")

    @classmethod
    def parse(cls, method: str, key: str, text: str) -> Any:
        """The value of ``--set key=text`` in the option's type."""
        types = cls.types()
        if key not in types:
            raise cls._unknown(method, key)
        want = types[key]
        if want is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise OptionError(f"option {key} of {method!r} must be true or false, got {text!r}")
        try:
            return want(text)
        except ValueError:
            raise OptionError(f"option {key} of {method!r} must be {want.__name__}, got {text!r}") from None

    @classmethod
    def build(cls, method: str, overrides: Mapping[str, Any], *, is_image: bool = False) -> "Options":
        """Defaults (image defaults on image data), then ``overrides``, every value checked."""
        types = cls.types()
        kw = dict(_merged(cls, "IMAGE")) if is_image else {}
        preset = overrides.get("preset", "")
        if "preset" in types and preset:
            if preset not in cls.PRESETS:
                known = ", ".join(map(repr, cls.PRESETS)) or "none"
                raise OptionError(f"option preset of {method!r} must be one of: {known}; got {preset!r}")
            kw.update(cls.PRESETS[preset])
        for key, value in overrides.items():
            if key not in types:
                raise cls._unknown(method, key)
            kw[key] = value
        opts = cls(**kw)
        signed, lower, choices = _merged(cls, "SIGNED"), _merged(cls, "LOWER"), _merged(cls, "CHOICES")
        for key, want in types.items():
            value = getattr(opts, key)
            ok = isinstance(value, want) if want is not float else isinstance(value, (int, float))
            if not ok or isinstance(value, bool) != (want is bool):
                raise OptionError(f"option {key} of {method!r} must be {want.__name__}, got {value!r}")
            if want in (int, float):
                if not math.isfinite(value):
                    raise OptionError(f"option {key} of {method!r} must be a finite number, got {value!r}")
                if key in signed:
                    continue
                low, inclusive = lower.get(key, (0, True))
                if value < low or (value == low and not inclusive):
                    raise OptionError(f"option {key} of {method!r} must be {'>=' if inclusive else '>'} {low}, got {value!r}")
            if key in choices and value not in choices[key]:
                raise OptionError(f"option {key} of {method!r} must be one of {', '.join(map(repr, choices[key]))}, got {value!r}")
        opts.check(method)
        return opts

    def check(self, method: str) -> None:
        """Rules that tie options together (raise OptionError naming them)."""


# ----- methods that train networks --------------------------------------------------------------


@dataclass
class NetOptions(Options):
    steps: int = 2000
    batch: int = 256
    lr: float = 1e-3
    hidden: int = 128
    depth: int = 3
    arch: str = "auto"       # "auto" (convolutional on images), "mlp" or "conv"
    channels: int = 32       # width of the convolutional networks (the U-Net's first level)
    ema: float = 0.0         # decay of the weights' moving average used for sampling; 0: off
    precision: str = "fp32"  # "bf16": training under torch.autocast with bfloat16
    compile: bool = False    # torch.compile the networks (nn.Module.compile: checkpoints unchanged)

    LOWER = {"batch": (1, True), "lr": (0, False), "hidden": (1, True), "depth": (1, True), "channels": (1, True)}
    CHOICES = {"arch": ("auto", "mlp", "conv"), "precision": ("fp32", "bf16")}
    IMAGE = {"hidden": 256, "depth": 3, "ema": 0.999}

    def check(self, method):
        if not (self.ema == 0 or 0 < self.ema < 1):
            raise OptionError(f"option ema of {method!r} must be 0 (off) or in (0, 1), got {self.ema}")
        if self.compile and getattr(self, "penalty", 0) > 0:
            raise OptionError(f"option compile=true of {method!r} needs penalty=0: torch.compile does not support "
                              "the double backward of a gradient penalty")


def _sigma_range(method: str, o) -> None:
    if not o.sigma_min < o.sigma_max:
        raise OptionError(f"options of {method!r} need sigma_min < sigma_max, got sigma_min={o.sigma_min}, sigma_max={o.sigma_max}")


@dataclass
class EDMOptions(NetOptions):
    steps: int = 4000
    batch: int = 1024       # denoising losses are noisy: large batches train far faster per second
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    sample_steps: int = 18   # noise levels n; 2n − 1 denoiser calls
    churn: float = 0.0
    sigma_data: float = 0.0  # EDM's σ_data; 0: the data's standard deviation
    preset: str = ""         # "paper": the GPM reference code's Gaussian-mixture configuration
    nll_points: int = 500    # held-out points for final.nll (probability-flow ODE); 0: no NLL

    SIGNED = {"p_mean": None}
    LOWER = {"p_std": (0, False), "sigma_min": (0, False), "rho": (0, False), "sample_steps": (1, True)}
    PRESETS = {"paper": dict(steps=10000, batch=128, lr=2e-4, hidden=512, depth=4, sigma_min=0.002, sigma_max=40.0,
                             rho=7.0, sample_steps=28, churn=0.0, sigma_data=0.5)}

    def check(self, method):
        super().check(method)
        _sigma_range(method, self)


@dataclass
class ScoreGANOptions(NetOptions):
    steps: int = 1500        # generator steps (phase 2)
    batch: int = 1024
    data_steps: int = 4000   # data-score steps (phase 1)
    data_score: str = "net"  # "net" or "kde"
    score_steps: int = 2     # generated-score DSM steps per generator step
    latent: int = 8
    p_mean: float = -1.2     # log-normal σ law of the phase-1 (data denoiser) training
    p_std: float = 1.2
    gen_lr: float = 5e-4
    sigma_min: float = 0.1   # ρ-warped σ law of phase 2 (reference code, Gaussian mixtures)
    sigma_max: float = 10.0
    rho: float = 3.0
    gen_score_init: str = "fresh"  # "fresh" (the reference code) or "copy" the phase-1 denoiser
    sigma_data: float = 0.0  # σ_data of both denoisers; 0: the data's standard deviation
    preset: str = ""

    SIGNED = {"p_mean": None}
    LOWER = {"score_steps": (1, True), "latent": (1, True), "p_std": (0, False), "gen_lr": (0, False),
             "sigma_min": (0, False), "rho": (0, False)}
    CHOICES = {"data_score": ("net", "kde"), "gen_score_init": ("fresh", "copy")}
    # Three network passes per generator step: smaller batches keep digits at a few minutes.
    # σ range of the reference code's MNIST config.
    IMAGE = {"batch": 256, "sigma_min": 0.32, "sigma_max": 40.0}
    # The reference runs 31 500 score steps with a generator step every 10: 3150 generator steps.
    # Its data score is the EDM preset's network, pretrained for 10 000 steps (our phase 1).
    PRESETS = {"paper": dict(data_steps=10000, steps=3150, score_steps=10, batch=128, lr=2e-4, gen_lr=2e-4, hidden=512,
                             depth=4, latent=128, sigma_min=0.1, sigma_max=10.0, rho=3.0, gen_score_init="fresh",
                             sigma_data=0.5)}

    def check(self, method):
        super().check(method)
        _sigma_range(method, self)


LOSSES = ("ns", "ipm")


@dataclass
class GANOptions(NetOptions):
    steps: int = 3000
    loss: str = "ns"
    penalty: float = 0.1     # R1 γ for "ns", gradient-penalty λ for "ipm"
    d_steps: int = 1         # discriminator steps per generator step
    latent: int = 8
    lr: float = 2e-4
    preset: str = ""

    LOWER = {"d_steps": (1, True), "latent": (1, True)}
    CHOICES = {"loss": LOSSES}
    # "vanilla" in the reference: the binary cross-entropy discriminator and non-saturating generator ("ns"), no penalty
    PRESETS = {"paper": dict(steps=1900, batch=128, lr=2e-4, hidden=512, depth=4, latent=128, d_steps=1, loss="ns",
                             penalty=0.0)}


@dataclass
class DiscFlowOptions(NetOptions):
    steps: int = 1500
    loss: str = "ns"
    penalty: float = 0.1
    eta: float = 3.0        # field scale η
    flow_steps: int = 10    # Euler steps over t ∈ [0, 1]
    preset: str = ""

    LOWER = {"eta": (0, False), "flow_steps": (1, True)}
    CHOICES = {"loss": LOSSES}
    PRESETS = {"paper": dict(steps=4000, batch=128, lr=2e-4, hidden=512, depth=4, eta=20.0, flow_steps=56, loss="ns",
                             penalty=0.0)}


@dataclass
class DistilledOptions(DiscFlowOptions):
    steps: int = 1500          # discriminator-flow steps (phase 1)
    distill_steps: int = 1000  # generator regression steps (phase 2)
    gen_lr: float = 1e-3

    LOWER = {"gen_lr": (0, False)}
    PRESETS = {}  # the GPM code has no distilled flow


@dataclass
class DiffFlowOptions(NetOptions):
    steps: int = 4000         # denoiser training steps (used with scores="net" only)
    batch: int = 1024
    scores: str = "kde"       # "kde" or "net"
    mix: float = 0.5          # 1: Langevin / diffusion end, 0: GAN-like flow
    beta: float = 20.0       # β(t) = beta · σ(t)²
    sigma_max: float = 2.0
    sigma_min: float = 0.05
    sample_steps: int = 200
    p_mean: float = -1.2
    p_std: float = 1.2
    q_bandwidth: float = 0.0  # smoothing of the generated score (KDE of the particles); 0: σ(t), like the data
    nll_points: int = 200     # held-out points for final.nll (deterministic counterpart; ~10 ms each on 2-D sets); 0: no NLL

    SIGNED = {"p_mean": None}
    LOWER = {"beta": (0, False), "sigma_min": (0, False), "sample_steps": (1, True), "p_std": (0, False)}
    CHOICES = {"scores": ("kde", "net")}
    IMAGE = {"sigma_max": 4.0, "sigma_min": 0.3}

    def check(self, method):
        super().check(method)
        if self.mix > 1:
            raise OptionError(f"option mix of {method!r} must be in [0, 1], got {self.mix}")
        _sigma_range(method, self)


@dataclass
class GuidanceOptions(EDMOptions):
    steps: int = 4000
    guidance: float = 3.0       # λ (score form; benchmarks/RESULTS.md: 3-10 on 2-D sets, 100-300 on digits)
    kernel: str = "gaussian"
    bandwidth: float = 0.5
    scale_bandwidth: bool = True
    n_data: int = 1000          # data samples in the witness
    sampler: str = "heun"
    latent: int = 0             # autoencoder latent size; 0: pixel/point space
    ae_steps: int = 1500
    guidance_mode: str = "score"  # "score": λ ∇D* added to the score in every derivative; "kick": after each step

    LOWER = {"bandwidth": (0, False), "n_data": (2, True)}
    CHOICES = {"kernel": KERNEL_NAMES, "sampler": ("heun", "euler", "ddim"), "guidance_mode": ("score", "kick")}
    PRESETS = {}  # not a GPM method
    IMAGE = {"guidance": 100.0, "bandwidth": 4.0}  # 0.5 is far below 64-D digit distances: no effect there


# ----- training-free flows ----------------------------------------------------------------------


@dataclass
class FlowOptions(Options):
    steps: int = 0
    n_data: int = 2000
    sample_steps: int = 200

    LOWER = {"n_data": (2, True), "sample_steps": (1, True)}

    def check(self, method):
        if self.steps != 0:
            raise OptionError(f"{method!r} is a training-free flow: option steps must be 0, got {self.steps}")


@dataclass
class MMDFlowOptions(FlowOptions):
    step_size: float = 3.0
    bandwidth: float = 0.5   # kernels at bandwidth and 4 × bandwidth, summed
    noise: float = 0.3       # initial noise-injection level β(0)

    LOWER = {"step_size": (0, False), "bandwidth": (0, False)}
    IMAGE = {"bandwidth": 4.0, "step_size": 30.0}


@dataclass
class SVGDOptions(FlowOptions):
    step_size: float = 0.02
    sigma: float = 0.2      # the target is the data smoothed by N(0, σ² I)

    LOWER = {"step_size": (0, False), "sigma": (0, False)}
    IMAGE = {"sigma": 0.5, "step_size": 1.0}


@dataclass
class LangevinOptions(FlowOptions):
    sample_steps: int = 20   # steps per level
    levels: int = 10
    sigma_max: float = 2.0
    sigma_min: float = 0.05
    eps: float = 2e-3        # step at the smallest level, in units of σ_min²

    LOWER = {"levels": (1, True), "sigma_min": (0, False), "eps": (0, False)}
    IMAGE = {"sigma_max": 4.0, "sigma_min": 0.1}

    def check(self, method):
        super().check(method)
        _sigma_range(method, self)


#: Each method's options, by the name the command line takes (methods/__init__.py maps the same
#: names to the method classes; a test keeps the two in step).
OPTIONS: Dict[str, Type[Options]] = {
    "edm": EDMOptions,
    "score-gan": ScoreGANOptions,
    "disc-flow": DiscFlowOptions,
    "disc-flow-gen": DistilledOptions,
    "gan": GANOptions,
    "diffflow": DiffFlowOptions,
    "mmd-guidance": GuidanceOptions,
    "mmd-flow": MMDFlowOptions,
    "svgd": SVGDOptions,
    "langevin": LangevinOptions,
}
