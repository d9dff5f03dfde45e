"""Load a user's mesh and normalise it into MV-Adapter's unit box, the way the official scripts do.

The official geometry-guided scripts (``inference_tg2mv_sdxl.py`` / ``inference_ig2mv_sdxl.py``) call
``load_mesh(path, rescale=True)``: ``trimesh.load(path, force="mesh", process=False)`` (a scene's parts concatenated
with their transforms applied), no centring, every coordinate divided by the largest absolute coordinate and multiplied
by ``0.5`` (so the mesh touches the box ``[-0.5, 0.5]^3``), then the file's frame (``+y`` up, ``+x`` front, as glTF)
turned into the z-up world of the cameras: ``(x, y, z)_world = (x, -z, y)_file``. The vertex normals are trimesh's
(the file's own when it has them, else computed on the unmerged mesh) turned the same way. A glTF model facing ``+z``
then faces ``-y``, where the official front camera (public azimuth 0) sits.

UVs follow trimesh: per vertex, ``v`` up (origin at the bottom-left of the texture image); images are row 0 = top.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from diffusers.utils import logging

logger = logging.get_logger(__name__)

__all__ = ["DEFAULT_MAX_FACES", "MESH_EXTENSIONS", "Mesh", "axis_rotation", "load_mesh"]

#: File types :func:`load_mesh` reads.
MESH_EXTENSIONS = (".obj", ".glb", ".gltf", ".ply", ".stl")
#: Default face limit: larger meshes are refused (decimate them first, or raise ``max_faces``).
DEFAULT_MAX_FACES = 2_000_000

_AXES = {
    "+x": (1.0, 0.0, 0.0),
    "+y": (0.0, 1.0, 0.0),
    "+z": (0.0, 0.0, 1.0),
    "-x": (-1.0, 0.0, 0.0),
    "-y": (0.0, -1.0, 0.0),
    "-z": (0.0, 0.0, -1.0),
}


def axis_rotation(up: str = "+y", front: str = "+x") -> np.ndarray:
    """The rotation ``(3, 3)`` taking a file whose ``up`` / ``front`` axes are given into the z-up world.

    As the official ``load_mesh`` (``shape_init_mesh_up`` / ``shape_init_mesh_front``): the world ``x`` is the file's
    ``front`` axis, the world ``z`` its ``up`` axis and the world ``y = z x x``.
    """
    for name, value in (("up", up), ("front", front)):
        if value not in _AXES:
            raise ValueError(f"`{name}` must be one of {sorted(_AXES)}, got {value!r}.")
    if up[1] == front[1]:
        raise ValueError(f"`up` and `front` must be different axes, got {up!r} and {front!r}.")
    z, x = np.asarray(_AXES[up]), np.asarray(_AXES[front])
    return np.stack([x, np.cross(z, x), z], axis=0)


@dataclass
class Mesh:
    """A triangle mesh in MV-Adapter's unit box (z up), ready to rasterise.

    Attributes:
        vertices: ``(N, 3)`` float32 positions in the world frame (inside ``[-0.5, 0.5]^3`` after :func:`load_mesh`).
        faces: ``(F, 3)`` int64 vertex indices.
        vertex_normals: ``(N, 3)`` float32 unit normals in the world frame.
        uv: ``(N, 2)`` float32 per-vertex texture coordinates (``v`` up, trimesh's convention), or ``None``.
        texture: ``(H, W, 3)`` float32 base-colour image in ``[0, 1]`` (row 0 = top), or ``None``.
        to_world: ``(4, 4)`` float64 affine map from the source file's coordinates to the world frame (so that
            :meth:`source_vertices` restores the user's coordinates for export).
    """

    vertices: torch.Tensor
    faces: torch.Tensor
    vertex_normals: torch.Tensor
    uv: torch.Tensor | None = None
    texture: torch.Tensor | None = None
    to_world: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.vertices.ndim != 2 or self.vertices.shape[-1] != 3:
            raise ValueError(f"`vertices` must have shape (N, 3), got {tuple(self.vertices.shape)}.")
        if self.faces.ndim != 2 or self.faces.shape[-1] != 3:
            raise ValueError(f"`faces` must have shape (F, 3), got {tuple(self.faces.shape)}.")
        if self.vertex_normals.shape != self.vertices.shape:
            raise ValueError(
                f"`vertex_normals` must match `vertices` {tuple(self.vertices.shape)}, "
                f"got {tuple(self.vertex_normals.shape)}."
            )
        if self.uv is not None and self.uv.shape != (self.vertices.shape[0], 2):
            raise ValueError(f"`uv` must have shape ({self.vertices.shape[0]}, 2), got {tuple(self.uv.shape)}.")
        if self.to_world is None:
            self.to_world = torch.eye(4, dtype=torch.float64)

    @property
    def num_vertices(self) -> int:
        return self.vertices.shape[0]

    @property
    def num_faces(self) -> int:
        return self.faces.shape[0]

    @property
    def device(self) -> torch.device:
        return self.vertices.device

    def to(self, device: str | torch.device) -> Mesh:
        """A copy with every tensor (except ``to_world``) on ``device``."""
        move = {k: getattr(self, k) for k in ("vertices", "faces", "vertex_normals", "uv", "texture")}
        return replace(self, **{k: v.to(device) if v is not None else None for k, v in move.items()})

    def face_normals(self) -> torch.Tensor:
        """Unit geometric normals ``(F, 3)`` from the winding (zero for degenerate faces)."""
        tri = self.vertices[self.faces]
        n = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
        return n / n.norm(dim=-1, keepdim=True).clamp_min(1e-20)

    def source_vertices(self) -> torch.Tensor:
        """``(N, 3)`` float64 vertices in the source file's coordinates (inverse of ``to_world``)."""
        inv = torch.linalg.inv(self.to_world)
        v = self.vertices.detach().cpu().double()
        return v @ inv[:3, :3].T + inv[:3, 3]

    @classmethod
    def from_arrays(
        cls,
        vertices,
        faces,
        *,
        vertex_normals=None,
        uv=None,
        texture=None,
    ) -> Mesh:
        """A mesh from plain arrays, already in the world frame (no normalisation); normals computed if absent."""
        v = torch.as_tensor(np.asarray(vertices, dtype=np.float32))
        f = torch.as_tensor(np.asarray(faces, dtype=np.int64))
        if vertex_normals is None:
            vertex_normals = _area_weighted_normals(v, f)
        n = torch.as_tensor(np.asarray(vertex_normals, dtype=np.float32))
        uv_t = None if uv is None else torch.as_tensor(np.asarray(uv, dtype=np.float32))
        tex = None if texture is None else torch.as_tensor(np.asarray(texture, dtype=np.float32))
        return cls(v, f, n, uv_t, tex)


def _area_weighted_normals(v: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    tri = v[f]
    fn = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    n = torch.zeros_like(v).index_add_(0, f.reshape(-1), fn.repeat_interleave(3, dim=0))
    return n / n.norm(dim=-1, keepdim=True).clamp_min(1e-20)


def _read(path: Path):
    """``trimesh.Scene`` of a file, with one :class:`ValueError` per kind of bad file."""
    import trimesh

    ext = path.suffix.lower()
    if ext not in MESH_EXTENSIONS:
        raise ValueError(f"`mesh` must be one of {', '.join(MESH_EXTENSIONS)} files, got {path.name!r}.")
    if not path.is_file():
        raise ValueError(f"`mesh` file {str(path)!r} does not exist.")
    if path.stat().st_size == 0:
        raise ValueError(f"`mesh` file {path.name!r} is empty (0 bytes).")
    if ext == ".glb":
        with open(path, "rb") as fh:
            magic = fh.read(4)
        if magic != b"glTF":
            raise ValueError(
                f"`mesh` file {path.name!r} is not a binary glTF (.glb) file: it does not start with the 'glTF' magic "
                f"bytes (got {magic!r}); is it another file renamed?"
            )
    try:
        return trimesh.load_scene(str(path), file_type=ext[1:], process=False)
    except Exception as err:  # trimesh raises many kinds of errors on malformed files; one clear message instead
        raise ValueError(f"`mesh` file {path.name!r} could not be read as {ext}: {err}") from err


def _as_scene(source):
    import trimesh

    if isinstance(source, trimesh.Scene):
        return source
    if isinstance(source, trimesh.Trimesh):
        return trimesh.Scene(source.copy())
    if isinstance(source, (str, os.PathLike)):
        return _read(Path(source))
    raise TypeError(
        f"`mesh` must be a path to a {'/'.join(MESH_EXTENSIONS)} file, a trimesh.Trimesh or a trimesh.Scene, "
        f"got {type(source).__name__}."
    )


def _concatenate(scene, name: str):
    """All triangle meshes of ``scene`` with their transforms applied, as one ``trimesh.Trimesh``."""
    import trimesh

    parts = [g for g in scene.dump() if isinstance(g, trimesh.Trimesh)]
    with_faces = [g for g in parts if len(g.faces) > 0]
    if not with_faces:
        points = sum(len(getattr(g, "vertices", ())) for g in scene.geometry.values())
        if points == 0:
            raise ValueError(f"`mesh` {name} is empty: it holds no vertices and no faces.")
        raise ValueError(
            f"`mesh` {name} has no faces ({points} vertices only, e.g. a point cloud): nothing to render."
        )
    if len(with_faces) == 1:
        return with_faces[0]
    return trimesh.util.concatenate(with_faces)


def _texture_of(tm) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(uv (N, 2), base colour (H, W, 3) in [0, 1])`` of a trimesh mesh, each ``None`` when absent."""
    visual = getattr(tm, "visual", None)
    uv = getattr(visual, "uv", None)
    if uv is None or len(uv) != len(tm.vertices):
        return None, None
    uv = np.asarray(uv, dtype=np.float64)
    if not np.isfinite(uv).all():
        logger.warning("The mesh's UVs hold non-finite values; they are ignored (new UVs are made when baking).")
        return None, None
    material = getattr(visual, "material", None)
    image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
    texture = None
    if image is not None:
        texture = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return uv, texture


def load_mesh(
    mesh,
    *,
    rescale: bool = True,
    scale: float = 0.5,
    move_to_center: bool = False,
    up: str = "+y",
    front: str = "+x",
    max_faces: int = DEFAULT_MAX_FACES,
    device: str | torch.device | None = None,
) -> Mesh:
    """Load a mesh file (or trimesh object) into MV-Adapter's world frame.

    Args:
        mesh: a ``.obj`` / ``.glb`` / ``.gltf`` / ``.ply`` / ``.stl`` path, a ``trimesh.Trimesh`` or a
            ``trimesh.Scene`` (its parts are concatenated with their transforms applied).
        rescale: divide by the largest absolute coordinate and multiply by ``scale`` (official: on, 0.5).
        scale: half-size of the box the mesh is fitted into.
        move_to_center: subtract the vertex mean first (official default: off).
        up, front: the file's up and front axes (official: ``"+y"``, ``"+x"``), turned into world ``+z`` and ``+x``.
        max_faces: meshes with more faces are refused.
        device: where the returned tensors live.

    Raises:
        ValueError: one clear error for an unknown extension, a missing or empty (0 byte) file, a file that is not
            what its extension says (e.g. a text file renamed ``.glb``), a mesh without vertices, without faces (a
            point cloud), with non-finite or out-of-range values, with only zero-area faces, or above ``max_faces``.
    """
    if max_faces < 1:
        raise ValueError(f"`max_faces` must be >= 1, got {max_faces}.")
    if scale <= 0:
        raise ValueError(f"`scale` must be > 0, got {scale}.")
    name = repr(Path(mesh).name) if isinstance(mesh, (str, os.PathLike)) else f"({type(mesh).__name__})"
    tm = _concatenate(_as_scene(mesh), name)

    vertices = np.asarray(tm.vertices, dtype=np.float64)
    faces = np.asarray(tm.faces, dtype=np.int64)
    if len(faces) > max_faces:
        raise ValueError(
            f"`mesh` {name} has {len(faces):,} faces, more than `max_faces`={max_faces:,}: decimate it first "
            "or raise `max_faces`."
        )
    if not np.isfinite(vertices).all():
        bad = int((~np.isfinite(vertices)).any(axis=1).sum())
        raise ValueError(f"`mesh` {name} has {bad} vertices with non-finite (NaN or inf) coordinates.")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise ValueError(f"`mesh` {name} has face indices outside [0, {len(vertices) - 1}].")
    tri = vertices[faces]
    area = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=-1)
    if not (area > 0).any():
        raise ValueError(f"`mesh` {name} has {len(faces)} faces but all of them have zero area.")
    normals = np.asarray(tm.vertex_normals, dtype=np.float64)
    if normals.shape != vertices.shape or not np.isfinite(normals).all():
        normals = _area_weighted_normals(torch.from_numpy(vertices), torch.from_numpy(faces)).numpy()
    uv, texture = _texture_of(tm)

    # source -> world: (x - offset) * s, then the axis rotation (as the official load_mesh, in that order)
    offset = vertices.mean(axis=0) if move_to_center else np.zeros(3)
    centred = vertices - offset
    s = scale / np.abs(centred).max() if rescale else 1.0
    if not np.isfinite(s):
        raise ValueError(f"`mesh` {name} collapses to a single point: it cannot be rescaled.")
    rot = axis_rotation(up, front)
    to_world = np.eye(4)
    to_world[:3, :3] = rot * s
    to_world[:3, 3] = -(rot * s) @ offset
    world = centred * s @ rot.T
    normals = normals @ rot.T
    normals /= np.clip(np.linalg.norm(normals, axis=-1, keepdims=True), 1e-20, None)

    out = Mesh(
        vertices=torch.from_numpy(world.astype(np.float32)),
        faces=torch.from_numpy(faces),
        vertex_normals=torch.from_numpy(normals.astype(np.float32)),
        uv=None if uv is None else torch.from_numpy(uv.astype(np.float32)),
        texture=None if texture is None else torch.from_numpy(texture),
        to_world=torch.from_numpy(to_world),
    )
    return out.to(device) if device is not None else out
