"""Dataset utilities shared by the train scripts: image folders with captions, transforms, aspect-ratio buckets.

Image-folder format (the same as diffusers' ``imagefolder`` datasets)::

    my_data/
      metadata.jsonl          {"file_name": "0001.png", "text": "a red cube"}   one JSON object per line
      0001.png                (extra keys are kept in the item under "extra")
      ...

or, without ``metadata.jsonl``, every image with a sidecar caption ``<stem>.txt`` (an empty caption when absent).

A missing or unreadable image either stops the run with an error naming the file (``on_missing_file="error"``) or
is skipped with a warning naming it (``"skip"``).

Aspect-ratio buckets (for ResAdapter-style multi-resolution training): :func:`make_buckets` lists ``(width,
height)`` sizes, :class:`ImageCaptionDataset` with ``buckets=`` resizes every image to its nearest bucket, and
:class:`BucketBatchSampler` makes every batch a single bucket.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.utils import logging
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler

logger = logging.get_logger(__name__)

__all__ = [
    "IMAGE_EXTENSIONS",
    "DataFileError",
    "ImageCaptionDataset",
    "BucketBatchSampler",
    "make_buckets",
    "nearest_bucket",
    "read_image_folder",
    "resize_and_crop",
    "to_tensor",
    "load_image",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_MAX_LISTED = 5


class DataFileError(ValueError):
    """A data file is missing, unreadable or malformed; ``path`` names it."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = None if path is None else str(path)


