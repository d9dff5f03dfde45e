"""Cameras, camera maps and geometry maps for MV-Adapter.

Conventions (shared with ``training/miniworld/camera.py``):

World frame
    Right-handed, **z up**; objects are normalised into ``[-0.5, 0.5]^3``.

Azimuth
    The public ``azimuth_deg`` of the pipeline follows the official MV-Adapter inference scripts: ``0`` is the front
    view, ``90`` the right view. Internally (and in the mini-world) the spherical azimuth is measured in the xy plane
    from +x towards +y, and the official scripts pass ``azimuth_deg - 90``: the front camera sits on the -y axis.
    :func:`camera_position` takes the *internal* azimuth; :meth:`Cameras.from_spherical` takes the public one
    (``azimuth_offset_deg=-90`` by default).

Camera-to-world matrices
    Stored in the **OpenCV** convention (x right, y down, z forward). ``convention="opengl"`` (x right, y up,
    z backward; the official code and Blender) is converted by negating the y and z columns.

Projection
    ``fov_deg`` is the vertical field of view. ``ortho_scale`` is the vertical extent of an orthographic view in world
    units (the official box ``[-0.55, 0.55]`` is ``ortho_scale=1.1``); the width follows the aspect ratio. Pixel
    ``(i, j)`` has its centre at ``(u, v) = (j + 0.5, i + 0.5)``, principal point at the image centre.

Camera maps (the condition of text/image-to-multi-view)
    6 channels per pixel: the world ray direction (unit) and the camera position normalised to unit length, each
    mapped from ``[-1, 1]`` to ``[0, 1]`` with ``(x + 1) / 2`` and clamped. For orthographic cameras every pixel has
    the same direction, so the map is the official ``get_plucker_embeds_from_cameras_ortho`` exactly. ``kind="plucker"``
    gives the Plucker ray ``(d, o x d)`` instead (the official perspective formula), mapped the same way.

Geometry maps (geometry-to-multi-view)
    ``[(position + 0.5), (normal / 2 + 0.5)]`` clamped to ``[0, 1]``: 6 channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

__all__ = [
    "DEFAULT_AZIMUTHS_6",
    "DEFAULT_DISTANCE",
    "DEFAULT_ORTHO_SCALE",
    "Cameras",
    "camera_maps",
    "camera_position",
    "convert_c2w_convention",
    "default_azimuths",
    "default_cameras",
    "geometry_maps",
    "look_at_c2w",
    "ray_bundle",
]

DEFAULT_AZIMUTHS_6 = (0.0, 45.0, 90.0, 180.0, 270.0, 315.0)
DEFAULT_DISTANCE = 1.8
DEFAULT_ORTHO_SCALE = 1.1
DEFAULT_FOV_DEG = 40.0
OFFICIAL_AZIMUTH_OFFSET_DEG = -90.0

Floats: TypeAlias = float | Sequence[float] | np.ndarray | torch.Tensor


def _as_tensor(x: Floats, n: int | None = None, name: str = "value") -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x, dtype=np.float64) if not isinstance(x, torch.Tensor) else x, dtype=torch.float64)
    t = t.reshape(-1)
    if n is not None:
        if t.numel() == 1:
            t = t.expand(n).clone()
        elif t.numel() != n:
            raise ValueError(f"`{name}` has {t.numel()} values but there are {n} views.")
    return t


def default_azimuths(num_views: int) -> list[float]:
    """The public azimuths (degrees, 0 = front) used when none are given.

    Six views use the official ring ``[0, 45, 90, 180, 270, 315]``; any other count is spread evenly from 0.
    """
    if num_views == 6:
        return list(DEFAULT_AZIMUTHS_6)
    return [360.0 * k / num_views for k in range(num_views)]


def camera_position(azimuth_deg: Floats, elevation_deg: Floats, distance: Floats) -> torch.Tensor:
    """Camera centres ``distance * (cos el cos az, cos el sin az, sin el)`` (internal azimuth), shape ``(V, 3)``."""
    az = torch.deg2rad(_as_tensor(azimuth_deg))
    n = az.numel()
    el = torch.deg2rad(_as_tensor(elevation_deg, n, "elevation_deg"))
    d = _as_tensor(distance, n, "distance")
    return torch.stack([d * el.cos() * az.cos(), d * el.cos() * az.sin(), d * el.sin()], dim=-1)


def look_at_c2w(position: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """OpenCV camera-to-world matrices ``(V, 4, 4)`` of cameras at ``position`` ``(V, 3)`` looking at ``target``.

    "Up" is world +z; at the poles (looking straight up/down) the right vector falls back to the one implied by the
    camera's azimuth so the limit is continuous (as in the mini-world renderer).
    """
    position = position.to(torch.float64)
    target = torch.zeros_like(position) if target is None else target.to(position).expand_as(position)
    forward = F.normalize(target - position, dim=-1)
    up_world = torch.tensor([0.0, 0.0, 1.0], dtype=position.dtype).expand_as(forward)
    right = torch.linalg.cross(forward, up_world, dim=-1)
    norm = right.norm(dim=-1, keepdim=True)
    rel = position - target
    az = torch.atan2(rel[:, 1], rel[:, 0])
    fallback = torch.stack([az.sin(), -az.cos(), torch.zeros_like(az)], dim=-1)
    right = torch.where(norm > 1e-9, right / norm.clamp_min(1e-12), fallback)
    up = torch.linalg.cross(right, forward, dim=-1)
    c2w = torch.zeros(position.shape[0], 4, 4, dtype=position.dtype)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = -up
    c2w[:, :3, 2] = forward
    c2w[:, :3, 3] = position
    c2w[:, 3, 3] = 1.0
    return c2w


def convert_c2w_convention(c2w: torch.Tensor | np.ndarray, source: str, target: str = "opencv") -> torch.Tensor:
    """Convert camera-to-world matrices between ``"opencv"`` and ``"opengl"`` (negate the y and z columns)."""
    for arg, value in (("source", source), ("target", target)):
        if value not in ("opencv", "opengl"):
            raise ValueError(f"`{arg}` must be 'opencv' or 'opengl', got {value!r}.")
    c2w = torch.as_tensor(np.asarray(c2w) if not isinstance(c2w, torch.Tensor) else c2w).to(torch.float64).clone()
    if source != target:
        c2w[..., :3, 1:3] *= -1.0
    return c2w


@dataclass
class Cameras:
    """A set of ``V`` cameras.

    Attributes:
        c2w: ``(V, 4, 4)`` float64 camera-to-world matrices, OpenCV convention.
        fov_deg: ``(V,)`` vertical field of view, used when ``orthographic`` is False.
        ortho_scale: ``(V,)`` vertical extent of orthographic views in world units.
        orthographic: projection type of all views.
    """

    c2w: torch.Tensor
    fov_deg: torch.Tensor
    ortho_scale: torch.Tensor
    orthographic: bool = True

    def __post_init__(self) -> None:
        self.c2w = torch.as_tensor(self.c2w, dtype=torch.float64)
        if self.c2w.ndim != 3 or self.c2w.shape[1:] != (4, 4):
            raise ValueError(f"`c2w` must have shape (V, 4, 4), got {tuple(self.c2w.shape)}.")
        n = self.c2w.shape[0]
        self.fov_deg = _as_tensor(self.fov_deg, n, "fov")
        self.ortho_scale = _as_tensor(self.ortho_scale, n, "ortho_scale")
        if not self.orthographic and not bool(((self.fov_deg > 0) & (self.fov_deg < 180)).all()):
            raise ValueError(f"`fov` must be in (0, 180) degrees, got {self.fov_deg.tolist()}.")

    def __len__(self) -> int:
        return self.c2w.shape[0]

    def __getitem__(self, index: int | slice | Sequence[int] | torch.Tensor) -> Cameras:
        if isinstance(index, int):
            index = [index]
        return Cameras(self.c2w[index], self.fov_deg[index], self.ortho_scale[index], self.orthographic)

    @property
    def positions(self) -> torch.Tensor:
        """Camera centres ``(V, 3)``."""
        return self.c2w[:, :3, 3]

    def c2w_as(self, convention: str = "opencv") -> torch.Tensor:
        """The matrices in ``"opencv"`` or ``"opengl"`` convention."""
        return convert_c2w_convention(self.c2w, "opencv", convention)

    @classmethod
    def from_spherical(
        cls,
        azimuth_deg: Floats,
        elevation_deg: Floats = 0.0,
        distance: Floats = DEFAULT_DISTANCE,
        *,
        fov_deg: Floats | None = None,
        ortho_scale: Floats = DEFAULT_ORTHO_SCALE,
        azimuth_offset_deg: float = OFFICIAL_AZIMUTH_OFFSET_DEG,
    ) -> Cameras:
        """Cameras on a sphere around the origin, looking at it.

        Args:
            azimuth_deg: public azimuths (0 = front), one per view.
            elevation_deg, distance: scalars or one per view.
            fov_deg: vertical FOV in degrees for perspective cameras; ``None`` (default) gives orthographic cameras.
            ortho_scale: vertical extent of orthographic views.
            azimuth_offset_deg: added to ``azimuth_deg`` to get the internal azimuth (official: -90).
        """
        az = _as_tensor(azimuth_deg) + azimuth_offset_deg
        pos = camera_position(az, elevation_deg, distance)
        n = pos.shape[0]
        orthographic = fov_deg is None
        fov = _as_tensor(DEFAULT_FOV_DEG if fov_deg is None else fov_deg, n, "fov")
        return cls(look_at_c2w(pos), fov, _as_tensor(ortho_scale, n, "ortho_scale"), orthographic)

    @classmethod
    def from_c2w(
        cls,
        c2w: torch.Tensor | np.ndarray | Sequence,
        *,
        convention: str = "opencv",
        fov_deg: Floats | None = None,
        ortho_scale: Floats = DEFAULT_ORTHO_SCALE,
    ) -> Cameras:
        """Cameras from ``(V, 4, 4)`` camera-to-world matrices in ``convention`` (``"opencv"`` or ``"opengl"``)."""
        c2w = convert_c2w_convention(
            np.asarray(c2w, dtype=np.float64) if not isinstance(c2w, torch.Tensor) else c2w, convention
        )
        if c2w.ndim == 2:
            c2w = c2w[None]
        n = c2w.shape[0]
        orthographic = fov_deg is None
        fov = _as_tensor(DEFAULT_FOV_DEG if fov_deg is None else fov_deg, n, "fov")
        return cls(c2w, fov, _as_tensor(ortho_scale, n, "ortho_scale"), orthographic)

    @classmethod
    def from_json(cls, entries: Sequence[dict] | dict) -> Cameras:
        """Cameras from ``cameras.json``: the mini-world export's object (``{"convention", "projection",
        "frames": [{"c2w", "fov_deg", "ortho_scale"}, ...]}``) or a plain list of such entries (``c2w`` OpenCV unless
        an entry or the object says ``"convention": "opengl"``)."""
        if isinstance(entries, dict):
            top = {k: v for k, v in entries.items() if k in ("convention", "projection")}
            entries = [{**top, **frame} for frame in entries.get("frames", [])]
        if not entries:
            raise ValueError("`cameras` is empty.")
        projections = {e.get("projection", "orthographic") for e in entries}
        if len(projections) != 1:
            raise ValueError(f"All cameras must share one projection, got {sorted(projections)}.")
        ortho = projections.pop() == "orthographic"
        c2w = torch.stack(
            [
                convert_c2w_convention(np.asarray(e["c2w"], dtype=np.float64), e.get("convention", "opencv"))
                for e in entries
            ]
        )
        fov = [float(e.get("fov_deg") or DEFAULT_FOV_DEG) for e in entries]
        scale = [float(e.get("ortho_scale") or DEFAULT_ORTHO_SCALE) for e in entries]
        return cls(c2w, fov, scale, ortho)

    def to_json(self) -> list[dict]:
        """JSON-friendly entries (inverse of :meth:`from_json`)."""
        return [
            {
                "c2w": self.c2w[i].tolist(),
                "projection": "orthographic" if self.orthographic else "perspective",
                "fov_deg": None if self.orthographic else float(self.fov_deg[i]),
                "ortho_scale": float(self.ortho_scale[i]) if self.orthographic else None,
            }
            for i in range(len(self))
        ]


def default_cameras(
    num_views: int = 6,
    *,
    azimuth_deg: Floats | None = None,
    elevation_deg: Floats = 0.0,
    distance: Floats = DEFAULT_DISTANCE,
    fov_deg: Floats | None = None,
    ortho_scale: Floats = DEFAULT_ORTHO_SCALE,
) -> Cameras:
    """The official inference cameras: an orthographic ring at elevation 0, distance 1.8, box +-0.55.

    ``azimuth_deg`` defaults to :func:`default_azimuths`; passing ``fov_deg`` makes the cameras perspective.
    """
    if azimuth_deg is None:
        azimuth_deg = default_azimuths(num_views)
    return Cameras.from_spherical(azimuth_deg, elevation_deg, distance, fov_deg=fov_deg, ortho_scale=ortho_scale)


def ray_bundle(cameras: Cameras, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """World rays through pixel centres.

    Returns:
        ``origins, directions``, each ``(V, height, width, 3)`` float64; directions are unit vectors. Perspective
        rays start at the camera centre; orthographic rays start on the image plane through the centre.
    """
    c2w = cameras.c2w
    rot, pos = c2w[:, :3, :3], c2w[:, :3, 3]
    u = torch.arange(width, dtype=torch.float64) + 0.5 - width / 2.0
    v = torch.arange(height, dtype=torch.float64) + 0.5 - height / 2.0
    vv, uu = torch.meshgrid(v, u, indexing="ij")  # (H, W)
    n = len(cameras)
    if cameras.orthographic:
        pix = (cameras.ortho_scale / height).view(n, 1, 1)
        offs = torch.stack([uu * pix, vv * pix, torch.zeros_like(uu * pix)], dim=-1)  # (V, H, W, 3)
        origins = pos.view(n, 1, 1, 3) + torch.einsum("vhwc,vdc->vhwd", offs, rot)
        dirs = rot[:, :, 2].view(n, 1, 1, 3).expand(n, height, width, 3)
    else:
        f = (height / 2.0) / torch.tan(torch.deg2rad(cameras.fov_deg) / 2.0)
        d_cam = torch.stack(
            [
                uu.expand(n, -1, -1) / f.view(n, 1, 1),
                vv.expand(n, -1, -1) / f.view(n, 1, 1),
                torch.ones(n, height, width, dtype=torch.float64),
            ],
            dim=-1,
        )
        dirs = F.normalize(torch.einsum("vhwc,vdc->vhwd", d_cam, rot), dim=-1)
        origins = pos.view(n, 1, 1, 3).expand(n, height, width, 3)
    return origins, dirs


def camera_maps(
    cameras: Cameras, height: int, width: int, *, kind: str = "ray", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Per-pixel 6-channel camera condition maps in ``[0, 1]``, shape ``(V, 6, height, width)``.

    Args:
        cameras: ``V`` cameras.
        height, width: output resolution (the image size, not the latent size).
        kind: ``"ray"`` (direction + normalised camera position; the official condition) or ``"plucker"``
            (direction + moment ``o x d``).
    """
    if kind not in ("ray", "plucker"):
        raise ValueError(f"`kind` must be 'ray' or 'plucker', got {kind!r}.")
    if height <= 0 or width <= 0:
        raise ValueError(f"`height` and `width` must be positive, got {height}x{width}.")
    origins, dirs = ray_bundle(cameras, height, width)
    if kind == "ray":
        second = F.normalize(cameras.positions, dim=-1).view(-1, 1, 1, 3).expand_as(dirs)
    else:
        second = torch.linalg.cross(origins, dirs, dim=-1)
    maps = torch.cat([dirs, second], dim=-1).permute(0, 3, 1, 2)
    return ((maps + 1.0) / 2.0).clamp(0.0, 1.0).to(dtype)


