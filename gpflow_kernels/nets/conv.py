"""Convolutional networks for image data. Every network takes and returns *flattened* images
(N, C·H·W), like the MLPs, so the methods and solvers stay shape-agnostic; the image shape is fixed
at construction ((H, W) for one channel or (C, H, W)).

- :class:`UNet`: a small noise-conditioned U-Net, the backbone F(x, c_noise) that EDM's
  preconditioning wraps (residual blocks with GroupNorm and SiLU, the noise embedding added in
  every block, average-pool down, nearest up, skip connections; the output convolution starts at
  zero so the untrained denoiser is EDM's c_skip x).
- :class:`DCGANGenerator`: z -> image by a linear layer and two stride-2 transposed convolutions,
  tanh output (Radford et al. 2016).
- :class:`DCGANDiscriminator`: two stride-2 convolutions with LeakyReLU(0.2) and a linear head;
  ``conditioned=True`` adds a time/noise embedding as a per-channel bias (disc-flow's f(x, t)).
  No batch normalisation: the gradient penalty, R1 and the flows differentiate per sample (our
  choice, as in WGAN-GP's critic).
Sizes that do not divide by the strides are zero-padded and cropped back (centre).
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .mlp import FourierEmbedding

Tensor = torch.Tensor


def chw(shape: Sequence[int]) -> Tuple[int, int, int]:
    return tuple(shape) if len(shape) == 3 else (1,) + tuple(shape)


def _groups(c: int) -> int:
    return next(g for g in (8, 4, 2, 1) if c % g == 0)


def _pad_to(x: Tensor, mult: int) -> Tensor:
    h, w = x.shape[-2:]
    ph, pw = (-h) % mult, (-w) % mult
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)) if (ph or pw) else x


def _crop(x: Tensor, h: int, w: int) -> Tensor:
    top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    return x[..., top:top + h, left:left + w]


def _as_images(x: Tensor, shape) -> Tensor:
    x = x.reshape((x.shape[0],) + tuple(shape))
    return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x


def _embedding(c, n: int, like: Tensor, embed: nn.Module) -> Tensor:
    c = torch.as_tensor(c, dtype=like.dtype, device=like.device).expand(n)
    return embed(c).to(like.dtype)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int):
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(_groups(cin), cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.e = nn.Linear(emb, cout)
        self.n2, self.c2 = nn.GroupNorm(_groups(cout), cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        h = self.c1(F.silu(self.n1(x))) + self.e(e)[:, :, None, None]
        return self.skip(x) + self.c2(F.silu(self.n2(h)))


class UNet(nn.Module):
    """F(x, c): x (N, C·H·W), c a per-sample scalar (N,) or () -> (N, C·H·W).

    ``levels`` resolutions (each half the previous; at most log2 of the shorter side), widths
    ``channels`` × (1, 2, 4, 4, ...)."""

    def __init__(self, image_shape, channels: int = 32, levels: int = 2, emb: int = 64):
        super().__init__()
        self.shape = chw(image_shape)
        c, h, w = self.shape
        levels = max(1, min(int(levels), int(math.log2(min(h, w))) + 1))
        self.mult = 2 ** (levels - 1)
        chs = [channels * min(2**i, 4) for i in range(levels)]
        self.embed = nn.Sequential(FourierEmbedding(emb), nn.Linear(emb, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.inp = nn.Conv2d(c, chs[0], 3, padding=1)
        self.down = nn.ModuleList(ResBlock(chs[max(i - 1, 0)], chs[i], emb) for i in range(levels))
        self.mid = ResBlock(chs[-1], chs[-1], emb)
        self.up = nn.ModuleList(ResBlock(2 * chs[i], chs[max(i - 1, 0)], emb) for i in reversed(range(levels)))
        self.norm = nn.GroupNorm(_groups(chs[0]), chs[0])
        self.out = nn.Conv2d(chs[0], c, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, c) -> Tensor:
        n = x.shape[0]
        _, h, w = self.shape
        e = self.embed[1:](_embedding(c, n, x, self.embed[0]))
        z = _pad_to(_as_images(x, self.shape), self.mult)
        z = self.inp(z)
        skips = []
        for i, blk in enumerate(self.down):
            z = blk(z, e)
            skips.append(z)
            if i < len(self.down) - 1:
                z = F.avg_pool2d(z, 2)
        z = self.mid(z, e)
        for j, blk in enumerate(self.up):
            i = len(self.down) - 1 - j
            z = blk(torch.cat([z, skips[i]], 1), e)
            if i > 0:
                z = F.interpolate(z, scale_factor=2, mode="nearest")
        z = self.out(F.silu(self.norm(z)))
        return _crop(z, h, w).reshape(n, -1)


class DCGANGenerator(nn.Module):
    """z (N, latent) -> images (N, C·H·W) in (−1, 1)."""

    def __init__(self, latent: int, image_shape, channels: int = 32):
        super().__init__()
        self.shape = chw(image_shape)
        c, h, w = self.shape
        self.h0, self.w0 = math.ceil(h / 4), math.ceil(w / 4)
        self.fc = nn.Linear(latent, 2 * channels * self.h0 * self.w0)
        self.net = nn.Sequential(
            nn.GroupNorm(_groups(2 * channels), 2 * channels), nn.ReLU(),
            nn.ConvTranspose2d(2 * channels, channels, 4, 2, 1),
            nn.GroupNorm(_groups(channels), channels), nn.ReLU(),
            nn.ConvTranspose2d(channels, c, 4, 2, 1), nn.Tanh())

    def forward(self, z: Tensor) -> Tensor:
        x = self.fc(z).reshape(z.shape[0], -1, self.h0, self.w0)
        return _crop(self.net(x), *self.shape[1:]).reshape(z.shape[0], -1)


class DCGANDiscriminator(nn.Module):
    """x (N, C·H·W) [, c (N,) or ()] -> (N, d_out)."""

    def __init__(self, image_shape, channels: int = 32, d_out: int = 1, conditioned: bool = False, emb: int = 32):
        super().__init__()
        self.shape = chw(image_shape)
        c, h, w = self.shape
        self.c1 = nn.Conv2d(c, channels, 4, 2, 1)
        self.c2 = nn.Conv2d(channels, 2 * channels, 4, 2, 1)
        self.head = nn.Linear(2 * channels * math.ceil(h / 4) * math.ceil(w / 4), d_out)
        self.conditioned = conditioned
        if conditioned:
            self.embed = FourierEmbedding(emb)
            self.b1, self.b2 = nn.Linear(emb, channels), nn.Linear(emb, 2 * channels)

    def forward(self, x: Tensor, c=None) -> Tensor:
        n = x.shape[0]
        z = _pad_to(_as_images(x, self.shape), 4)
        z = self.c1(z)
        if self.conditioned:
            e = _embedding(c, n, x, self.embed)
            z = z + self.b1(e)[:, :, None, None]
        z = self.c2(F.leaky_relu(z, 0.2))
        if self.conditioned:
            z = z + self.b2(e)[:, :, None, None]
        return self.head(F.leaky_relu(z, 0.2).flatten(1))
