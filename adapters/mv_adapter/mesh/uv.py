"""UV atlases for meshes that have none, with ``xatlas`` (an optional dependency: ``pip install xatlas``)."""

from __future__ import annotations

import numpy as np
import torch
from diffusers.utils import logging

from .load import Mesh

logger = logging.get_logger(__name__)

__all__ = ["ensure_uv", "unwrap_uv", "xatlas_available"]


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


def ensure_uv(mesh: Mesh, *, texture_size: int = 1024) -> Mesh:
    """``mesh`` itself when it has UVs, else :func:`unwrap_uv`."""
    if mesh.uv is not None:
        return mesh
    logger.info("The mesh has no UVs: making an atlas with xatlas.")
    return unwrap_uv(mesh, texture_size=texture_size)
