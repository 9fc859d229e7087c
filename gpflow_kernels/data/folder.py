"""Images from a folder of PNG/JPEG/GIF/WebP/BMP/TIFF files, read and resized as torchvision does.

Layouts: the image files directly in the folder (no labels), or one sub-folder per class
(``root/cat/*.png``, ``root/dog/*.jpg``; labels are the sub-folders in sorted order, as
torchvision's ``ImageFolder`` numbers them). Files with other extensions are ignored; a folder
with images both at its top level and in sub-folders is refused rather than half-read.

Files are read with PIL, as ImageFolder's default loader does (torchvision 0.29 deprecates its own
``torchvision.io`` decoders), turned into uint8 tensors by ``pil_to_tensor`` and, for large
folders, spread over DataLoader workers. Channels (our choice): images in PIL's grey modes are
read as one channel (alpha dropped, 16-bit grey reduced to 8 bits by PIL), every other mode as RGB;
when the folder mixes the two, grey images are repeated to RGB. With ``image_size`` each image is
resized (shorter side, antialiased bilinear) and centre-cropped by
``torchvision.transforms.v2.functional``; without it, all images must share one size. Pixels keep
their 256 levels (for bits/dim).

torchvision (the optional extra ``[images]``) is used where it imports. Without it (it is not
installable beside every torch) the same steps run on Pillow and torch alone (``_PilOps``): the
pixels as PIL decodes them, and the resize as torchvision does it on uint8 tensors (the shorter
side to N, the longer to int(N · long / short); torch's antialiased bilinear interpolate on the
float image, rounded and clamped back to uint8; the crop offsets int(round((h − N) / 2)), as
``center_crop``). Pillow is a dependency of the ``[images]``/``[test]`` extras; a missing Pillow is
one error line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from .dataset import Dataset
from .images import image_dataset, resized_hw

#: Image files, as torchvision's ImageFolder lists them (upper or lower case).
EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".ppm", ".pgm", ".tif", ".tiff")
#: PIL modes read as one grey channel (alpha dropped); every other mode is converted to RGB.
GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "F")
#: Folders with at least this many images are decoded by DataLoader workers.
WORKERS_FROM = 512


class _PilOps:
    """torchvision.transforms.v2.functional's pil_to_tensor, resize (antialiased bilinear, uint8)
    and center_crop, on Pillow and torch alone (see the module doc)."""

    @staticmethod
    def pil_to_tensor(im):
        import numpy as np

        a = np.asarray(im)
        a = a[:, :, None] if a.ndim == 2 else a
        return torch.from_numpy(a.copy()).permute(2, 0, 1).contiguous()

    @staticmethod
    def resize(img, size: int, antialias: bool = True):
        h, w = img.shape[-2:]
        nh, nw = resized_hw(h, w, size)
        if (nh, nw) == (h, w):
            return img
        out = torch.nn.functional.interpolate(img[None].float(), size=(nh, nw), mode="bilinear",
                                              align_corners=False, antialias=antialias)[0]
        return out.round_().clamp_(0, 255).to(torch.uint8)

    @staticmethod
    def center_crop(img, output_size):
        th, tw = output_size
        h, w = img.shape[-2:]
        if th > h or tw > w:
            raise ValueError(f"center_crop to {th}×{tw} of a {h}×{w} image")
        top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
        return img[..., top:top + th, left:left + tw]


def image_ops():
    """torchvision.transforms.v2.functional where torchvision imports, else ``_PilOps``; ValueError
    when Pillow is missing too."""
    try:
        return torchvision_modules()[1]
    except ValueError:
        pass
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise ValueError("folders of image files need Pillow (pip install pillow), or torchvision: "
                         "pip install 'gpflow-kernels[images]'") from None
    return _PilOps


def torchvision_modules():
    """(torchvision, torchvision.transforms.v2.functional); ValueError telling how to install."""
    try:
        import torchvision
        from torchvision.transforms.v2 import functional as TF
    except ImportError:
        raise ValueError("folders of image files need torchvision: pip install 'gpflow-kernels[images]' "
                         "(with a torch build that torchvision supports)") from None
    except Exception as e:  # a torchvision built for another torch fails at import with RuntimeError
        raise ValueError(f"folders of image files need torchvision, which fails to import here "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:160]}); install the torchvision "
                         "release built for this torch") from None
    return torchvision, TF


def _images_in(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)


def list_images(root: Path) -> Tuple[List[Path], Optional[List[int]], List[str]]:
    """(files, labels or None, class names) of the folder ``root``; ValueError naming the problem."""
    top = _images_in(root)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    per_class = {c: _images_in(root / c) for c in classes}
    classes = [c for c in classes if per_class[c]]
    if top and classes:
        raise ValueError(f"{root} holds images both at its top level ({top[0].name}, ...) and in sub-folders "
                         f"({classes[0]}/, ...); put all images in class sub-folders, or all at the top level")
    if top:
        return top, None, []
    if not classes:
        raise ValueError(f"{root} holds no image files ({', '.join(EXTENSIONS)}), neither at its top level nor "
                         "in sub-folders")
    files, labels = [], []
    for i, c in enumerate(classes):
        files += per_class[c]
        labels += [i] * len(per_class[c])
    return files, labels, classes


class _Decoded(torch.utils.data.Dataset):
    """Image i of ``files`` as (C, H, W) uint8 (C = 1 for grey modes, else RGB), resized when ``size`` is set."""

    def __init__(self, files: List[Path], size: Optional[int]):
        self.files, self.size = files, size

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image

        TF = image_ops()
        path = self.files[i]
        try:
            with Image.open(path) as im:
                im.seek(0)  # an animated image: its first frame
                img = TF.pil_to_tensor(im.convert("L" if im.mode in GREY_MODES else "RGB"))
        except Exception as e:
            raise ValueError(f"{path} cannot be decoded as an image ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:160] if str(e) else ''})") from None
        if self.size is not None:
            img = TF.center_crop(TF.resize(img, self.size, antialias=True), [self.size, self.size])
        return img.contiguous()


def _decode_all(files: List[Path], size: Optional[int]) -> List[torch.Tensor]:
    data = _Decoded(files, size)
    if len(files) < WORKERS_FROM:
        return [data[i] for i in range(len(files))]
    workers = min(8, os.cpu_count() or 1)
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=workers, prefetch_factor=8)
    it = iter(loader)
    try:
        return list(it)
    except Exception as e:  # a worker's ValueError comes back with its traceback in the message: keep our line
        lines = str(e).strip().splitlines() or [repr(e)]
        line = next((ln for ln in reversed(lines) if "cannot be decoded" in ln), lines[-1])
        raise ValueError(line.removeprefix("ValueError: ")) from None
    finally:
        # Stop the workers now: left to the garbage collector after an error, their shutdown took
        # 10 s (measured: a corrupt file among 9 images, 2 workers).
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def usable_images(root: Path, min_rows: int) -> Tuple[List[Path], Optional[List[int]]]:
    """(files, labels or None) of a folder with at least ``min_rows`` images, a decoder importable."""
    files, labels, _ = list_images(root)
    if len(files) < min_rows:
        raise ValueError(f"{root} holds {len(files)} image files; at least {min_rows} are needed (2 are held out)")
    image_ops()
    return files, labels


def load_folder(root: Path, seed: int, min_rows: int, image_size: Optional[int] = None) -> Dataset:
    """The images of the folder ``root`` as an image Dataset (see the module docstring)."""
    files, labels = usable_images(root, min_rows)
    imgs = _decode_all(files, image_size)
    sizes = {tuple(im.shape[1:]) for im in imgs}
    if len(sizes) > 1:
        (a, sa), (b, sb) = [next((f, tuple(im.shape[1:])) for f, im in zip(files, imgs) if tuple(im.shape[1:]) == s)
                            for s in sorted(sizes)[:2]]
        raise ValueError(f"{root} holds images of different sizes ({a.name}: {sa[0]}×{sa[1]}, {b.name}: "
                         f"{sb[0]}×{sb[1]}); give --set image_size=N to resize and centre-crop them to N×N")
    grey = all(im.shape[0] == 1 for im in imgs)
    if not grey:
        imgs = [im.expand(3, -1, -1) if im.shape[0] == 1 else im for im in imgs]
    x = torch.stack(imgs)
    lab = None if labels is None else torch.tensor(labels, dtype=torch.long)
    return image_dataset(root, x, lab, seed, min_rows)
