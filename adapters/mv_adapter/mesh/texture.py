"""Texture sampling and textured renders of a mesh (to check a bake, or to show a result from new cameras).

UVs follow trimesh (``v`` up); texture images are ``(H, W, 3)`` with row 0 at the top, so texel ``(i, j)`` has its
centre at ``u = (j + 0.5) / W``, ``v = 1 - (i + 0.5) / H``. Sampling is bilinear with clamped borders (the official
renders use nvdiffrast's ``linear`` filter).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..camera import Cameras
from .load import Mesh
from .raster import interpolate, rasterize

__all__ = ["render_texture", "sample_texture"]


def sample_texture(texture: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup of ``texture`` ``(H, W, C)`` at ``uv`` ``(..., 2)``; returns ``(..., C)`` float32."""
    if texture.ndim != 3:
        raise ValueError(f"`texture` must have shape (H, W, C), got {tuple(texture.shape)}.")
    shape = uv.shape[:-1]
    grid = torch.stack([uv[..., 0] * 2.0 - 1.0, 1.0 - uv[..., 1] * 2.0], dim=-1).reshape(1, 1, -1, 2)
    tex = texture.to(device=uv.device, dtype=torch.float32).permute(2, 0, 1)[None]
    out = F.grid_sample(tex, grid.float(), mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, :, 0].T.reshape(*shape, texture.shape[-1])


def render_texture(
    mesh: Mesh,
    cameras: Cameras,
    height: int,
    width: int | None = None,
    *,
    texture: torch.Tensor | None = None,
    background: float = 0.5,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render the textured mesh, unlit (base colour only), from ``V`` cameras.

    Args:
        mesh: a mesh with ``uv``.
        cameras, height, width: views to render (``width`` defaults to ``height``).
        texture: ``(T, T, 3)`` in ``[0, 1]`` (default: ``mesh.texture``).
        background: value of pixels the mesh does not cover (official ``attr_background`` 0.5).
        backend: rasteriser backend.

    Returns:
        ``images (V, H, W, 3)`` float32 in ``[0, 1]`` and ``mask (V, H, W)`` bool.
    """
    texture = mesh.texture if texture is None else texture
    if mesh.uv is None or texture is None:
        raise ValueError("`mesh` needs `uv` and a texture (pass `texture=`) to be rendered textured.")
    width = height if width is None else width
    rast = rasterize(mesh.vertices, mesh.faces, cameras, height, width, backend=backend)
    uv = interpolate(mesh.uv, rast, mesh.faces)
    rgb = sample_texture(texture, uv)
    rgb = torch.where(rast.mask[..., None], rgb, torch.full_like(rgb, background))
    return rgb, rast.mask
