"""The standard FID's feature space: torch-fidelity's InceptionV3 with a weights file the user has.

``--set features=inception:PATH`` measures FD and KID on the 2048 pool features of the TF-ported
InceptionV3 that torch-fidelity (and clean-fid's legacy mode) use, loaded from
``weights-inception-2015-12-05-6726825d.pth`` at PATH (nothing is downloaded). Our [−1, 1] images go
in as torch-fidelity expects them: uint8 RGB, round((x + 1) · 127.5), grey repeated to three
channels; the extractor itself resizes to 299×299 as TF1 did. The FD of these features is then the
FID as torch-fidelity computes it (checked against ``torch_fidelity.calculate_metrics`` in
tests/test_inception_fid.py); our KID is over all features at once, not torch-fidelity's subsets.

Needs torch-fidelity (it imports torchvision), the ``[fid]`` extra.
"""

from __future__ import annotations

from typing import Tuple

import torch

Tensor = torch.Tensor
PREFIX = "inception:"
BATCH = 64


def to_uint8_rgb(x: Tensor, shape: Tuple[int, ...]) -> Tensor:
    """(N, prod(shape)) images in [−1, 1] -> (N, 3, H, W) uint8 as torch-fidelity reads image files."""
    c_h_w = shape if len(shape) == 3 else (1,) + tuple(shape)
    u8 = ((x.reshape((len(x),) + tuple(c_h_w)).float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return u8.expand(-1, 3, -1, -1) if u8.shape[1] == 1 else u8


class InceptionFeatures:
    """FD/KID feature space of the standard FID; no classes, so no coverage."""

    n_classes = None

    def __init__(self, weights: str, image_shape):
        self.path, self.shape = weights, tuple(image_shape)
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except Exception as e:  # ImportError, or torchvision failing to import underneath
            raise ValueError(f"features={PREFIX}{weights} needs torch-fidelity (pip install 'gpflow-kernels[fid]'): "
                             f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}") from None
        try:
            self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=weights)
        except Exception as e:  # a missing file, or a state dict of another network
            raise ValueError(f"features={PREFIX}{weights}: not torch-fidelity's InceptionV3 weights file "
                             f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from None

    def features(self, x: Tensor) -> Tensor:
        u8 = to_uint8_rgb(x.cpu(), self.shape)
        with torch.no_grad():
            out = [self.net(u8[i:i + BATCH])[0] for i in range(0, len(u8), BATCH)]
        return torch.cat(out).double()
