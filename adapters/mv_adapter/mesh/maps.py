"""Position and normal maps of a mesh, in the conventions of MV-Adapter's geometry-guided pipelines.

Exactly as the official ``inference_tg2mv_sdxl.py`` / ``inference_ig2mv_sdxl.py`` (``render(..., render_attr=False,
normal_background=0.0)`` then ``control_image``):

- positions: world coordinates of the visible surface, in the frame of :func:`~.load.load_mesh` (z up, the mesh in
  ``[-0.5, 0.5]^3``), interpolated from the vertices; 0 on the background;
- normals: the mesh's per-vertex normals interpolated and renormalised (smooth shading, world frame, not view space);
  0 on the background;
- the condition ``cat([(position + 0.5).clamp(0, 1), (normal / 2 + 0.5).clamp(0, 1)])``, ``(V, 6, H, W)`` in
  ``[0, 1]``: both halves are 0.5 on the background (the same as :func:`adapters.mv_adapter.geometry_maps`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from ..camera import Cameras
from .cameras import geometry_cameras
from .load import Mesh
from .raster import Rasterization, interpolate, rasterize

__all__ = ["GeometryMaps", "render_geometry"]


@dataclass
class GeometryMaps:
    """Geometry maps of ``V`` views.

    Attributes:
        position: ``(V, H, W, 3)`` float32 world positions, 0 on the background.
        normal: ``(V, H, W, 3)`` float32 world unit normals, 0 on the background.
        mask: ``(V, H, W)`` bool, True where the mesh covers the pixel centre.
        depth: ``(V, H, W)`` float32 camera-space depth, 0 on the background.
        cameras: the cameras rendered.
        raster: the underlying :class:`~.raster.Rasterization` (face ids, barycentrics).
    """

    position: torch.Tensor
    normal: torch.Tensor
    mask: torch.Tensor
    depth: torch.Tensor
    cameras: Cameras
    raster: Rasterization

    def condition(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The geometry condition ``(V, 6, H, W)`` in ``[0, 1]``: ``[(pos + 0.5), (normal / 2 + 0.5)]`` clamped."""
        pos = (self.position + 0.5).clamp(0.0, 1.0)
        nrm = (self.normal / 2.0 + 0.5).clamp(0.0, 1.0)
        return torch.cat([pos, nrm], dim=-1).permute(0, 3, 1, 2).to(dtype)

    def position_images(self) -> list[PIL.Image.Image]:
        """Encoded position maps as RGB images (``pos + 0.5``)."""
        return _images(self.condition()[:, :3])

    def normal_images(self) -> list[PIL.Image.Image]:
        """Encoded normal maps as RGB images (``normal / 2 + 0.5``)."""
        return _images(self.condition()[:, 3:])

    def mask_images(self) -> list[PIL.Image.Image]:
        """Masks as mode ``"L"`` images (255 = mesh)."""
        return [PIL.Image.fromarray(m.cpu().numpy().astype(np.uint8) * 255) for m in self.mask]


def _images(x: torch.Tensor) -> list[PIL.Image.Image]:
    arr = (x.permute(0, 2, 3, 1).cpu().numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
    return [PIL.Image.fromarray(a) for a in arr]


def render_geometry(
    mesh: Mesh,
    cameras: Cameras | None = None,
    height: int = 768,
    width: int | None = None,
    *,
    backend: str = "auto",
) -> GeometryMaps:
    """Render position / normal maps and the visibility mask of ``mesh``.

    Args:
        mesh: a :class:`~.load.Mesh` (see :func:`~.load.load_mesh`); the maps live on its device.
        cameras: ``V`` cameras (default: the official geometry ring, :func:`~.cameras.geometry_cameras`).
        height, width: map size (``width`` defaults to ``height``).
        backend: rasteriser backend (see :func:`~.raster.rasterize`).
    """
    cameras = geometry_cameras() if cameras is None else cameras
    width = height if width is None else width
    rast = rasterize(mesh.vertices, mesh.faces, cameras, height, width, backend=backend)
    position = interpolate(mesh.vertices, rast, mesh.faces)
    normal = F.normalize(interpolate(mesh.vertex_normals, rast, mesh.faces), dim=-1)
    normal = torch.where(rast.mask[..., None], normal, torch.zeros_like(normal))
    return GeometryMaps(
        position=position, normal=normal, mask=rast.mask, depth=rast.depth, cameras=cameras, raster=rast
    )