def _to_hwc_array(x, name: str) -> tuple[np.ndarray, bool]:
    """One map (PIL image, ``(H, W, 3)`` / ``(3, H, W)`` array or tensor) -> float64 ``(H, W, 3)``; images in [0, 1]."""
    if isinstance(x, PIL.Image.Image):
        return np.asarray(x.convert("RGB"), dtype=np.float64) / 255.0, True
    arr = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    if arr.ndim != 3:
        raise ValueError(f"Each `{name}` must be (H, W, 3) or (3, H, W), got shape {arr.shape}.")
    if arr.shape[-1] != 3 and arr.shape[0] == 3:
        arr = arr.transpose(1, 2, 0)
    if arr.shape[-1] != 3:
        raise ValueError(f"Each `{name}` must have 3 channels, got shape {arr.shape}.")
    return arr, False


def geometry_maps(
    position_map,
    normal_map,
    height: int | None = None,
    width: int | None = None,
    *,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Geometry condition ``[(pos + 0.5), (normal / 2 + 0.5)]`` clamped to ``[0, 1]``, shape ``(V, 6, H, W)``.

    Args:
        position_map: world positions per view: a ``(V, H, W, 3)`` / ``(V, 3, H, W)`` array or tensor, or a list of
            per-view arrays or PIL images. Arrays hold raw positions (objects in ``[-0.5, 0.5]^3``); PIL images are
            taken as already encoded (``pos + 0.5`` in ``[0, 1]``).
        normal_map: world unit normals, same forms; PIL images are taken as already encoded (``n / 2 + 0.5``).
        height, width: resize (bilinear) to this size when given.
    """
    out = []
    for name, maps, encode in (
        ("position_map", position_map, lambda a: a + 0.5),
        ("normal_map", normal_map, lambda a: a / 2.0 + 0.5),
    ):
        if isinstance(maps, (np.ndarray, torch.Tensor)) and np.ndim(maps) == 3:
            maps = [maps]
        views = []
        for m in maps:
            arr, encoded = _to_hwc_array(m, name)
            views.append(arr if encoded else encode(arr))
        t = torch.from_numpy(np.stack(views)).permute(0, 3, 1, 2)
        if height is not None and width is not None and t.shape[-2:] != (height, width):
            t = F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)
        out.append(t.clamp(0.0, 1.0))
    if out[0].shape != out[1].shape:
        raise ValueError(
            f"`position_map` and `normal_map` must match, got {tuple(out[0].shape)} and {tuple(out[1].shape)}."
        )
    return torch.cat(out, dim=1).to(dtype)
