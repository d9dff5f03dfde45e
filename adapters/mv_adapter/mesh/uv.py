"""UV atlases for meshes that have none, with ``xatlas`` (an optional dependency: ``pip install xatlas``)."""

from __future__ import annotations

import numpy as np
import torch
from diffusers.utils import logging

from .load import Mesh

logger = logging.get_logger(__name__)

__all__ = ["ensure_uv", "unwrap_uv", "uv_problem", "xatlas_available"]


def xatlas_available() -> bool:
    """Whether the optional ``xatlas`` package imports."""
    try:
        import xatlas  # noqa: F401
    except ImportError:
        return False
    return True


def unwrap_uv(mesh: Mesh, *, texture_size: int = 1024, padding: int = 2) -> Mesh:
    """A copy of ``mesh`` with a new UV atlas made by xatlas (vertices are split along the atlas seams).

    Args:
        mesh: any :class:`~.load.Mesh`; its existing ``uv`` and ``texture`` are dropped.
        texture_size: the texture resolution the atlas is packed for.
        padding: texels between charts (room for bilinear filtering and the dilation fill).
    """
    try:
        import xatlas
    except ImportError as err:
        raise ImportError(
            "The mesh has no UVs and making them needs `xatlas`: `pip install xatlas` (or the `mesh` extra)."
        ) from err
    if texture_size < 8:
        raise ValueError(f"`texture_size` must be >= 8, got {texture_size}.")
    atlas = xatlas.Atlas()
    atlas.add_mesh(
        mesh.vertices.detach().cpu().numpy().astype(np.float32),
        mesh.faces.detach().cpu().numpy().astype(np.uint32),
    )
    pack = xatlas.PackOptions()
    pack.resolution = int(texture_size)
    pack.padding = int(padding)
    pack.bilinear = True
    atlas.generate(pack_options=pack)
    vmapping, indices, uvs = atlas[0]
    logger.info("xatlas: %d charts, %.0f%% of the texture used", atlas.chart_count, 100.0 * float(atlas.utilization))
    device = mesh.device
    vmap = torch.from_numpy(vmapping.astype(np.int64)).to(device)
    return Mesh(
        vertices=mesh.vertices[vmap],
        faces=torch.from_numpy(indices.astype(np.int64)).to(device),
        vertex_normals=mesh.vertex_normals[vmap],
        uv=torch.from_numpy(uvs.astype(np.float32)).to(device),
        texture=None,
        to_world=mesh.to_world,
    )


def uv_problem(mesh: Mesh, *, overlap_tolerance: float = 0.02) -> str | None:
    """Why ``mesh.uv`` cannot hold a baked texture (``None`` when it can).

    A bake needs every surface point to own its texel: UVs must exist, lie in ``[0, 1]`` (no tiling) and not overlap
    (no mirrored or shared islands). Overlap is measured as the UV triangles' summed area against the area of their
    union, the latter from a 512 x 512 rasterisation (``overlap_tolerance`` is the relative excess allowed).
    """
    if mesh.uv is None:
        return "the mesh has no UVs"
    uv = mesh.uv.detach().double()
    if not bool(torch.isfinite(uv).all()):
        return "its UVs hold non-finite values"
    if float(uv.min()) < -1e-4 or float(uv.max()) > 1.0 + 1e-4:
        return f"its UVs leave [0, 1] (range {float(uv.min()):.3g} .. {float(uv.max()):.3g}: a tiling texture)"
    tri = uv[mesh.faces.to(uv.device)]
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    summed = float((e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]).abs().sum() / 2.0)
    from .bake import uv_rasterize

    size = 512
    union = float(uv_rasterize(mesh, size).mask.sum()) / size**2
    # thin islands cover fewer texel centres than their area: allow a texel-wide border per island on top
    if summed > (1.0 + overlap_tolerance) * union + 4.0 / size:
        return f"its UV islands overlap (total area {summed:.3f} vs {union:.3f} covered)"
    return None


def ensure_uv(mesh: Mesh, *, texture_size: int = 1024) -> Mesh:
    """``mesh`` itself when its UVs can hold a bake (:func:`uv_problem`), else :func:`unwrap_uv` (logged)."""
    problem = uv_problem(mesh)
    if problem is None:
        return mesh
    logger.warning("Making a new UV atlas with xatlas: %s.", problem)
    return unwrap_uv(mesh, texture_size=texture_size)
