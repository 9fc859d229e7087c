"""The methods' networks (layer 3 machinery beside ``methods``): what a method trains.

- ``mlp.py``: MLPs, the Fourier noise/time embedding, noise-conditioned MLPs and EDM's
  preconditioning (which wraps any backbone F(x, c_noise));
- ``conv.py``: the image networks: a small U-Net backbone, DCGAN-style generator and
  discriminators (time-conditioned for disc-flow);
- ``ema.py``: an exponential moving average of a method's weights, used for sampling;
- ``choose.py``: picks the MLP or the convolutional network from the data and the options.
"""

from .choose import denoiser, discriminator, generator, use_conv
from .conv import DCGANDiscriminator, DCGANGenerator, UNet
from .ema import EMA
from .mlp import ConditionedMLP, EDMPrecond, FourierEmbedding, mlp

__all__ = ["ConditionedMLP", "EDMPrecond", "FourierEmbedding", "mlp", "UNet", "DCGANGenerator",
           "DCGANDiscriminator", "EMA", "denoiser", "discriminator", "generator", "use_conv"]