# ----------------------------------------------------------------------------------------------------------------------
# reading the folder
# ----------------------------------------------------------------------------------------------------------------------
def read_image_folder(
    root: str | os.PathLike, *, image_column: str = "file_name", caption_column: str = "text"
) -> list[dict[str, Any]]:
    """Entries ``{"path": Path, "text": str, "extra": dict}`` of an image folder (see the module docstring).

    Raises:
        FileNotFoundError: ``root`` does not exist.
        DataFileError: a malformed ``metadata.jsonl`` line (naming file and line number) or no image found.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Training data folder {str(root)!r} does not exist.")
    manifest = root / "metadata.jsonl"
    entries: list[dict[str, Any]] = []
    if manifest.is_file():
        for lineno, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{manifest}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataFileError(f"Malformed JSON at {where}: {err.msg}.", manifest) from None
            if not isinstance(record, dict) or image_column not in record:
                raise DataFileError(f"{where} has no {image_column!r} key.", manifest)
            text = record.get(caption_column, "")
            if not isinstance(text, str):
                raise DataFileError(f"{where}: {caption_column!r} must be a string, got {type(text).__name__}.")
            extra = {k: v for k, v in record.items() if k not in (image_column, caption_column)}
            entries.append({"path": root / str(record[image_column]), "text": text, "extra": extra})
    else:
        for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()):
            caption = path.with_suffix(".txt")
            text = caption.read_text(encoding="utf-8").strip() if caption.is_file() else ""
            entries.append({"path": path, "text": text, "extra": {}})
    if not entries:
        raise DataFileError(f"No image found in {str(root)!r} (metadata.jsonl or image files with captions).", root)
    return entries


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image as RGB (EXIF orientation applied; alpha composited on white; 16-bit scaled to 8-bit).

    Raises:
        DataFileError: the file is missing or not a readable image (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"Image file {str(path)!r} does not exist.", path)
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise DataFileError(f"Cannot read image {str(path)!r}: {err}", path) from None
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(array / 257.0, 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


# ----------------------------------------------------------------------------------------------------------------------
# transforms
# ----------------------------------------------------------------------------------------------------------------------
def resize_and_crop(
    image: Image.Image,
    size: int | tuple[int, int],
    *,
    center_crop: bool = True,
    rng: random.Random | None = None,
) -> tuple[Image.Image, tuple[int, int]]:
    """Resize so the image covers ``size`` then crop to it.

    Args:
        image: a PIL image.
        size: ``side`` (square) or ``(width, height)``.
        center_crop: crop the center; otherwise a random crop drawn from ``rng``.
        rng: the random source for random crops (default: a fresh ``random.Random()``).

    Returns:
        ``(cropped image of exactly size, (crop_top, crop_left))`` -- the crop offset SDXL conditions on.
    """
    width, height = (size, size) if isinstance(size, int) else size
    if width < 1 or height < 1:
        raise ValueError(f"`size` must be positive, got {size!r}.")
    scale = max(width / image.width, height / image.height)
    new_w, new_h = max(width, round(image.width * scale)), max(height, round(image.height * scale))
    if (new_w, new_h) != image.size:
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    if center_crop:
        left, top = (new_w - width) // 2, (new_h - height) // 2
    else:
        rng = rng or random.Random()
        left, top = rng.randint(0, new_w - width), rng.randint(0, new_h - height)
    return image.crop((left, top, left + width, top + height)), (top, left)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> ``(3, H, W)`` float32 in ``[-1, 1]``."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


# ----------------------------------------------------------------------------------------------------------------------
# aspect-ratio buckets
# ----------------------------------------------------------------------------------------------------------------------
def make_buckets(
    min_side: int = 256,
    max_side: int = 1024,
    step: int = 64,
    max_ratio: float = 2.0,
    max_area: int | None = None,
) -> list[tuple[int, int]]:
    """Bucket sizes ``(width, height)``: multiples of ``step`` in ``[min_side, max_side]`` with aspect ratio at most
    ``max_ratio``.

    With ``max_area`` (kohya style, e.g. ``1024 * 1024``) only the largest bucket of each width within that area is
    kept, so all buckets have about the same pixel count; without it every size in the range is a bucket (for
    multi-resolution training such as ResAdapter's). Sorted by ``(width, height)``.
    """
    if step < 1 or min_side < step or max_side < min_side:
        raise ValueError(f"Need 1 <= step <= min_side <= max_side, got step={step}, min={min_side}, max={max_side}.")
    if max_ratio < 1:
        raise ValueError(f"`max_ratio` must be >= 1, got {max_ratio}.")
    lo = math.ceil(min_side / step) * step
    sides = list(range(lo, max_side + 1, step))
    buckets = set()
    for w in sides:
        fitting = [h for h in sides if max(w / h, h / w) <= max_ratio and (max_area is None or w * h <= max_area)]
        if not fitting:
            continue
        if max_area is None:
            buckets.update((w, h) for h in fitting)
        else:
            buckets.add((w, max(fitting)))
    if not buckets:
        raise ValueError("No bucket satisfies these limits.")
    return sorted(buckets)


def nearest_bucket(width: int, height: int, buckets: Sequence[tuple[int, int]]) -> int:
    """Index of the bucket closest in aspect ratio (log scale), then in area, to a ``width`` x ``height`` image."""
    ratio = math.log(width / height)
    area = width * height
    return min(
        range(len(buckets)),
        key=lambda i: (
            round(abs(math.log(buckets[i][0] / buckets[i][1]) - ratio), 6),
            abs(math.log(buckets[i][0] * buckets[i][1] / area)),
        ),
    )


class BucketBatchSampler(Sampler[list[int]]):
    """Batches whose examples all share one bucket; shuffled per epoch (deterministic for a seed and epoch).

    Use as ``DataLoader(dataset, batch_sampler=BucketBatchSampler(dataset.bucket_ids, batch_size, seed=seed))``
    (override ``AdapterTrainer.build_dataloader``); the trainer calls :meth:`set_epoch` every epoch.
    """

    def __init__(
        self,
        bucket_ids: Sequence[int],
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
    ):
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.epoch = 0
        self.groups: dict[int, list[int]] = {}
        for index, bucket in enumerate(bucket_ids):
            self.groups.setdefault(int(bucket), []).append(index)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _batches(self) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        batches = []
        for bucket in sorted(self.groups):
            indices = list(self.groups[bucket])
            if self.shuffle:
                rng.shuffle(indices)
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start : start + self.batch_size]
                if len(batch) == self.batch_size or not self.drop_last:
                    batches.append(batch)
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._batches()

    def __len__(self) -> int:
        full = sum(len(g) // self.batch_size for g in self.groups.values())
        if self.drop_last:
            return full
        return full + sum(1 for g in self.groups.values() if len(g) % self.batch_size)


# ----------------------------------------------------------------------------------------------------------------------
# the dataset
# ----------------------------------------------------------------------------------------------------------------------
class ImageCaptionDataset(Dataset):
    """Images + captions from an image folder (see the module docstring), as training tensors.

    Items: ``{"pixel_values": (3, H, W) float32 in [-1, 1], "text": str, "path": str, "original_size": (h, w),
    "crop_top_left": (top, left), "target_size": (h, w), "extra": dict}`` (SDXL's size conditioning included).

    Args:
        root: the folder.
        resolution: square training size (ignored with ``buckets``).
        center_crop: center (else random) crop after resizing.
        random_flip: flip horizontally with probability 0.5.
        on_missing_file: ``"error"`` raises :class:`DataFileError` naming the file; ``"skip"`` drops missing files at
            construction and replaces unreadable ones at load time by the next readable item, with a warning.
        buckets: ``(width, height)`` sizes (:func:`make_buckets`); each image goes to its nearest bucket and
            ``bucket_ids`` lists them for :class:`BucketBatchSampler`.
        seed: random crops and flips are drawn from ``(seed, epoch, index)``, so a resumed run sees the same ones.
        max_samples: keep only the first N entries.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        resolution: int = 512,
        center_crop: bool = True,
        random_flip: bool = False,
        on_missing_file: str = "error",
        buckets: Sequence[tuple[int, int]] | None = None,
        seed: int = 0,
        image_column: str = "file_name",
        caption_column: str = "text",
        max_samples: int | None = None,
    ):
        if on_missing_file not in ("error", "skip"):
            raise ValueError(f"`on_missing_file` must be 'error' or 'skip', got {on_missing_file!r}.")
        self.root = Path(root)
        self.resolution = resolution
        self.center_crop = center_crop
        self.random_flip = random_flip
        self.on_missing_file = on_missing_file
        self.seed = seed
        self.epoch = 0
        self.skipped: list[str] = []
        entries = read_image_folder(root, image_column=image_column, caption_column=caption_column)
        if max_samples is not None:
            entries = entries[:max_samples]
        missing = [e for e in entries if not e["path"].is_file()]
        if missing:
            names = [str(e["path"]) for e in missing]
            listed = ", ".join(names[:_MAX_LISTED]) + (
                f" (+{len(names) - _MAX_LISTED} more)" if len(names) > 5 else ""
            )
            if on_missing_file == "error":
                raise DataFileError(
                    f"{len(names)} image file(s) listed in {str(self.root)!r} are missing: {listed}.", names[0]
                )
            logger.warning(f"Skipping {len(names)} missing image file(s): {listed}.")
            self.skipped.extend(names)
            entries = [e for e in entries if e["path"].is_file()]
            if not entries:
                raise DataFileError(f"Every image file listed in {str(self.root)!r} is missing.", self.root)
        self.entries = entries
        self.buckets = list(buckets) if buckets is not None else None
        self.bucket_ids: list[int] | None = None
        if self.buckets is not None:
            self.bucket_ids = [self._bucket_of(i) for i in range(len(self.entries))]

    def _bucket_of(self, index: int) -> int:
        path = self.entries[index]["path"]
        try:
            with Image.open(path) as image:
                width, height = ImageOps.exif_transpose(image).size
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
            if self.on_missing_file == "error":
                raise DataFileError(f"Cannot read image {str(path)!r}: {err}", path) from None
            width, height = self.buckets[0]  # replaced at load time anyway
        return nearest_bucket(width, height, self.buckets)

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer each epoch: random crops/flips depend on ``(seed, epoch, index)``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        for attempt in range(len(self.entries)):
            i = (index + attempt) % len(self.entries)
            try:
                return self._load(i, target_index=index)
            except DataFileError as err:
                if self.on_missing_file == "error":
                    raise
                if err.path not in self.skipped:
                    self.skipped.append(err.path)
                    logger.warning(f"Skipping unreadable training file: {err}")
        raise DataFileError(f"No readable image left in {str(self.root)!r}.", self.root)

    def _load(self, i: int, target_index: int) -> dict[str, Any]:
        entry = self.entries[i]
        image = load_image(entry["path"])
        original_size = (image.height, image.width)
        if self.buckets is not None:
            size = self.buckets[self.bucket_ids[target_index]]  # keep the batch's bucket even when replaced
        else:
            size = (self.resolution, self.resolution)
        rng = random.Random((self.seed * 1_000_003 + self.epoch) * 1_000_033 + target_index)
        image, crop_top_left = resize_and_crop(image, size, center_crop=self.center_crop, rng=rng)
        if self.random_flip and rng.random() < 0.5:
            image = ImageOps.mirror(image)
        return {
            "pixel_values": to_tensor(image),
            "text": entry["text"],
            "path": str(entry["path"]),
            "original_size": original_size,
            "crop_top_left": crop_top_left,
            "target_size": (size[1], size[0]),
            "extra": entry["extra"],
        }

    @staticmethod
    def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
        """Stack ``pixel_values`` ``(B, 3, H, W)``; sizes as ``(B, 2)`` int64 tensors; text/paths/extra as lists."""
        return {
            "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
            "text": [e["text"] for e in examples],
            "path": [e["path"] for e in examples],
            "original_size": torch.tensor([e["original_size"] for e in examples], dtype=torch.long),
            "crop_top_left": torch.tensor([e["crop_top_left"] for e in examples], dtype=torch.long),
            "target_size": torch.tensor([e["target_size"] for e in examples], dtype=torch.long),
            "extra": [e["extra"] for e in examples],
        }
