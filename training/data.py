"""Training patches from ../shared/data/train (T91 + BSD200), degraded on the fly per the protocol.

All images are held in memory as uint8 (about 100 MB). SR inputs come from the whole-image Pillow
bicubic LR (HR mod-cropped, exactly as the evaluation protocol), so patches carry no resize border
artefacts; flips and 90-degree rotations are applied to the (input, target) pair, and with the
recipe's ``colour_perm`` the clean patch's channels are put in a random order before it is degraded.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from edge_enhance.errors import ConfigError
from edge_enhance.evaluation import Degradation, degrade, jpeg, list_images, load_rgb, mod_crop, shared_data, sr_pair

from .recipes import Recipe

TRAIN_SETS = ("T91", "BSD200")


def default_data_root() -> Path:
    """$EDGE_ENHANCE_DATA, else the nearest ``shared/data`` beside the repository root or above it
    (``../shared/data`` from /work/main; worktrees sit one level deeper)."""
    found = shared_data("train")
    if found is not None:
        return found.parent
    raise ConfigError("no shared/data above the repository; set EDGE_ENHANCE_DATA or pass --data")


def load_train_images(root: Path | None = None, sets=TRAIN_SETS) -> list[np.ndarray]:
    root = Path(root) if root else default_data_root()
    return [load_rgb(p) for s in sets for p in list_images(root / "train" / s)]


def _augment(rng: np.random.Generator, *arrays):
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    out = []
    for a in arrays:
        a = np.rot90(a, k)
        out.append(np.ascontiguousarray(a[:, ::-1] if flip else a))
    return out


def _to_tensor(batch: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float().div_(255.0)


class PatchSampler:
    """Draws (input, target) batches for one recipe; deterministic for a given seed."""

    def __init__(self, recipe: Recipe, images: list[np.ndarray], seed: int = 0):
        self.r = recipe
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        s, p = recipe.scale, recipe.patch
        need = p * s + (16 * s if recipe.task == "enhance" else 0)
        self.images = [im for im in images if min(im.shape[:2]) >= need]
        if not self.images:
            raise ConfigError(f"no training image is at least {need} pixels on its short side "
                              f"(patch {p} x scale {s}{' + the degradation margin' if recipe.task == 'enhance' else ''})")
        self.pairs = [sr_pair(im, s) for im in self.images] if recipe.task == "sr" else None

    def sample(self, batch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for _ in range(batch or self.r.batch):
            x, y = self._one()
            x, y = _augment(self.rng, x, y)
            xs.append(x)
            ys.append(y)
        return _to_tensor(xs), _to_tensor(ys)

    def _crop(self, im: np.ndarray, side: int) -> np.ndarray:
        h, w = im.shape[:2]
        i, j = int(self.rng.integers(h - side + 1)), int(self.rng.integers(w - side + 1))
        return im[i:i + side, j:j + side]

    def _one(self) -> tuple[np.ndarray, np.ndarray]:
        r, rng, p, s = self.r, self.rng, self.r.patch, self.r.scale
        k = int(rng.integers(len(self.images)))
        # Before the degradation: JPEG and its chroma subsampling treat the channels unequally.
        c = rng.permutation(3) if r.colour_perm else slice(None)
        if r.task == "sr":  # bicubic works per channel: the pair's channels are permuted alike
            hr, lr = self.pairs[k]
            i, j = int(rng.integers(lr.shape[0] - p + 1)), int(rng.integers(lr.shape[1] - p + 1))
            return lr[i:i + p, j:j + p, c], hr[i * s:(i + p) * s, j * s:(j + p) * s, c]
        if r.task == "denoise":
            clean = self._crop(self.images[k], p)[..., c]
            sigma = rng.uniform(0.0, r.sigma_max)
            grey = r.grey_noise and rng.random() < r.grey_noise  # one draw for R, G and B: luma-only noise
            noise = rng.normal(0, sigma, clean.shape[:2] + (1,) if grey else clean.shape)
            noisy = np.clip(np.round(clean + noise), 0, 255).astype(np.uint8)
            return noisy, clean
        if r.task == "dejpeg":
            clean = self._crop(self.images[k], p)[..., c]
            return jpeg(clean, int(rng.integers(r.quality_range[0], r.quality_range[1] + 1))), clean
        # enhance: degrade an HR crop with an 8-LR-pixel margin, keep the centre (no border effects).
        m = 8
        hr = mod_crop(self._crop(self.images[k], (p + 2 * m) * s), s)[..., c]
        lr = degrade(hr, s, rng, Degradation.draw(rng))
        return lr[m:m + p, m:m + p], hr[m * s:(m + p) * s, m * s:(m + p) * s]


class _Stream(torch.utils.data.IterableDataset):
    """Endless batches from a copy of one sampler per worker, seeded by (seed, start step, worker)."""

    def __init__(self, sampler: PatchSampler, start: int):
        self.sampler, self.start = sampler, start

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        s = copy.copy(self.sampler)
        s.rng = np.random.default_rng([self.sampler.seed, self.start, info.id if info else 0])
        while True:
            yield s.sample()


def batches(sampler: PatchSampler, workers: int = 0, start: int = 0, pin: bool = False):
    """Endless (input, target) batches. workers=0: drawn here from the sampler, whose rng state the
    checkpoint keeps. workers=N: drawn by N processes (for a GPU the degradations would otherwise
    starve), each seeded by (seed, start, worker) and read in turn, so a run that resumes at the same
    step with the same N draws the same batches."""
    if workers <= 0:
        while True:
            yield sampler.sample()
    loader = torch.utils.data.DataLoader(_Stream(sampler, start), batch_size=None, num_workers=workers,
                                         prefetch_factor=4, persistent_workers=True, pin_memory=pin)
    yield from loader
