"""features=inception:PATH gives the FID that torch-fidelity computes, on the same weights file.

The real weights cannot be downloaded here, so the test saves a randomly initialised InceptionV3 of
torch-fidelity's own architecture and gives both sides that file. Needs torch-fidelity (and so a
torchvision that imports): skipped in CI, run in the torch 2.14.1 + torchvision venv (RESULTS.md).
"""

import pytest
import torch

from gpflow_kernels.data.dataset import Dataset
from gpflow_kernels.methods.metrics import evaluate, feature_space


def _fidelity():
    try:
        import torch_fidelity.feature_extractor_inceptionv3 as fe
        return fe
    except Exception:
        return None


fe = _fidelity()
pytestmark = pytest.mark.skipif(fe is None, reason="torch-fidelity does not import here (pip install '.[fid]')")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    mp = pytest.MonkeyPatch()
    mp.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})
    mp.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None)
    torch.manual_seed(0)
    net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    mp.undo()
    for m in net.modules():  # He initialisation keeps the activations' scale through 90-odd layers
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight)
    torch.save(net.state_dict(), path)
    return str(path)


class _Images(torch.utils.data.Dataset):
    def __init__(self, u8):
        self.u8 = u8

    def __len__(self):
        return len(self.u8)

    def __getitem__(self, i):
        return self.u8[i]


def test_fd_in_inception_space_is_torch_fidelitys_fid(weights):
    import torch_fidelity

    g = torch.Generator().manual_seed(1)
    real = torch.randint(0, 256, (24, 3, 12, 12), generator=g, dtype=torch.uint8)
    fake = (real.float() * 0.7 + 40).round().to(torch.uint8)  # a shifted, shrunk copy: FID well above 0
    flat = lambda u8: (u8.float() / 127.5 - 1).reshape(len(u8), -1)
    data = Dataset("x", flat(real), flat(real), image_shape=(3, 12, 12))
    space = feature_space(data, "inception:" + weights)
    ours = evaluate(flat(fake), data, space)
    want = torch_fidelity.calculate_metrics(input1=_Images(fake), input2=_Images(real), fid=True, cuda=False,
                                            batch_size=16, verbose=False, cache=False,
                                            feature_extractor_weights_path=weights)["frechet_inception_distance"]
    assert want > 1e-3 and ours["fd"] == pytest.approx(want, rel=1e-4)
    assert set(ours) == {"mmd2", "fd", "kid"}


def test_grey_images_go_in_as_rgb_and_bad_weights_are_named(weights, tmp_path):
    from gpflow_kernels.methods.inception import to_uint8_rgb

    x = torch.tensor([[-1.0, 0.0, 1.0, 0.5]])
    assert to_uint8_rgb(x, (2, 2)).tolist() == [[[[0, 128], [255, 191]]] * 3]
    data = Dataset("x", torch.zeros(4, 4), torch.zeros(4, 4), image_shape=(2, 2))
    torch.save({"not": torch.zeros(1)}, tmp_path / "bad.pth")
    for bad in (tmp_path / "bad.pth", tmp_path / "missing.pth"):
        with pytest.raises(ValueError, match=f"features=inception:{bad}: not torch-fidelity's InceptionV3 weights"):
            feature_space(data, f"inception:{bad}")
