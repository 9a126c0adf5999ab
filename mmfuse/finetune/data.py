"""What the fine-tune loop reads: tokenised texts + preprocessed images (+ labels) of a split, in
length-bucketed batches as extraction makes them, with train-only augmentation."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..data import DataSet, open_image
from ..errors import DataError
from ..extract.image import ImageFiles
from ..extract.text import tokenize
from .config import FineTuneConfig


class AugmentedImages(ImageFiles):
    """Training images with random resized crop, horizontal flip and colour jitter."""

    def __init__(self, paths, resize, crop, draft):
        from torchvision.transforms import v2  # torchvision loads every model: imported when used

        super().__init__(paths, resize, crop, draft)
        self.augment = v2.Compose([v2.RandomResizedCrop(crop, scale=(0.5, 1.0), antialias=True),
                                   v2.RandomHorizontalFlip(), v2.ColorJitter(0.3, 0.3, 0.3)])

    def __getitem__(self, i: int):
        from torchvision.transforms import v2

        try:
            img = open_image(self.paths[i], self.resize if self.draft else None)
            return i, v2.functional.pil_to_tensor(self.augment(img)), ""
        except Exception as e:  # noqa: BLE001 - reported by the caller with the guid
            return i, torch.zeros(3, self.crop, self.crop, dtype=torch.uint8), f"{type(e).__name__}: {e}"


class Batches:
    """Length-bucketed batches as in extraction: shuffled (a generator seeded per epoch) and sorted by
    token count within pools of 32 batches, so padding stays small; ``shuffle=False``: fully sorted."""

    def __init__(self, lengths: list[int], batch_size: int, shuffle: bool, seed: int = 0):
        self.lengths, self.batch_size, self.shuffle, self.seed, self.epoch = lengths, batch_size, shuffle, seed, 0

    def __iter__(self):
        n = len(self.lengths)
        if not self.shuffle:
            order = sorted(range(n), key=lambda i: self.lengths[i])
            yield from (order[s:s + self.batch_size] for s in range(0, n, self.batch_size))
            return
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm, pool, batches = torch.randperm(n, generator=g).tolist(), 32 * self.batch_size, []
        for s in range(0, n, pool):
            chunk = sorted(perm[s:s + pool], key=lambda i: self.lengths[i])
            batches += [chunk[j:j + self.batch_size] for j in range(0, len(chunk), self.batch_size)]
        yield from (batches[k] for k in torch.randperm(len(batches), generator=g).tolist())

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)


class PairLoader:
    """Batches of tokenised texts + preprocessed images (+ labels) of one split's records."""

    def __init__(self, ds: DataSet, rows: np.ndarray, tokenizer, prep: dict, cfg: FineTuneConfig, *,
                 train: bool, device: torch.device):
        self.records = [ds.records[i] for i in rows]
        self.y = ds.label_array()[rows]
        self.enc = tokenize(tokenizer, [r.text for r in self.records], cfg.text.max_length)  # long texts cut first
        self.keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in self.enc]
        self.tokenizer, self.device = tokenizer, device
        images = (AugmentedImages if train and cfg.augment else ImageFiles)(
            [r.image_path for r in self.records], prep["resize"], prep["crop"], True)
        self.sampler = Batches([len(ids) for ids in self.enc["input_ids"]], cfg.batch_size, train, cfg.seed)
        self.loader = DataLoader(images, batch_sampler=self.sampler, num_workers=cfg.num_workers,
                                 pin_memory=device.type == "cuda")
        self.mean = torch.tensor(prep["mean"], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(prep["std"], device=device).view(1, 3, 1, 1)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        for pos, x, errors in self.loader:
            bad = [(int(p), e) for p, e in zip(pos, errors) if e]
            if bad:
                r = self.records[bad[0][0]]
                raise DataError(f"cannot decode image of guid {r.guid}: {r.image_path}: {bad[0][1]} ({r.source})")
            batch = self.tokenizer.pad({k: [self.enc[k][i] for i in pos] for k in self.keys}, return_tensors="pt")
            batch = {k: v.to(self.device) for k, v in batch.items()}
            batch["pixels"] = x.to(self.device, non_blocking=True).float().div_(255).sub_(self.mean).div_(self.std)
            yield pos.numpy(), batch, torch.from_numpy(self.y[pos.numpy()]).to(self.device)
