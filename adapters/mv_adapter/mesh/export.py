"""Write a textured mesh: a binary glTF (``.glb``) with the texture embedded, plus the texture as a PNG.

The material is a PBR base-colour texture with metallic 0 and roughness 0.9, as the official
``replace_mesh_texture_and_save``. Vertices are written in the source file's coordinates by default (the inverse of
:func:`~.load.load_mesh`'s normalisation), so the result lines up with the user's original mesh.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from .load import Mesh

__all__ = ["export_textured_mesh", "texture_to_image"]


def texture_to_image(texture) -> PIL.Image.Image:
    """``(H, W, 3)`` float texture in ``[0, 1]`` (tensor or array), or a PIL image, as an 8-bit RGB image."""
    if isinstance(texture, PIL.Image.Image):
        return texture.convert("RGB")
    arr = texture.detach().cpu().numpy() if isinstance(texture, torch.Tensor) else np.asarray(texture)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"`texture` must have shape (H, W, 3), got {arr.shape}.")
    return PIL.Image.fromarray((arr.astype(np.float64) * 255.0).round().clip(0, 255).astype(np.uint8))


def export_textured_mesh(
    mesh: Mesh,
    path: str | os.PathLike,
    *,
    texture=None,
    texture_path: str | os.PathLike | None = None,
    frame: str = "source",
) -> Path:
    """Write ``mesh`` with its texture as a ``.glb`` (and the texture PNG).

    Args:
        mesh: a mesh with ``uv``.
        path: output ``.glb`` path (parent folders are created).
        texture: ``(T, T, 3)`` in ``[0, 1]`` or a PIL image (default: ``mesh.texture``).
        texture_path: where to write the texture PNG (default: ``path`` with ``_texture.png``); ``False`` for none.
        frame: ``"source"`` (the original file's coordinates) or ``"world"`` (MV-Adapter's unit box, z up).

    Returns:
        The ``.glb`` path.
    """
    import trimesh

    path = Path(path)
    if path.suffix.lower() != ".glb":
        raise ValueError(f"`path` must end in .glb, got {path.name!r}.")
    if frame not in ("source", "world"):
        raise ValueError(f"`frame` must be 'source' or 'world', got {frame!r}.")
    texture = mesh.texture if texture is None else texture
    if mesh.uv is None or texture is None:
        raise ValueError("`mesh` needs `uv` and a texture (pass `texture=`) to be exported textured.")
    image = texture_to_image(texture)
    normals = mesh.vertex_normals.detach().cpu().double()
    if frame == "source":
        vertices = mesh.source_vertices().numpy()
        rot = mesh.to_world[:3, :3] / torch.linalg.norm(mesh.to_world[:3, :3], dim=0, keepdim=True)
        normals = normals @ rot  # world -> source: the inverse (transpose) of the rotation
    else:
        vertices = mesh.vertices.detach().cpu().double().numpy()
    material = trimesh.visual.material.PBRMaterial(
        baseColorFactor=[1.0, 1.0, 1.0, 1.0], baseColorTexture=image, metallicFactor=0.0, roughnessFactor=0.9
    )
    out = trimesh.Trimesh(
        vertices=vertices,
        faces=mesh.faces.detach().cpu().numpy(),
        vertex_normals=normals.numpy(),
        visual=trimesh.visual.TextureVisuals(uv=mesh.uv.detach().cpu().numpy(), material=material),
        process=False,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    out.export(str(path), file_type="glb")
    if texture_path is not False:
        png = Path(texture_path) if texture_path is not None else path.with_name(path.stem + "_texture.png")
        png.parent.mkdir(parents=True, exist_ok=True)
        image.save(png)
    return path
