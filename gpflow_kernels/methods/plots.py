"""PNG figures of a run: samples (scatter against held-out data, or an image grid) and particle paths."""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.dataset import Dataset

Tensor = torch.Tensor


def pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - exercised only without matplotlib
        raise ImportError("figures need matplotlib: pip install 'gpflow-kernels[cli]'") from e
    return plt


def _limits(data: Dataset):
    y = data.test
    lo, hi = y.min(0).values, y.max(0).values
    pad = 0.25 * (hi - lo)
    return (float(lo[0] - pad[0]), float(hi[0] + pad[0])), (float(lo[1] - pad[1]), float(hi[1] + pad[1]))


def _grid(images: Tensor, rows: int, cols: int, shape) -> Tensor:
    """Flattened images (n, C·H·W) tiled on a canvas (H', W') for one channel, (H', W', 3) for RGB."""
    c, h, w = shape if len(shape) == 3 else (1,) + tuple(shape)
    imgs = images[: rows * cols].reshape(-1, c, h, w).clamp(-1, 1)
    canvas = torch.zeros(c, rows * (h + 1) + 1, cols * (w + 1) + 1)  # mid-grey frames between images
    for k in range(len(imgs)):
        r, col = divmod(k, cols)
        canvas[:, 1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + col * (w + 1): 1 + col * (w + 1) + w] = imgs[k]
    return canvas[0] if c == 1 else (canvas.permute(1, 2, 0) + 1) / 2  # RGB: imshow wants [0, 1]


def _show(ax, canvas: Tensor) -> None:
    if canvas.dim() == 2:
        ax.imshow(canvas.numpy(), cmap="gray_r", vmin=-1, vmax=1)
    else:
        ax.imshow(canvas.numpy())


def samples_png(path: Path, x: Tensor, data: Dataset, title: str) -> None:
    plt = pyplot()
    x = x.detach().float().cpu()
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    if data.is_image:
        _show(ax, _grid(x, 8, 8, data.image_shape))
        ax.axis("off")
    else:
        y = data.test[:2000]
        ax.scatter(y[:, 0], y[:, 1], s=2, c="0.75", label="held-out data")
        ax.scatter(x[:, 0], x[:, 1], s=2, c="tab:blue", label="samples")
        xl, yl = _limits(data)
        ax.set_xlim(*xl)
        ax.set_ylim(*yl)
        ax.set_aspect("equal")
        ax.legend(loc="upper right", markerscale=4, fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def trajectory_png(path: Path, traj: Tensor, data: Dataset, title: str, label: str = "time") -> None:
    """traj: (T, n, D) particle states; 2-D: paths of up to 64 particles; images: a row per particle."""
    plt = pyplot()
    traj = traj.detach().float().cpu()
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    if data.is_image:
        T = traj.shape[0]
        cols = min(T, 10)
        idx = torch.linspace(0, T - 1, cols).round().long()
        rows = min(traj.shape[1], 8)
        frames = traj[idx, :rows].transpose(0, 1).reshape(rows * cols, -1)
        _show(ax, _grid(frames, rows, cols, data.image_shape))
        ax.set_xlabel(f"{label} →")
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        y = data.test[:2000]
        ax.scatter(y[:, 0], y[:, 1], s=2, c="0.8")
        k = min(traj.shape[1], 64)
        for i in range(k):
            ax.plot(traj[:, i, 0], traj[:, i, 1], lw=0.6, alpha=0.7)
        ax.scatter(traj[0, :k, 0], traj[0, :k, 1], s=6, c="k", marker="x", label="start")
        ax.scatter(traj[-1, :k, 0], traj[-1, :k, 1], s=8, c="tab:red", label="end")
        xl, yl = _limits(data)
        ax.set_xlim(*xl)
        ax.set_ylim(*yl)
        ax.set_aspect("equal")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
