"""Bake multi-view images back onto a mesh as a UV texture.

For every texel of the UV atlas (the mesh's own UVs, or an xatlas atlas when it has none) the surface point it holds
is projected into each view; a view contributes the colour it shows there (bilinear) when

- the point is what the view sees: the view's own position map, sampled at the projection, lies within
  ``position_tolerance`` pixels' width of the point (occluded points and silhouette pixels fail; as the official
  ``pos_error_eps`` test), and all four bilinear taps are on the mesh;
- the surface faces the camera: ``|cos(angle between the face normal and the direction to the camera)| > min_cos``
  (two-sided, so faces wound the wrong way are painted too; which side shows is the position test's business).

Contributions are blended with weights ``view_weight * cos ** cos_power`` (the official ``ExponentialBlend`` with
``alpha=3``), so each texel is dominated by the views that see it most head-on.

Texels that no view sees, and the gutter between UV charts, are filled by **nearest-texel dilation**: each takes the
colour of the nearest seen texel in texture space (a jump-flooding Voronoi fill, ``log2(size) + 1`` passes). This is
fast, deterministic and needs no model; it fills small holes well, and large unseen regions (a mesh's underside in a
ring without a bottom view) with flat streaks. Diffusion inpainting in UV space is the heavier alternative.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers.utils import logging

from ..camera import Cameras
from .load import Mesh
from .raster import interpolate, project_points, rasterize, rasterize_screen
from .uv import ensure_uv

logger = logging.get_logger(__name__)

__all__ = ["BakeResult", "bake_texture", "fill_nearest", "uv_rasterize"]


@dataclass
class BakeResult:
    """A baked texture.

    Attributes:
        mesh: the mesh with the UVs used (new ones from xatlas when it had none) and ``texture`` set.
        texture: ``(T, T, 3)`` float32 in ``[0, 1]``, unseen texels filled.
        weight: ``(T, T)`` float32 sum of the blend weights (0 where no view saw the texel).
        seen: ``(T, T)`` bool texels that at least one view saw.
        covered: ``(T, T)`` bool texels inside the UV atlas (their centre lies in a face).
    """

    mesh: Mesh
    texture: torch.Tensor
    weight: torch.Tensor
    seen: torch.Tensor
    covered: torch.Tensor

    @property
    def coverage(self) -> float:
        """Share of the atlas's texels seen by at least one view."""
        return float(self.seen.sum()) / max(1, int(self.covered.sum()))

    def texture_image(self) -> PIL.Image.Image:
        """The texture as an 8-bit RGB image."""
        arr = (self.texture.detach().cpu().numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
        return PIL.Image.fromarray(arr)


def _views_tensor(views) -> torch.Tensor:
    """Views (list of PIL images, ``(V, H, W, 3)`` / ``(V, 3, H, W)`` array or tensor in [0, 1]) -> ``(V, 3, H, W)``."""
    if isinstance(views, (list, tuple)) and views and isinstance(views[0], PIL.Image.Image):
        arr = np.stack([np.asarray(v.convert("RGB"), dtype=np.float32) / 255.0 for v in views])
        return torch.from_numpy(arr).permute(0, 3, 1, 2)
    t = torch.as_tensor(np.asarray(views) if not isinstance(views, torch.Tensor) else views).float()
    if t.ndim != 4:
        raise ValueError(f"`views` must be (V, H, W, 3) or (V, 3, H, W), got shape {tuple(t.shape)}.")
    if t.shape[1] != 3 and t.shape[-1] == 3:
        t = t.permute(0, 3, 1, 2)
    if t.shape[1] != 3:
        raise ValueError(f"`views` must have 3 channels, got shape {tuple(t.shape)}.")
    return t


def uv_rasterize(mesh: Mesh, size: int):
    """Rasterise the UV atlas at texel centres: a :class:`~.raster.Rasterization` of one ``(size, size)`` view."""
    uv = mesh.uv.to(mesh.device).double()
    xy = torch.stack([uv[:, 0] * size, (1.0 - uv[:, 1]) * size], dim=-1)[None]
    return rasterize_screen(xy, torch.zeros_like(xy[..., 0]), mesh.faces, size, size)


def _sample(maps: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``maps (V, C, H, W)`` at ``grid (V, P, 2)`` in [-1, 1] -> ``(V, P, C)``."""
    out = F.grid_sample(maps, grid[:, :, None].float(), mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[..., 0].permute(0, 2, 1)


def fill_nearest(image: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Give every unknown texel the value of the nearest known one (jump flooding, then one extra step-1 pass).

    Args:
        image: ``(H, W, C)`` values, used where ``known``.
        known: ``(H, W)`` bool.

    Returns:
        ``(H, W, C)``: ``image`` where known, the nearest known texel's value elsewhere (``image`` unchanged when no
        texel is known).
    """
    height, width = known.shape
    device = known.device
    if not bool(known.any()):
        return image.clone()
    flat_index = torch.arange(height * width, device=device).view(height, width)
    seed = torch.where(known, flat_index, torch.full_like(flat_index, -1))
    yy = torch.arange(height, device=device, dtype=torch.float32)[:, None].expand(height, width)
    xx = torch.arange(width, device=device, dtype=torch.float32)[None, :].expand(height, width)

    def dist(s):
        sy, sx = (s // width).float(), (s % width).float()
        d = (sy - yy) ** 2 + (sx - xx) ** 2
        return torch.where(s >= 0, d, torch.full_like(d, float("inf")))

    steps = []
    step = 1 << max(0, (max(height, width) - 1).bit_length() - 1)
    while step >= 1:
        steps.append(step)
        step //= 2
    best_d = dist(seed)
    for step in [*steps, 1]:
        for dy in (-step, 0, step):
            for dx in (-step, 0, step):
                if dy == 0 and dx == 0:
                    continue
                cand = torch.full_like(seed, -1)
                ys, yd = slice(max(0, dy), height + min(0, dy)), slice(max(0, -dy), height - max(0, dy))
                xs, xd = slice(max(0, dx), width + min(0, dx)), slice(max(0, -dx), width - max(0, dx))
                cand[yd, xd] = seed[ys, xs]
                d = dist(cand)
                better = d < best_d
                seed = torch.where(better, cand, seed)
                best_d = torch.where(better, d, best_d)
    return image.reshape(height * width, -1)[seed.reshape(-1)].view(height, width, -1)


def bake_texture(
    mesh: Mesh,
    views,
    cameras: Cameras,
    *,
    texture_size: int = 1024,
    cos_power: float = 3.0,
    min_cos: float = 0.2,
    view_weights=None,
    position_tolerance: float = 1.0,
    fill: bool = True,
    backend: str = "auto",
    chunk_texels: int = 1 << 18,
) -> BakeResult:
    """Project ``V`` views onto ``mesh`` and blend them into a UV texture.

    Args:
        mesh: the mesh the views show (same world frame as the cameras; see :func:`~.load.load_mesh`).
        views: ``V`` images in ``[0, 1]``: a list of PIL images or a ``(V, H, W, 3)`` / ``(V, 3, H, W)`` array/tensor.
        cameras: the ``V`` cameras of the views.
        texture_size: side of the square texture (also the xatlas packing resolution when UVs are made).
        cos_power: exponent of the view-angle weight ``cos ** cos_power`` (official: 3).
        min_cos: views that see the surface at a cosine at or below this are not used (official: 0.2).
        view_weights: optional ``(V,)`` extra weight per view (e.g. favour the front view).
        position_tolerance: visibility test, in pixel widths: how far the view's own surface point may lie from the
            texel's point.
        fill: fill unseen and gutter texels by nearest-texel dilation (else they stay 0).
        backend: rasteriser backend.
        chunk_texels: texels projected at a time (bounds memory).

    Returns:
        A :class:`BakeResult`.
    """
    if texture_size < 8:
        raise ValueError(f"`texture_size` must be >= 8, got {texture_size}.")
    if not 0.0 <= min_cos < 1.0:
        raise ValueError(f"`min_cos` must be in [0, 1), got {min_cos}.")
    if cos_power < 0:
        raise ValueError(f"`cos_power` must be >= 0, got {cos_power}.")
    if position_tolerance <= 0:
        raise ValueError(f"`position_tolerance` must be > 0, got {position_tolerance}.")
    device = mesh.device
    images = _views_tensor(views).to(device)
    num_views, _, height, width = images.shape
    if num_views != len(cameras):
        raise ValueError(f"`views` has {num_views} images but `cameras` has {len(cameras)}.")
    weights = torch.ones(num_views) if view_weights is None else torch.as_tensor(view_weights, dtype=torch.float32)
    if weights.shape != (num_views,) or bool((weights < 0).any()):
        raise ValueError(f"`view_weights` must be {num_views} non-negative values, got {weights.tolist()}.")
    weights = weights.to(device)

    mesh = ensure_uv(mesh, texture_size=texture_size)
    uv_rast = uv_rasterize(mesh, texture_size)
    covered = uv_rast.mask[0]
    texel_pos = interpolate(mesh.vertices, uv_rast, mesh.faces)[0][covered]  # (P, 3)
    texel_nrm = mesh.face_normals()[uv_rast.face_id[0][covered]]  # (P, 3)

    view_rast = rasterize(mesh.vertices, mesh.faces, cameras, height, width, backend=backend)
    view_pos = interpolate(mesh.vertices, view_rast, mesh.faces).permute(0, 3, 1, 2)  # (V, 3, H, W)
    view_mask = view_rast.mask[:, None].float()
    c2w = cameras.c2w.to(device)
    forward, cam_pos = c2w[:, :3, 2].float(), c2w[:, :3, 3].float()
    if cameras.orthographic:
        pixel_world = (cameras.ortho_scale.to(device).float() / height)[:, None]  # (V, 1)
    else:
        pixel_world = (2.0 * torch.tan(torch.deg2rad(cameras.fov_deg.to(device)) / 2.0) / height).float()[:, None]

    colour_sum = torch.zeros(len(texel_pos), 3, device=device)
    weight_sum = torch.zeros(len(texel_pos), device=device)
    for c0 in range(0, len(texel_pos), chunk_texels):
        pos = texel_pos[c0 : c0 + chunk_texels]
        nrm = texel_nrm[c0 : c0 + chunk_texels]
        xy, z = project_points(pos, cameras, height, width)  # (V, P, 2), (V, P)
        grid = torch.stack([xy[..., 0] / width * 2.0 - 1.0, xy[..., 1] / height * 2.0 - 1.0], dim=-1)
        on_mesh = _sample(view_mask, grid)[..., 0] > 0.999
        seen_pos = _sample(view_pos, grid)
        if cameras.orthographic:
            to_cam = -forward[:, None].expand(-1, len(pos), -1)
            tol = pixel_world * position_tolerance
        else:
            to_cam = F.normalize(cam_pos[:, None] - pos[None], dim=-1)
            tol = pixel_world * z.float().clamp_min(0.0) * position_tolerance
        cos = (to_cam * nrm[None]).sum(-1).abs()  # two-sided: a face's winding says nothing about which side shows
        visible = on_mesh & ((seen_pos - pos[None]).norm(dim=-1) < tol) & (cos > min_cos) & (z > 0)
        w = torch.where(visible, cos**cos_power, torch.zeros_like(cos)) * weights[:, None]
        colours = _sample(images, grid)  # (V, P, 3)
        colour_sum[c0 : c0 + chunk_texels] = (w[..., None] * colours).sum(0)
        weight_sum[c0 : c0 + chunk_texels] = w.sum(0)

    texture = torch.zeros(texture_size, texture_size, 3, device=device)
    weight = torch.zeros(texture_size, texture_size, device=device)
    texel_seen = weight_sum > 0
    texture[covered] = torch.where(
        texel_seen[:, None], colour_sum / weight_sum.clamp_min(1e-12)[:, None], torch.zeros_like(colour_sum)
    )
    weight[covered] = weight_sum
    seen = weight > 0
    if not bool(seen.any()):
        logger.warning("No view sees any part of the mesh: the texture is left empty (check the cameras).")
    elif fill:
        texture = fill_nearest(texture, seen)
    texture = texture.clamp(0.0, 1.0)
    out_mesh = Mesh(mesh.vertices, mesh.faces, mesh.vertex_normals, mesh.uv, texture, mesh.to_world)
    return BakeResult(mesh=out_mesh, texture=texture, weight=weight, seen=seen, covered=covered)
