"""Torch datasets of mini-world renders for the training scripts.

Every dataset is map-style, sized (``length``, large by default, so it behaves as an endless stream) and
deterministic: item ``i`` depends only on ``(seed, i)`` (``numpy.random.default_rng([seed, i])``), so it is identical
across epochs, processes and ``DataLoader`` workers, and two seeds give different data.

Images are float32 ``(C, H, W)`` tensors in [-1, 1] under the key ``"pixel_values"`` (multi-view and video items stack
views / frames first: ``(V or F, 3, H, W)``); the caption is under ``"text"``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .camera import Camera, ring_cameras
from .render import RenderOutput, render, render_clip, render_views
from .scene import MOTIONS, Motion, Scene

__all__ = [
    "TextImageDataset",
    "MultiViewDataset",
    "VideoDataset",
    "resolve_sizes",
    "CAMERA_MODES",
]

#: Camera layouts of :class:`MultiViewDataset`.
CAMERA_MODES = ("ortho_ring", "persp_ring", "mvadapter", "random")


def _size_pair(r) -> tuple[int, int]:
    if isinstance(r, (int, np.integer)):
        return int(r), int(r)
    h, w = r
    return int(h), int(w)


def resolve_sizes(
    resolution: int | tuple[int, int] | Sequence[int | tuple[int, int]],
    aspect_ratios: Sequence[float] | None = None,
    multiple_of: int = 8,
) -> list[tuple[int, int]]:
    """The list of ``(height, width)`` sizes a dataset draws from.

    Args:
        resolution: a side (square), an ``(height, width)`` pair, or a list of either.
        aspect_ratios: optional width/height ratios; each resolution ``r`` then yields, per ratio ``a``, the size of
            area about ``r * r`` with that ratio, rounded to ``multiple_of``.
        multiple_of: rounding of sizes derived from aspect ratios.
    """
    if isinstance(resolution, (int, np.integer)) or (
        isinstance(resolution, tuple)
        and len(resolution) == 2
        and all(isinstance(v, (int, np.integer)) for v in resolution)
    ):
        base = [_size_pair(resolution)]
    else:
        base = [_size_pair(r) for r in resolution]
    if not base:
        raise ValueError("resolution must name at least one size")
    sizes: list[tuple[int, int]] = []
    for h, w in base:
        if aspect_ratios is None:
            sizes.append((h, w))
            continue
        side = math.sqrt(h * w)
        for a in aspect_ratios:
            if a <= 0:
                raise ValueError(f"aspect_ratios must be positive, got {a}")
            hh = max(multiple_of, int(round(side / math.sqrt(a) / multiple_of)) * multiple_of)
            ww = max(multiple_of, int(round(side * math.sqrt(a) / multiple_of)) * multiple_of)
            sizes.append((hh, ww))
    for h, w in sizes:
        if h < 1 or w < 1:
            raise ValueError(f"sizes must be positive, got {h}x{w}")
    return sizes


def _to_pixels(x: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) float [0, 1] -> (N, 3, H, W) float32 [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).mul(2.0).sub(1.0)


def _chw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _fov_for(height: int, width: int, fov_short_side: float) -> float:
    """Vertical FOV so that the shorter image side spans ``fov_short_side`` degrees."""
    if width >= height:
        return fov_short_side
    t = math.tan(math.radians(fov_short_side) / 2.0) * height / width
    return math.degrees(2.0 * math.atan(t))


class _Base(Dataset):
    def __init__(self, length: int, seed: int):
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        self.length = int(length)
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.length

    def _rng(self, index: int, stream: int = 0) -> np.random.Generator:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of length {self.length}")
        return np.random.default_rng([self.seed, stream, index])


class TextImageDataset(_Base):
    """Text-to-image pairs: one random scene from a random orbit camera per item.

    Args:
        resolution: image side, ``(height, width)``, or a list of them (see :func:`resolve_sizes`).
        aspect_ratios: optional width/height ratios combined with ``resolution``.
        length: number of items.
        seed: data seed.
        group_size: consecutive items ``[k * group_size, (k + 1) * group_size)`` share one size, so a ``DataLoader``
            with ``batch_size=group_size`` and ``shuffle=False`` yields single-size batches from many sizes.
        supersample: anti-aliasing sub-samples per pixel side.
        max_objects: objects per scene are drawn from ``1..max_objects``.
        elevation_range, distance_range: camera sampling ranges (degrees, world units); azimuth is uniform.
        fov_deg: field of view of the shorter image side (the scene is framed the same at every aspect ratio).

    Items: ``{"pixel_values": (3, H, W) float32 in [-1, 1], "text": str, "height": int, "width": int}``.
    """

    def __init__(
        self,
        resolution: int | tuple[int, int] | Sequence[int | tuple[int, int]] = 64,
        aspect_ratios: Sequence[float] | None = None,
        *,
        length: int = 1_000_000,
        seed: int = 0,
        group_size: int = 1,
        supersample: int = 2,
        max_objects: int = 3,
        elevation_range: tuple[float, float] = (10.0, 40.0),
        distance_range: tuple[float, float] = (1.9, 2.2),
        fov_deg: float = 35.0,
    ):
        super().__init__(length, seed)
        self.sizes = resolve_sizes(resolution, aspect_ratios)
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        self.group_size = int(group_size)
        self.supersample = int(supersample)
        self.max_objects = int(max_objects)
        self.elevation_range = elevation_range
        self.distance_range = distance_range
        self.fov_deg = float(fov_deg)

    def size_for_index(self, index: int) -> tuple[int, int]:
        """The ``(height, width)`` of item ``index`` (shared by its group)."""
        if len(self.sizes) == 1:
            return self.sizes[0]
        g = np.random.default_rng([self.seed, 1, index // self.group_size])
        return self.sizes[int(g.integers(len(self.sizes)))]

    def sample(self, index: int) -> tuple[Scene, Camera, tuple[int, int]]:
        """The scene, camera and size of item ``index`` (without rendering)."""
        rng = self._rng(index)
        scene = Scene.random(rng, max_objects=self.max_objects)
        h, w = self.size_for_index(index)
        cam = Camera.orbit(
            float(rng.uniform(0.0, 360.0)),
            float(rng.uniform(*self.elevation_range)),
            float(rng.uniform(*self.distance_range)),
            fov_deg=_fov_for(h, w, self.fov_deg),
        )
        return scene, cam, (h, w)

    def __getitem__(self, index: int) -> dict:
        scene, cam, (h, w) = self.sample(index)
        out = render(scene, cam, h, w, supersample=self.supersample, geometry=False)
        return {"pixel_values": _to_pixels(out.rgb)[0], "text": scene.caption(), "height": h, "width": w}


class MultiViewDataset(_Base):
    """Several views of one random scene with their cameras and geometry maps.

    Args:
        num_views: views per item.
        camera_mode: ``"ortho_ring"`` (orthographic, evenly spaced azimuths from -90 degrees, elevation
            ``elevation_deg``: MV-Adapter's default ring), ``"persp_ring"`` (the same ring, perspective ``fov_deg``),
            ``"mvadapter"`` (MV-Adapter's official 6-view geometry layout: four ring views plus top and bottom,
            orthographic; needs ``num_views == 6``), ``"random"`` (perspective, random azimuths, elevations in
            ``random_elevation_range``).
        resolution: view side or ``(height, width)``.
        distance, ortho_scale, fov_deg, elevation_deg: camera parameters (defaults: MV-Adapter's 1.8, 1.1, 40, 0).
        random_azimuth_start: rotate the ring by a random azimuth per item.
        background: background name for all views, ``None`` for the scene's own, or ``"auto"`` (default): white,
            or gray when the scene holds a white object.
        max_objects, length, seed, supersample: as in :class:`TextImageDataset`.
        normalize: scale each scene about the origin so that its largest absolute surface coordinate is 0.5
            (:meth:`Scene.normalized`), as MV-Adapter's official ``load_mesh(rescale=True)`` normalises a mesh (no
            centring): the geometry maps then match those :func:`adapters.mv_adapter.mesh.render_geometry` makes of
            the scene exported as a mesh and loaded with :func:`adapters.mv_adapter.mesh.load_mesh`. Captions keep
            the size words of the unscaled objects.

    Items:
        ``pixel_values`` ``(V, 3, H, W)`` in [-1, 1]; ``c2w`` ``(V, 4, 4)`` float32 camera-to-world (OpenCV, see
        :mod:`training.miniworld.camera`); ``azimuth``, ``elevation``, ``distance`` ``(V,)`` (degrees / world
        units); ``fov`` ``(V,)`` vertical FOV in degrees (0 for orthographic); ``ortho_scale`` ``(V,)``;
        ``orthographic`` bool; ``position_maps`` ``(V, 3, H, W)`` world xyz and ``normal_maps`` ``(V, 3, H, W)`` world
        unit normals, both 0 on the background (MV-Adapter's geometry condition is
        ``cat([pos + 0.5, normal / 2 + 0.5])``); ``masks`` ``(V, 1, H, W)`` float {0, 1}; ``text``.
    """

    def __init__(
        self,
        num_views: int = 6,
        camera_mode: str = "ortho_ring",
        resolution: int | tuple[int, int] = 64,
        *,
        length: int = 1_000_000,
        seed: int = 0,
        distance: float = 1.8,
        ortho_scale: float = 1.1,
        fov_deg: float = 40.0,
        elevation_deg: float = 0.0,
        random_elevation_range: tuple[float, float] = (-10.0, 40.0),
        random_azimuth_start: bool = False,
        background: str | None = "auto",
        max_objects: int = 3,
        supersample: int = 2,
        normalize: bool = False,
    ):
        super().__init__(length, seed)
        if camera_mode not in CAMERA_MODES:
            raise ValueError(f"camera_mode must be one of {CAMERA_MODES}, got {camera_mode!r}")
        if num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {num_views}")
        if camera_mode == "mvadapter" and num_views != 6:
            raise ValueError(f"camera_mode 'mvadapter' has 6 views, got num_views={num_views}")
        self.num_views = int(num_views)
        self.camera_mode = camera_mode
        self.height, self.width = _size_pair(resolution)
        self.distance = float(distance)
        self.ortho_scale = float(ortho_scale)
        self.fov_deg = float(fov_deg)
        self.elevation_deg = float(elevation_deg)
        self.random_elevation_range = random_elevation_range
        self.random_azimuth_start = bool(random_azimuth_start)
        self.background = background
        self.max_objects = int(max_objects)
        self.supersample = int(supersample)
        self.normalize = bool(normalize)

    def cameras_for(self, rng: np.random.Generator) -> list[Camera]:
        v = self.num_views
        start = float(rng.uniform(0.0, 360.0)) if self.random_azimuth_start else -90.0
        if self.camera_mode == "ortho_ring":
            return ring_cameras(
                v, elevation_deg=self.elevation_deg, distance=self.distance, azimuth_start_deg=start,
                fov_deg=None, ortho_scale=self.ortho_scale,
            )  # fmt: skip
        if self.camera_mode == "persp_ring":
            return ring_cameras(
                v, elevation_deg=self.elevation_deg, distance=self.distance, azimuth_start_deg=start,
                fov_deg=self.fov_deg,
            )  # fmt: skip
        if self.camera_mode == "mvadapter":
            azs = [start + a for a in (0.0, 90.0, 180.0, 270.0, 180.0, 180.0)]
            els = [0.0, 0.0, 0.0, 0.0, 89.99, -89.99]
            return [
                Camera.orbit(a, e, self.distance, fov_deg=None, ortho_scale=self.ortho_scale) for a, e in zip(azs, els)
            ]
        azs = rng.uniform(0.0, 360.0, size=v)
        els = rng.uniform(*self.random_elevation_range, size=v)
        return [Camera.orbit(float(a), float(e), self.distance, fov_deg=self.fov_deg) for a, e in zip(azs, els)]

    def sample(self, index: int) -> tuple[Scene, list[Camera]]:
        """The scene (with the dataset's background applied) and cameras of item ``index``."""
        rng = self._rng(index)
        scene = Scene.random(rng, max_objects=self.max_objects)
        cams = self.cameras_for(rng)
        if self.background == "auto":
            scene = scene.with_background("gray" if any(o.color == "white" for o in scene.objects) else "white")
        elif self.background is not None:
            scene = scene.with_background(self.background)
        if self.normalize:
            scene = scene.normalized()
        return scene, cams

    def __getitem__(self, index: int) -> dict:
        scene, cams = self.sample(index)
        out = render_views(scene, cams, self.height, self.width, supersample=self.supersample)
        return multiview_item(scene, cams, out)


def multiview_item(scene: Scene, cams: list[Camera], out: RenderOutput) -> dict:
    """Pack rendered views and their cameras into a :class:`MultiViewDataset` item."""
    ortho = cams[0].orthographic
    return {
        "pixel_values": _to_pixels(out.rgb),
        "c2w": torch.from_numpy(np.stack([c.c2w for c in cams]).astype(np.float32)),
        "azimuth": torch.tensor([c.azimuth_deg for c in cams], dtype=torch.float32),
        "elevation": torch.tensor([c.elevation_deg for c in cams], dtype=torch.float32),
        "distance": torch.tensor([c.distance for c in cams], dtype=torch.float32),
        "fov": torch.tensor([0.0 if c.orthographic else c.fov_deg for c in cams], dtype=torch.float32),
        "ortho_scale": torch.tensor([c.ortho_scale for c in cams], dtype=torch.float32),
        "orthographic": ortho,
        "position_maps": _chw(out.position),
        "normal_maps": _chw(out.normal),
        "masks": torch.from_numpy(out.mask[:, None].astype(np.float32)),
        "text": scene.caption(),
    }


class VideoDataset(_Base):
    """Short clips of a random scene in motion (see :class:`training.miniworld.scene.Motion`).

    Args:
        num_frames: frames per clip.
        resolution: frame side or ``(height, width)``.
        motions: motion kinds to draw from (subset of :data:`training.miniworld.scene.MOTIONS`).
        caption_motion: append the motion word to the caption (``"a red cube, bouncing"``).
        elevation_range, distance_range, fov_deg: the (fixed per clip) camera, as in :class:`TextImageDataset`.
        max_objects, length, seed, supersample: as in :class:`TextImageDataset`.

    Items: ``{"pixel_values": (F, 3, H, W) in [-1, 1], "text": str, "scene_text": str (caption without motion),
    "motion": str}``.
    """

    def __init__(
        self,
        num_frames: int = 8,
        resolution: int | tuple[int, int] = 64,
        *,
        motions: Sequence[str] = tuple(MOTIONS),
        caption_motion: bool = True,
        length: int = 1_000_000,
        seed: int = 0,
        elevation_range: tuple[float, float] = (10.0, 35.0),
        distance_range: tuple[float, float] = (1.9, 2.2),
        fov_deg: float = 35.0,
        max_objects: int = 3,
        supersample: int = 2,
    ):
        super().__init__(length, seed)
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        bad = [m for m in motions if m not in MOTIONS]
        if bad or not motions:
            raise ValueError(f"motions must be a non-empty subset of {tuple(MOTIONS)}, got {list(motions)}")
        self.num_frames = int(num_frames)
        self.height, self.width = _size_pair(resolution)
        self.motions = tuple(motions)
        self.caption_motion = bool(caption_motion)
        self.elevation_range = elevation_range
        self.distance_range = distance_range
        self.fov_deg = float(fov_deg)
        self.max_objects = int(max_objects)
        self.supersample = int(supersample)

    def sample(self, index: int) -> tuple[Scene, Motion, Camera]:
        rng = self._rng(index)
        scene = Scene.random(rng, max_objects=self.max_objects)
        motion = Motion.random(rng, scene, self.motions)
        cam = Camera.orbit(
            float(rng.uniform(0.0, 360.0)),
            float(rng.uniform(*self.elevation_range)),
            float(rng.uniform(*self.distance_range)),
            fov_deg=_fov_for(self.height, self.width, self.fov_deg),
        )
        return scene, motion, cam

    def __getitem__(self, index: int) -> dict:
        scene, motion, cam = self.sample(index)
        out = render_clip(
            scene, motion, cam, self.num_frames, self.height, self.width, supersample=self.supersample, geometry=False
        )
        text = scene.caption()
        return {
            "pixel_values": _to_pixels(out.rgb),
            "text": f"{text}, {motion.word}" if self.caption_motion else text,
            "scene_text": text,
            "motion": motion.kind,
        }
