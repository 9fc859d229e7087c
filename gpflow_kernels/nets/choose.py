"""Which network a method gets: MLPs on points, convolutional networks on images.

Option ``arch``: "auto" (convolutional when the data are images), "mlp" or "conv". MLP widths and
depths are ``hidden`` / ``depth``; convolutional widths ``channels``, and the U-Net has ``depth``
resolutions. Each factory returns a module on flattened inputs (see ``conv.py``).
"""

from __future__ import annotations

from typing import Optional, Sequence

from torch import nn

from .conv import DCGANDiscriminator, DCGANGenerator, UNet
from .mlp import ConditionedMLP, EDMPrecond, mlp


def use_conv(opts, image_shape: Optional[Sequence[int]]) -> bool:
    arch = getattr(opts, "arch", "mlp")
    if arch == "conv" and image_shape is None:
        raise ValueError("option arch=conv needs image data (the data set holds points)")
    return image_shape is not None and arch in ("auto", "conv")


def denoiser(opts, dim: int, image_shape, sigma_data: float) -> EDMPrecond:
    """EDM-preconditioned denoiser D(x; σ): a U-Net backbone on images, a conditioned MLP otherwise."""
    if use_conv(opts, image_shape):
        return EDMPrecond(dim, opts.hidden, opts.depth, sigma_data, backbone=UNet(image_shape, opts.channels, opts.depth))
    return EDMPrecond(dim, opts.hidden, opts.depth, sigma_data)


def generator(opts, latent: int, dim: int, image_shape) -> nn.Module:
    """z (N, latent) -> samples (N, dim)."""
    if use_conv(opts, image_shape):
        return DCGANGenerator(latent, image_shape, opts.channels)
    return mlp(latent, dim, opts.hidden, opts.depth)


def discriminator(opts, dim: int, image_shape, *, d_out: int = 1, conditioned: bool = False) -> nn.Module:
    """x (N, dim) [, c] -> (N, d_out); ``conditioned``: a time/noise-conditioned critic f(x, c)."""
    if use_conv(opts, image_shape):
        return DCGANDiscriminator(image_shape, opts.channels, d_out=d_out, conditioned=conditioned)
    if conditioned:
        return ConditionedMLP(dim, opts.hidden, opts.depth, d_out=d_out)
    return mlp(dim, d_out, opts.hidden, opts.depth)
