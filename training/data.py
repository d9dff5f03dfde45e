"""Dataset utilities shared by the train scripts: image folders with captions, transforms, aspect-ratio buckets.

Image-folder format (the same as diffusers' ``imagefolder`` datasets)::

    my_data/
      metadata.jsonl          {"file_name": "0001.png", "text": "a red cube"}   one JSON object per line
      0001.png                (extra keys are kept in the item under "extra")
      ...

or, without ``metadata.jsonl``, every image with a sidecar caption ``<stem>.txt`` (an empty caption when absent).

A missing or unreadable image either stops the run with an error naming the file (``on_missing_file="error"``) or
is skipped with a warning naming it (``"skip"``).

A JSONL manifest elsewhere (``--manifest``) works too: one object per line with ``file_name`` (or ``image``) relative to
the manifest's folder (or ``root``) and ``text`` (or ``caption``).

Every size here is ``(height, width)``, as in diffusers and torch. Aspect-ratio buckets (multi-resolution training,
e.g. ResAdapter's): :func:`make_buckets` lists bucket sizes, :class:`BucketBatchSampler` yields batches of
``(index, height, width)`` keys that share one size, and ``ImageCaptionDataset[(index, height, width)]`` resizes and
crops an image to that size (``dataset[index]`` gives the square ``resolution``).
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
    "collate",
    "make_buckets",
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
    root: str | os.PathLike | None = None,
    *,
    manifest: str | os.PathLike | None = None,
    image_column: str = "file_name",
    caption_column: str = "text",
) -> list[dict[str, Any]]:
    """Entries ``{"path": Path, "text": str, "extra": dict}`` of an image folder or a JSONL manifest (see the module
    docstring). A manifest line names its image by ``image_column`` (or ``image``) and its caption by
    ``caption_column`` (or ``caption``); other keys are kept in ``extra``.

    Raises:
        FileNotFoundError: ``root`` is not a folder (without a manifest), or the manifest does not exist.
        DataFileError: a malformed manifest line (naming file and line number) or no image found.
    """
    root = Path(root) if root is not None else None
    if manifest is not None:
        manifest = Path(manifest)
        if not manifest.is_file():
            raise FileNotFoundError(f"Manifest {str(manifest)!r} does not exist.")
    elif root is None or not root.is_dir():
        raise FileNotFoundError(f"Training data folder {str(root)!r} does not exist.")
    elif (root / "metadata.jsonl").is_file():
        manifest = root / "metadata.jsonl"
    entries: list[dict[str, Any]] = []
    if manifest is not None:
        base = root if root is not None else manifest.parent
        for lineno, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{manifest}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataFileError(f"Malformed JSON at {where}: {err.msg}.", manifest) from None
            image_key = next((k for k in (image_column, "image") if isinstance(record, dict) and k in record), None)
            if image_key is None or not isinstance(record[image_key], str):
                raise DataFileError(f"{where} has no {image_column!r} (or 'image') string.", manifest)
            text_key = next((k for k in (caption_column, "caption") if k in record), caption_column)
            text = record.get(text_key) or ""
            if not isinstance(text, str):
                raise DataFileError(f"{where}: {text_key!r} must be a string, got {type(text).__name__}.", manifest)
            extra = {k: v for k, v in record.items() if k not in (image_key, text_key)}
            entries.append({"path": base / record[image_key], "text": text, "extra": extra})
    else:
        for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()):
            caption = path.with_suffix(".txt")
            text = caption.read_text(encoding="utf-8").strip() if caption.is_file() else ""
            entries.append({"path": path, "text": text, "extra": {}})
    if not entries:
        raise DataFileError(f"No image found in {str(manifest or root)!r} (a manifest or images with captions).", root)
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
    image: Image.Image, height: int, width: int, *, center_crop: bool = True, rng: random.Random | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """Resize ``image`` to cover ``height x width`` (keeping its aspect ratio, bicubic), then crop to it.

    Args:
        center_crop: crop the center; otherwise a random crop drawn from ``rng`` (default: a fresh
            ``random.Random()``).

    Returns:
        ``(the crop, exactly width x height, (crop_top, crop_left) in the resized image)`` -- the offset SDXL
        conditions on.
    """
    if height < 1 or width < 1:
        raise ValueError(f"`height` and `width` must be positive, got {height} and {width}.")
    scale = max(height / image.height, width / image.width)
    new_h, new_w = max(height, round(image.height * scale)), max(width, round(image.width * scale))
    if (new_w, new_h) != image.size:
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    if center_crop:
        top, left = (new_h - height) // 2, (new_w - width) // 2
    else:
        rng = rng or random.Random()
        top, left = rng.randint(0, new_h - height), rng.randint(0, new_w - width)
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
    max_aspect_ratio: float = 2.0,
    max_area: int | None = None,
) -> list[tuple[int, int]]:
    """Bucket sizes ``(height, width)``: multiples of ``step`` in ``[min_side, max_side]`` with
    ``max(h, w) / min(h, w) <= max_aspect_ratio``, sorted.

    Without ``max_area`` every size in the range is a bucket (multi-resolution training such as ResAdapter's); with
    it (kohya style, e.g. ``1024 * 1024``) only the tallest bucket of each width within that area is kept, so all
    buckets have about the same pixel count.
    """
    if step < 1 or min_side < 1 or max_side < min_side:
        raise ValueError(
            f"Need 1 <= step, 1 <= min_side <= max_side, got step={step}, min={min_side}, max={max_side}."
        )
    if max_aspect_ratio < 1:
        raise ValueError(f"`max_aspect_ratio` must be >= 1, got {max_aspect_ratio}.")
    sides = range(math.ceil(min_side / step) * step, max_side + 1, step)
    buckets = [
        (h, w)
        for h in sides
        for w in sides
        if max(h, w) / min(h, w) <= max_aspect_ratio + 1e-9 and (max_area is None or h * w <= max_area)
    ]
    if max_area is not None:
        tallest = {w: h for h, w in buckets}  # sorted by h: the last h per width is the tallest
        buckets = sorted((h, w) for w, h in tallest.items())
    if not buckets:
        raise ValueError(f"No bucket between {min_side} and {max_side} in steps of {step} satisfies these limits.")
    return buckets


def _ratio_key(h: int, w: int) -> float:
    return round(math.log(w / h), 6)


class BucketBatchSampler(Sampler[list[tuple[int, int, int]]]):
    """Batches of ``(index, height, width)`` keys that all share one bucket size.

    Each item is assigned to the aspect-ratio class (the buckets with one ``w / h``) nearest its own aspect ratio
    (``aspect_ratios=None``: every item fits every class, e.g. rendered data). Per epoch, each class's items are
    shuffled and cut into batches; each batch gets one of its class's sizes at random; batch order is shuffled. The
    order depends only on ``(seed, epoch)``, so a resumed run sees the same batches; the trainer calls
    :meth:`set_epoch` every epoch. Use as ``DataLoader(dataset, batch_sampler=sampler)``.

    Args:
        num_items: dataset length.
        buckets: ``(height, width)`` sizes (:func:`make_buckets`).
        batch_size: items per batch.
        aspect_ratios: ``w / h`` of each item (``ImageCaptionDataset.aspect_ratios``), or ``None``.
        seed: order seed.
        drop_last: drop the incomplete last batch of each class.
    """

    def __init__(
        self,
        num_items: int,
        buckets: Sequence[tuple[int, int]],
        batch_size: int,
        aspect_ratios: Sequence[float] | None = None,
        seed: int = 0,
        drop_last: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.drop_last = drop_last
        self.epoch = 0
        self.sizes: dict[float, list[tuple[int, int]]] = {}
        for h, w in buckets:
            self.sizes.setdefault(_ratio_key(h, w), []).append((h, w))
        keys = sorted(self.sizes)
        self.groups: dict[float, list[int]] = {k: [] for k in keys}
        if aspect_ratios is None:
            self._free: list[int] | None = list(range(num_items))
        else:
            self._free = None
            logs = np.array(keys)
            for i, ratio in enumerate(aspect_ratios):
                self.groups[keys[int(np.abs(logs - math.log(ratio)).argmin())]].append(i)
        self._batches = self._plan(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._batches = self._plan(self.epoch)

    def _plan(self, epoch: int) -> list[list[tuple[int, int, int]]]:
        rng = random.Random(f"{self.seed}-{epoch}")
        classes: list[tuple[list[int], list[tuple[int, int]]]]
        if self._free is not None:
            classes = [(self._free, [s for sizes in self.sizes.values() for s in sizes])]
        else:
            classes = [(self.groups[key], self.sizes[key]) for key in self.groups]
        batches = []
        for items, sizes in classes:
            items = list(items)
            rng.shuffle(items)
            for start in range(0, len(items), self.batch_size):
                chunk = items[start : start + self.batch_size]
                if self.drop_last and len(chunk) < self.batch_size:
                    continue
                h, w = rng.choice(sizes)
                batches.append([(i, h, w) for i in chunk])
        rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        yield from self._batches

    def __len__(self) -> int:
        return len(self._batches)


# ----------------------------------------------------------------------------------------------------------------------
# the dataset
# ----------------------------------------------------------------------------------------------------------------------
class ImageCaptionDataset(Dataset):
    """Images + captions from an image folder or a JSONL manifest (see the module docstring), as training tensors.

    ``dataset[(index, height, width)]`` gives item ``index`` at that size (keys from :class:`BucketBatchSampler`);
    ``dataset[index]`` at the square ``resolution``. Items: ``{"pixel_values": (3, H, W) float32 in [-1, 1],
    "text": str, "path": str, "original_size": (h, w), "crop_top_left": (top, left), "target_size": (h, w),
    "extra": dict}`` (SDXL's size conditioning included).

    Every image is opened once at construction to read its size (:attr:`sizes`, :attr:`aspect_ratios`), so a missing
    or unreadable file is found before training starts.

    Args:
        root: the folder (``None`` with a manifest elsewhere).
        manifest: a JSONL manifest (default: ``root/metadata.jsonl`` when present).
        resolution: the square size of ``dataset[index]``.
        center_crop: center (else random) crop after resizing.
        random_flip: flip horizontally with probability 0.5.
        on_missing_file: ``"error"`` raises :class:`DataFileError` naming the file; ``"skip"`` drops it with a
            warning (listed in :attr:`skipped`).
        seed: random crops and flips are drawn from ``(seed, epoch, index, size)``, so a resumed run sees the same.
        max_samples: keep only the first N entries.
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        manifest: str | os.PathLike | None = None,
        *,
        resolution: int = 512,
        center_crop: bool = True,
        random_flip: bool = False,
        on_missing_file: str = "error",
        seed: int = 0,
        image_column: str = "file_name",
        caption_column: str = "text",
        max_samples: int | None = None,
    ):
        if on_missing_file not in ("error", "skip"):
            raise ValueError(f"`on_missing_file` must be 'error' or 'skip', got {on_missing_file!r}.")
        self.resolution = resolution
        self.center_crop = center_crop
        self.random_flip = random_flip
        self.seed = seed
        self.epoch = 0
        self.skipped: list[str] = []
        entries = read_image_folder(root, manifest=manifest, image_column=image_column, caption_column=caption_column)
        if max_samples is not None:
            entries = entries[:max_samples]
        self.entries: list[dict[str, Any]] = []
        self.sizes: list[tuple[int, int]] = []
        from tqdm.auto import tqdm

        for entry in tqdm(entries, desc="Scanning training images", unit="img", disable=len(entries) < 2):
            try:
                height, width = _image_size(entry["path"])
            except DataFileError as err:
                if on_missing_file == "error":
                    raise DataFileError(f"{err} Fix it or pass --on_missing_file skip.", err.path) from None
                logger.warning(f"Skipping training image: {err}")
                self.skipped.append(err.path)
                continue
            self.entries.append(entry)
            self.sizes.append((height, width))
        if not self.entries:
            raise DataFileError(f"No readable training image in {str(manifest or root)!r}.", manifest or root)

    @property
    def paths(self) -> list[Path]:
        return [e["path"] for e in self.entries]

    @property
    def captions(self) -> list[str]:
        return [e["text"] for e in self.entries]

    @property
    def aspect_ratios(self) -> list[float]:
        """``w / h`` of every item (for :class:`BucketBatchSampler`)."""
        return [w / h for h, w in self.sizes]

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer each epoch: random crops/flips depend on ``(seed, epoch, index, size)``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, key: int | tuple[int, int, int]) -> dict[str, Any]:
        index, height, width = key if isinstance(key, tuple) else (key, self.resolution, self.resolution)
        entry = self.entries[index]
        image = load_image(entry["path"])
        rng = random.Random(f"{self.seed}-{self.epoch}-{index}-{height}-{width}")
        crop, top_left = resize_and_crop(image, height, width, center_crop=self.center_crop, rng=rng)
        if self.random_flip and rng.random() < 0.5:
            crop = ImageOps.mirror(crop)
        return {
            "pixel_values": to_tensor(crop),
            "text": entry["text"],
            "path": str(entry["path"]),
            "original_size": (image.height, image.width),
            "crop_top_left": top_left,
            "target_size": (height, width),
            "extra": entry["extra"],
        }

    @staticmethod
    def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
        """See :func:`collate`."""
        return collate(examples)


def _image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` of an image file after its EXIF orientation, reading only its header."""
    if not path.is_file():
        raise DataFileError(f"Image file {str(path)!r} does not exist.", path)
    try:
        with Image.open(path) as image:
            width, height = ImageOps.exif_transpose(image).size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise DataFileError(f"Cannot read image {str(path)!r}: {err}", path) from None
    return height, width


#: Item keys collated into ``(B, 2)`` float32 tensors (SDXL's size conditioning).
_SIZE_KEYS = ("original_size", "crop_top_left", "target_size")


def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack ``pixel_values`` to ``(B, 3, H, W)``; sizes (``original_size``, ``crop_top_left``, ``target_size``) to
    ``(B, 2)`` float32 tensors; every other key (text, path, extra ...) to a list. Keys are the first item's."""
    batch: dict[str, Any] = {}
    for key in examples[0]:
        values = [e[key] for e in examples]
        if key == "pixel_values":
            batch[key] = torch.stack(values)
        elif key in _SIZE_KEYS:
            batch[key] = torch.tensor(values, dtype=torch.float32)
        else:
            batch[key] = values
    return batch
