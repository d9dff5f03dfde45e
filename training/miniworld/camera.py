"""Cameras of the mini-world, in the conventions MV-Adapter uses.

World frame
    Right-handed, **z up**. Every mini-world scene fits in the box ``[-0.5, 0.5]^3`` around the origin, the same
    normalisation MV-Adapter's official pipeline assumes for its objects (position maps are encoded as
    ``pos + 0.5``).

Spherical camera placement (identical to the official MV-Adapter ``get_c2w``)
    ``position = distance * (cos(el) * cos(az), cos(el) * sin(az), sin(el))``: azimuth is measured in the xy plane
    from +x towards +y, elevation upwards from the xy plane, both in degrees. Azimuth -90 puts the camera on the -y
    axis; MV-Adapter's default ring of views starts there ("front").

Camera-to-world matrices (``c2w``, 4x4)
    **OpenCV convention**: the columns of the rotation are the camera axes in world coordinates, x to the right of
    the image, y down the image, z forward (the viewing direction). ``c2w[:3, 3]`` is the camera centre. The
    official MV-Adapter code uses the OpenGL / Blender convention (x right, y up, z backward); the two differ by
    negating the y and z columns, see :func:`opencv_to_opengl` / :func:`opengl_to_opencv` (the same operation).

Projection
    ``fov_deg`` is the **vertical** field of view (the official ``fovy_deg``); the horizontal one follows the aspect
    ratio. ``ortho_scale`` is the **vertical** extent of an orthographic view in world units (``top - bottom``;
    MV-Adapter's default box ``[-0.55, 0.55]`` is ``ortho_scale=1.1``); the width is ``ortho_scale * width / height``.
    Pixel ``(row i, column j)`` has its centre at image coordinates ``(u, v) = (j + 0.5, i + 0.5)`` and the principal
    point is the image centre, so for perspective cameras ``K = [[f, 0, W/2], [0, f, H/2], [0, 0, 1]]`` with
    ``f = (H / 2) / tan(fov / 2)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "Camera",
    "camera_position",
    "look_at_camera",
    "opencv_to_opengl",
    "opengl_to_opencv",
    "intrinsics_matrix",
    "ring_cameras",
    "camera_rays",
]

_WORLD_UP = np.array([0.0, 0.0, 1.0])


def camera_position(azimuth_deg, elevation_deg, distance) -> np.ndarray:
    """Camera centre(s) on the sphere: ``distance * (cos el cos az, cos el sin az, sin el)``.

    Args broadcast together; returns an array of shape ``broadcast_shape + (3,)`` (float64).
    """
    az = np.deg2rad(np.asarray(azimuth_deg, dtype=np.float64))
    el = np.deg2rad(np.asarray(elevation_deg, dtype=np.float64))
    d = np.asarray(distance, dtype=np.float64)
    az, el, d = np.broadcast_arrays(az, el, d)
    return np.stack([d * np.cos(el) * np.cos(az), d * np.cos(el) * np.sin(az), d * np.sin(el)], axis=-1)


def look_at_camera(azimuth_deg, elevation_deg, distance, target=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Camera-to-world matrix (OpenCV: x right, y down, z forward) of a camera looking at ``target``.

    The camera sits at ``target + camera_position(azimuth_deg, elevation_deg, distance)`` with the world z axis as
    "up" (at elevation +-90 degrees, where up is degenerate, the image "up" is the horizontal direction pointing away
    from the camera's azimuth ``(-cos az, -sin az, 0)`` for +90, so the limit is continuous).

    Args:
        azimuth_deg, elevation_deg, distance: scalars or arrays that broadcast together.
        target: the point looked at, shape ``(3,)``.

    Returns:
        ``(4, 4)`` float64 array for scalar inputs, else ``broadcast_shape + (4, 4)``.
    """
    pos = camera_position(azimuth_deg, elevation_deg, distance) + np.asarray(target, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - pos
    forward = forward / np.linalg.norm(forward, axis=-1, keepdims=True)
    right = np.cross(forward, _WORLD_UP)
    norm = np.linalg.norm(right, axis=-1, keepdims=True)
    # Poles: fall back to the right vector the azimuth implies, (sin az, -cos az, 0).
    az = np.deg2rad(np.broadcast_to(np.asarray(azimuth_deg, dtype=np.float64), pos.shape[:-1]))
    fallback = np.stack([np.sin(az), -np.cos(az), np.zeros_like(az)], axis=-1)
    right = np.where(norm > 1e-9, right / np.maximum(norm, 1e-12), fallback)
    up = np.cross(right, forward)
    c2w = np.zeros(pos.shape[:-1] + (4, 4))
    c2w[..., :3, 0] = right
    c2w[..., :3, 1] = -up  # image y points down
    c2w[..., :3, 2] = forward
    c2w[..., :3, 3] = pos
    c2w[..., 3, 3] = 1.0
    return c2w


def opencv_to_opengl(c2w: np.ndarray) -> np.ndarray:
    """Convert camera-to-world matrices between OpenCV (x right, y down, z forward) and OpenGL/Blender (x right, y up,
    z backward): negate the y and z camera axes. The operation is its own inverse."""
    out = np.array(c2w, dtype=np.float64, copy=True)
    out[..., :3, 1:3] *= -1.0
    return out


opengl_to_opencv = opencv_to_opengl


def intrinsics_matrix(fov_deg: float, width: int, height: int) -> np.ndarray:
    """Pinhole intrinsics ``K`` (3x3, pixels) for a vertical field of view and the image size (centre principal
    point, square pixels)."""
    f = (height / 2.0) / math.tan(math.radians(fov_deg) / 2.0)
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


@dataclass
class Camera:
    """One camera: pose plus projection.

    Attributes:
        c2w: ``(4, 4)`` camera-to-world matrix, OpenCV convention (see the module docstring).
        fov_deg: vertical field of view for a perspective camera; ``None`` for orthographic.
        ortho_scale: vertical extent of an orthographic view in world units (used when ``fov_deg`` is ``None``).
        azimuth_deg, elevation_deg, distance: the spherical parameters when the camera came from
            :meth:`Camera.orbit`, else ``None`` (informational; ``c2w`` is authoritative).
    """

    c2w: np.ndarray
    fov_deg: float | None = 40.0
    ortho_scale: float = 1.1
    azimuth_deg: float | None = None
    elevation_deg: float | None = None
    distance: float | None = None
    meta: dict = field(default_factory=dict)

    @classmethod
    def orbit(
        cls,
        azimuth_deg: float,
        elevation_deg: float,
        distance: float,
        *,
        fov_deg: float | None = 40.0,
        ortho_scale: float = 1.1,
        target=(0.0, 0.0, 0.0),
    ) -> Camera:
        """A camera on the sphere around ``target`` looking at it (see :func:`look_at_camera`)."""
        return cls(
            c2w=look_at_camera(azimuth_deg, elevation_deg, distance, target),
            fov_deg=fov_deg,
            ortho_scale=ortho_scale,
            azimuth_deg=float(azimuth_deg),
            elevation_deg=float(elevation_deg),
            distance=float(distance),
        )

    @property
    def orthographic(self) -> bool:
        return self.fov_deg is None

    @property
    def position(self) -> np.ndarray:
        return np.asarray(self.c2w)[:3, 3]

    def to_dict(self) -> dict:
        """JSON-friendly description (the ``cameras.json`` entries of the multi-view export)."""
        return {
            "c2w": np.asarray(self.c2w, dtype=np.float64).tolist(),
            "projection": "orthographic" if self.orthographic else "perspective",
            "fov_deg": self.fov_deg,
            "ortho_scale": self.ortho_scale if self.orthographic else None,
            "azimuth_deg": self.azimuth_deg,
            "elevation_deg": self.elevation_deg,
            "distance": self.distance,
        }


def ring_cameras(
    num_views: int,
    *,
    elevation_deg: float = 0.0,
    distance: float = 1.8,
    azimuth_start_deg: float = -90.0,
    fov_deg: float | None = None,
    ortho_scale: float = 1.1,
) -> list[Camera]:
    """``num_views`` cameras evenly spaced in azimuth, starting at ``azimuth_start_deg`` (default -90: the "front"
    view on the -y axis) and increasing. Defaults are MV-Adapter's official orthographic ring (distance 1.8, ortho box
    +-0.55, elevation 0)."""
    return [
        Camera.orbit(
            azimuth_start_deg + 360.0 * k / num_views,
            elevation_deg,
            distance,
            fov_deg=fov_deg,
            ortho_scale=ortho_scale,
        )
        for k in range(num_views)
    ]


def camera_rays(camera: Camera, height: int, width: int, supersample: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """World-space rays through the pixel grid.

    Args:
        camera: the camera.
        height, width: image size in pixels.
        supersample: ``s`` sub-samples per pixel side (``s * s`` rays per pixel, on a regular sub-grid).

    Returns:
        ``origins, directions``: float32 arrays of shape ``(height * s, width * s, 3)``; directions are unit vectors.
        Row ``i`` / column ``j`` of the super-sampled grid maps to image coordinates ``((j + 0.5) / s, (i + 0.5) / s)``.
    """
    s = int(supersample)
    c2w = np.asarray(camera.c2w, dtype=np.float64)
    rot, pos = c2w[:3, :3], c2w[:3, 3]
    u = (np.arange(width * s, dtype=np.float64) + 0.5) / s - width / 2.0
    v = (np.arange(height * s, dtype=np.float64) + 0.5) / s - height / 2.0
    uu, vv = np.meshgrid(u, v)  # (H*s, W*s)
    if camera.fov_deg is not None:
        f = (height / 2.0) / math.tan(math.radians(camera.fov_deg) / 2.0)
        d_cam = np.stack([uu / f, vv / f, np.ones_like(uu)], axis=-1)
        dirs = d_cam @ rot.T
        dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
        origins = np.broadcast_to(pos, dirs.shape)
    else:
        pix = camera.ortho_scale / height
        offs = np.stack([uu * pix, vv * pix, np.zeros_like(uu)], axis=-1)
        origins = pos + offs @ rot.T
        dirs = np.broadcast_to(rot[:, 2], origins.shape)
    return np.ascontiguousarray(origins, dtype=np.float32), np.ascontiguousarray(dirs, dtype=np.float32)
