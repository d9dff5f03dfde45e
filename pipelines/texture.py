"""Texture a user's mesh with MV-Adapter: a mesh file in, a textured ``.glb`` out, on any machine.

:func:`texture_mesh` runs the whole job in five timed stages:

1. **load**: read the mesh (``.obj`` / ``.glb`` / ``.gltf`` / ``.ply`` / ``.stl``) with trimesh and normalise it into
   MV-Adapter's unit box as the official scripts do (:func:`adapters.mv_adapter.mesh.load_mesh`); meshes above
   :data:`MAX_FACES` faces are refused.
2. **render**: position / normal maps and visibility masks of the mesh for the pipeline's cameras (torch rasteriser
   on CPU or GPU, nvdiffrast when present).
3. **generate**: the views, from a text prompt and/or a reference image. How depends on the loaded MV-Adapter
   (:func:`geometry_guided`):

   - a **geometry** adapter (official ``tg2mv`` / ``ig2mv``, ``condition="geometry"``) gets the rendered maps as its
     ``position_map`` / ``normal_map`` on the official geometry ring (front, right, back, left, top, bottom), so the
     views follow the mesh;
   - a **camera** adapter (``t2mv`` / ``i2mv``, ``condition="camera"``, e.g. the shipped embedded model) cannot read
     geometry maps: the views are plain text- or image-guided views on the pipeline's own camera ring. The bake only
     needs those cameras; since the views do not follow the mesh, the mesh is first scaled about the origin so that
     its silhouette matches the generated object's (the median over views of the square root of the foreground-area
     ratio) and moved so that the silhouettes' centroids match (``fit``, :func:`fit_to_views`). Colours land roughly
     where the generated object shows them; parts of the mesh the object does not cover get its nearest colours.

4. **bake**: every texel of the UV atlas (the mesh's own UVs when they can hold a bake, else a new ``xatlas`` atlas)
   blends the views that see it, weighted by ``cos^3`` of the view angle and a visibility test; texels that no view
   sees are filled by nearest-texel dilation (:func:`adapters.mv_adapter.mesh.bake_texture`).
5. **export**: the textured ``.glb`` (in the source file's coordinates, so it lines up with the input), the texture
   PNG, the views, the maps and a ``result.json`` with the stage timings.

Files are never overwritten: every file of one run shares a suffix chosen so that none of them exists yet
(``textured.glb``, then ``textured-2.glb``, ``textured-3.glb`` ... with the matching ``texture-2.png``, ``views-2/``
...). A run never writes into a folder that holds a previous run's files under the same name.

Example::

    from pipelines.embedded import load_embedded
    from pipelines.texture import texture_mesh, texture_model

    pipe = load_embedded(texture_model())  # "mv_geometry" (geometry-guided) when shipped, else "mv"
    result = texture_mesh(pipe, "model.glb", prompt="a red cube", output_dir="out/texture")
    result.glb, result.timings  # Path('out/texture/textured.glb'), {'load': 0.01, 'render': ..., ...}
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers.utils import logging

from adapters.mv_adapter.camera import Cameras
from adapters.mv_adapter.mesh import (
    MESH_EXTENSIONS,
    GeometryMaps,
    Mesh,
    bake_texture,
    export_textured_mesh,
    geometry_cameras,
    load_mesh,
    rasterize,
    render_geometry,
)

from .tasks import TaskSpec, call_pipeline, check_size, load_image, make_generator, native_resolution

logger = logging.get_logger(__name__)

__all__ = [
    "EXAMPLE_MESHES",
    "FALLBACK_NOTE",
    "MAX_FACES",
    "STAGES",
    "TEXTURE_TASK",
    "TextureResult",
    "adapter_condition",
    "example_meshes",
    "example_reference",
    "fit_to_views",
    "geometry_guided",
    "read_mesh",
    "split_sharp_edges",
    "texture_cameras",
    "texture_mesh",
    "texture_model",
    "texture_task",
    "write_example_meshes",
]

#: Largest mesh (faces) the texture job takes from the CLI and the web demo (the rasteriser handles 100k faces at
#: 768 px in seconds on a CPU; far larger meshes should be decimated first). ``texture_mesh(max_faces=...)`` raises it.
MAX_FACES = 500_000
#: The timed stages of :func:`texture_mesh`, in order.
STAGES = ("load", "render", "generate", "bake", "export")
#: The demo task (web tab and CLI subcommand ``texture``) on the ``mv`` embedded model; :func:`texture_task` is the
#: same task on the model it runs on (the geometry-guided ``mv_geometry`` when shipped).
TEXTURE_TASK = TaskSpec("texture", "Texture a mesh", "mv", "pipelines.texture")
#: Said in the log and on the page when the texture task runs on the camera-conditioned ``mv`` model.
FALLBACK_NOTE = (
    "No geometry-guided embedded MV-Adapter (assets/mv_adapter_geometry/ is absent): texturing with the "
    "camera-conditioned 'mv' model, whose views are not guided by the mesh (the mesh is fitted to their silhouettes)."
)

#: Example meshes: the mini-world's primitives (``training/miniworld/scene.py``: sphere radius 1, cube half-side 0.8,
#: cone of base radius 1 from z = -1 to apex z = 1, torus ring radius 0.75 and tube 0.3, tilted so its hole shows),
#: name -> (shape, prompt). Written by :func:`write_example_meshes`.
EXAMPLE_MESHES: dict[str, tuple[str, str]] = {
    "red_cube": ("cube", "a red cube"),
    "blue_sphere": ("sphere", "a blue sphere"),
    "yellow_cone": ("cone", "a yellow cone"),
    "green_torus": ("torus", "a green torus"),
}
_TORUS_TILT_DEG = 60.0
#: Dihedral angle (degrees) above which an example mesh's edge is sharp (:func:`split_sharp_edges`): the cube's 90,
#: the cone's rim (about 117) and apex are above it, neighbouring faces of the round primitives (<= 23) below.
CREASE_DEG = 45.0
#: The reference image of example ``<name>`` for image-guided texturing: ``assets/examples/<name>_texture_ref.png``,
#: the front view of the mesh's scene in the official unit box as the geometry adapter's trainer renders its
#: reference (``training.miniworld.export.texture_reference``).
TEXTURE_REFERENCE = "{name}_texture_ref.png"


@dataclass
class TextureResult:
    """What :func:`texture_mesh` made.

    Attributes:
        mesh: the textured mesh in MV-Adapter's world frame (z up), with the UVs used and ``texture`` set.
        texture: the baked texture as an RGB image (``T x T``).
        views: the ``V`` generated views (RGB images, ``H x W``).
        cameras: the ``V`` cameras of the views.
        maps: the mesh's geometry maps for those cameras (``(V, H, W, 3)`` position / normal, ``(V, H, W)`` mask).
        geometry_guided: True when the views were generated from the maps (a geometry adapter), False for plain
            text / image-guided views on the camera ring.
        mesh_scale, mesh_offset: the silhouette fit applied to the mesh (world frame) before baking
            (:func:`fit_to_views`; ``1.0`` and zeros: none).
        coverage: share of the UV atlas's texels that at least one view saw (the rest are filled).
        seed: the seed used.
        timings: seconds per stage (:data:`STAGES`), plus ``"total"``.
        files: ``{"glb", "texture", "result", "views", "maps"}`` -> the written paths (``views`` / ``maps``: lists);
            empty when no ``output_dir`` was given.
    """

    mesh: Mesh
    texture: PIL.Image.Image
    views: list[PIL.Image.Image]
    cameras: Cameras
    maps: GeometryMaps
    geometry_guided: bool
    mesh_scale: float
    mesh_offset: tuple[float, float, float]
    coverage: float
    seed: int
    timings: dict[str, float] = field(default_factory=dict)
    files: dict[str, Any] = field(default_factory=dict)

    @property
    def glb(self) -> Path | None:
        """The textured ``.glb`` (``None`` without ``output_dir``)."""
        return self.files.get("glb")

    def file_list(self) -> list[Path]:
        """Every written file, the ``.glb`` first."""
        out: list[Path] = []
        for key in ("glb", "texture", "views", "maps", "result"):
            value = self.files.get(key)
            if value is not None:
                out.extend(value if isinstance(value, list) else [value])
        return out

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary (what ``result.json`` holds)."""
        return {
            "task": "texture",
            "files": [str(p) for p in self.file_list()],
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
            "seconds": round(self.timings.get("total", 0.0), 3),
            "geometry_guided": self.geometry_guided,
            "mesh_scale": round(self.mesh_scale, 4),
            "mesh_offset": [round(float(x), 4) for x in self.mesh_offset],
            "coverage": round(self.coverage, 4),
            "num_views": len(self.views),
            "num_faces": self.mesh.num_faces,
            "texture_size": self.texture.width,
            "seed": self.seed,
        }


# ----------------------------------------------------------------------------------------------------------------------
# pieces
# ----------------------------------------------------------------------------------------------------------------------


def geometry_guided(pipe: Any) -> bool:
    """Whether ``pipe``'s MV-Adapter generates views from position / normal maps (``condition="geometry"``)."""
    adapter = getattr(pipe, "mv_adapter", None)
    return adapter is not None and getattr(adapter.config, "condition", "camera") == "geometry"


def texture_model() -> str:
    """The embedded model the texture task runs on: ``"mv_geometry"`` (the geometry-guided MV-Adapter, views that
    follow the mesh's maps) when ``assets/mv_adapter_geometry/`` holds one, else ``"mv"`` (the camera-conditioned
    MV-Adapter: plain views on its ring, the mesh fitted to them; :data:`FALLBACK_NOTE`)."""
    from .embedded import embedded_info

    return "mv_geometry" if embedded_info("mv_geometry").parts.get("mv_adapter_geometry") else "mv"


def texture_task() -> TaskSpec:
    """:data:`TEXTURE_TASK` on the model :func:`texture_model` picks."""
    return replace(TEXTURE_TASK, model=texture_model())


def adapter_condition(adapter: str | os.PathLike | None = None) -> str | None:
    """The condition (``"camera"`` or ``"geometry"``) an MV-Adapter file was saved with, read from its safetensors
    metadata without loading it; ``None`` when unknown (a hub id, a file without our metadata).

    Args:
        adapter: a ``.safetensors`` file or a folder holding ``mv_adapter.safetensors``; ``None``: the adapter of
            the embedded model the texture task runs on (:func:`texture_model`).
    """
    if adapter is None:
        from .embedded import embedded_info

        model = texture_model()
        adapter = embedded_info(model).parts.get("mv_adapter_geometry" if model == "mv_geometry" else "mv_adapter")
        if adapter is None:
            return None
    path = Path(adapter)
    if path.is_dir():
        path = path / "mv_adapter.safetensors"
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            config = json.loads((handle.metadata() or {}).get("diffusion_adapters.mv_config", "{}"))
    except (OSError, ValueError) as err:  # not a safetensors file / unreadable metadata: unknown
        logger.debug(f"No MV-Adapter config in {path}: {err}")
        return None
    condition = config.get("condition")
    return condition if condition in ("camera", "geometry") else None


def texture_cameras(pipe: Any, num_views: int | None = None) -> tuple[Cameras, bool]:
    """The cameras the views are generated and baked from, and whether they come with geometry guidance.

    A geometry adapter: the official geometry ring (:func:`adapters.mv_adapter.mesh.geometry_cameras`; 6 views are
    front, right, back, left, top, bottom). A camera adapter: the pipeline's own ring (``pipe.prepare_cameras``, the
    ring it generates by default). ``num_views`` defaults to the adapter's.
    """
    adapter = getattr(pipe, "mv_adapter", None)
    if adapter is None:
        raise ValueError("Texturing needs an MV-Adapter: load one (`load_mv_adapter`) or use `load_embedded('mv')`.")
    if num_views is None:
        num_views = int(adapter.config.num_views)
    if isinstance(num_views, bool) or not isinstance(num_views, (int, np.integer)) or not 1 <= num_views <= 12:
        raise ValueError(f"`num_views` must be an integer between 1 and 12, got {num_views!r}.")
    if getattr(adapter.config, "attention_mode", None) == "row_col" and num_views != 6:
        raise ValueError(f"This adapter's 'row_col' attention needs `num_views` = 6, got {num_views}.")
    if geometry_guided(pipe):
        return geometry_cameras(int(num_views)), True
    return pipe.prepare_cameras(int(num_views), None, None, None, None, None), False


def read_mesh(source: Any, *, max_faces: int = MAX_FACES, name: str = "mesh", device: Any = None) -> Mesh:
    """Load a mesh for texturing (:func:`adapters.mv_adapter.mesh.load_mesh`, the official unit box).

    Args:
        source: a path (``.obj`` / ``.glb`` / ``.gltf`` / ``.ply`` / ``.stl``), a ``trimesh`` object or a loaded
            :class:`~adapters.mv_adapter.mesh.Mesh` (returned as is, after the face-count check).
        max_faces: larger meshes are refused.
        name: how error messages name the input (e.g. ``"--mesh"`` on the command line).

    Raises:
        ValueError: one sentence per kind of bad mesh: unknown extension, missing or empty (0 byte) file, a file that
            is not what its extension says (e.g. a text file renamed ``.glb``), no vertices, no faces (a point cloud),
            non-finite coordinates, only zero-area faces, more than ``max_faces`` faces. Non-manifold meshes are
            accepted.
    """
    if isinstance(max_faces, bool) or not isinstance(max_faces, (int, np.integer)) or max_faces < 1:
        raise ValueError(f"`max_faces` must be an integer >= 1, got {max_faces!r}.")
    if source is None or (isinstance(source, str) and not source.strip()):
        raise ValueError(f"`{name}` is missing: give a {'/'.join(MESH_EXTENSIONS)} file.")
    if isinstance(source, Mesh):
        if source.num_faces > max_faces:
            raise ValueError(
                f"`{name}` has {source.num_faces:,} faces, more than the limit of {max_faces:,}: decimate it first."
            )
        return source if device is None else source.to(device)
    try:
        return load_mesh(source, max_faces=int(max_faces), device=device)
    except (ValueError, TypeError) as err:
        message = str(err)
        if name != "mesh":  # the CLI / app: name their input, and the limit without the Python argument
            message = message.replace("`mesh`", f"`{name}`").replace("`max_faces`=", "the limit of ")
            message = message.replace(" or raise `max_faces`", "")
        raise type(err)(message) from None


def _foreground(views: np.ndarray, threshold: float) -> np.ndarray:
    """``(V, H, W)`` bool: pixels that differ from their row's background colour, estimated from the two leftmost and
    two rightmost pixels of the row (the mini-world and the official renders use flat or vertical-gradient grounds)."""
    border = np.concatenate([views[:, :, :2], views[:, :, -2:]], axis=2)  # (V, H, 4, 3)
    background = np.median(border, axis=2, keepdims=True)
    return np.abs(views - background).max(axis=-1) > threshold


def fit_to_views(
    mesh: Mesh,
    views: np.ndarray,
    cameras: Cameras,
    *,
    threshold: float = 0.1,
    scale_limits: tuple[float, float] = (0.1, 1.1),
    max_offset: float = 0.3,
) -> tuple[float, np.ndarray]:
    """Scale and offset that move ``mesh`` onto the objects in ``views`` (for views not generated from its geometry).

    Foreground pixels of each view are those whose colour differs from the row's background (estimated from the
    row's two leftmost and two rightmost pixels) by more than ``threshold`` in some channel. The scale (about the
    origin) is the median over views of ``sqrt(foreground pixels / pixels the mesh covers)``, clipped to
    ``scale_limits`` and so that the mesh stays inside the cameras' ``[-0.55, 0.55]`` box. The offset (orthographic
    cameras only) is the world translation whose projection best matches, in the least-squares sense, each view's
    foreground centroid minus the scaled mesh's, each component clipped to ``max_offset``.

    Args:
        mesh: the loaded mesh (world frame).
        views: ``(V, H, W, 3)`` float views in ``[0, 1]``.
        cameras: their ``V`` cameras.

    Returns:
        ``(scale, offset (3,))``; ``(1.0, zeros(3))`` when no view shows a foreground.
    """
    views = np.asarray(views, dtype=np.float32)
    if views.ndim != 4 or views.shape[-1] != 3 or views.shape[0] != len(cameras):
        raise ValueError(f"`views` must have shape ({len(cameras)}, H, W, 3), got {views.shape}.")
    num, height, width = views.shape[:3]
    mask = rasterize(mesh.vertices, mesh.faces, cameras, height, width).mask.cpu().numpy()
    fg = _foreground(views, threshold)
    fg_area, mesh_area = fg.reshape(num, -1).sum(1), mask.reshape(num, -1).sum(1)
    used = (fg_area > 0) & (mesh_area > 0)
    if not used.any():
        logger.warning("No object found in the generated views: the mesh is baked as it is.")
        return 1.0, np.zeros(3)
    extent = float(mesh.vertices.abs().max())
    high = min(scale_limits[1], 0.55 / extent) if extent > 0 else scale_limits[1]
    scale = float(np.clip(np.median(np.sqrt(fg_area[used] / mesh_area[used])), scale_limits[0], high))
    offset = np.zeros(3)
    if cameras.orthographic:
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5

        def centroid(m: np.ndarray) -> np.ndarray:  # (2,) image-plane offset from the centre, world units
            return np.array([xx[m].mean() - width / 2.0, yy[m].mean() - height / 2.0])

        rows, rhs = [], []
        c2w = cameras.c2w.numpy()
        for v in np.flatnonzero(used):
            pixel = float(cameras.ortho_scale[v]) / height
            shift = (centroid(fg[v]) - scale * centroid(mask[v])) * pixel
            rows += [c2w[v, :3, 0], c2w[v, :3, 1]]  # the camera's right and down axes (OpenCV)
            rhs += [shift[0], shift[1]]
        offset = np.linalg.lstsq(np.stack(rows), np.asarray(rhs), rcond=None)[0]
        offset = np.clip(offset, -max_offset, max_offset)
    return scale, offset


def _moved(mesh: Mesh, scale: float, offset: np.ndarray) -> Mesh:
    """``mesh`` scaled about the origin then shifted by ``offset``; ``to_world`` follows, so the export keeps the
    source coordinates."""
    if scale == 1.0 and not np.any(offset):
        return mesh
    move = torch.eye(4, dtype=torch.float64)
    move[:3, :3] *= scale
    move[:3, 3] = torch.as_tensor(offset, dtype=torch.float64)
    vertices = mesh.vertices * scale + torch.as_tensor(offset, dtype=mesh.vertices.dtype, device=mesh.device)
    return Mesh(vertices, mesh.faces, mesh.vertex_normals, mesh.uv, mesh.texture, move @ mesh.to_world)


def _reference(image: Any, height: int, width: int) -> PIL.Image.Image:
    """The reference image prepared as the image-to-multi-view task does (RGBA centred on gray, else cover-crop)."""
    from .tasks import _reference_image  # one preparation for every MV task

    return _reference_image(load_image(image, name="image", keep_alpha=True), height, width)


def _free_suffix(folder: Path, names: Sequence[str]) -> str:
    """``""``, ``"-2"``, ``"-3"`` ...: the first suffix with which none of ``names`` (stems, suffix inserted before the
    extension) exists in ``folder``."""
    for n in range(1, 10_000):
        suffix = "" if n == 1 else f"-{n}"
        if not any((folder / _with_suffix(name, suffix)).exists() for name in names):
            return suffix
    raise ValueError(f"`output_dir` {str(folder)!r} holds too many previous runs; choose another folder.")


def _with_suffix(name: str, suffix: str) -> str:
    stem, dot, ext = name.partition(".")
    return f"{stem}{suffix}{dot}{ext}"


_OUTPUT_NAMES = ("textured.glb", "texture.png", "views", "maps", "result.json")


def _check_output_dir(output_dir: Any) -> Path | None:
    if output_dir is None:
        return None
    if not isinstance(output_dir, (str, os.PathLike)) or not str(output_dir).strip():
        raise ValueError(f"`output_dir` must be a folder path, got {output_dir!r}.")
    folder = Path(output_dir).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"`output_dir` {str(folder)!r} is a file, not a folder.")
    return folder


def _export(result: TextureResult, folder: Path) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    suffix = _free_suffix(folder, _OUTPUT_NAMES)
    glb = folder / _with_suffix("textured.glb", suffix)
    with open(glb, "xb"):  # reserve the name: a concurrent run picks the next suffix instead of overwriting
        pass
    png = folder / _with_suffix("texture.png", suffix)
    export_textured_mesh(result.mesh, glb, texture=result.texture, texture_path=png)
    views_dir = folder / f"views{suffix}"
    maps_dir = folder / f"maps{suffix}"
    views_dir.mkdir()
    maps_dir.mkdir()
    view_files = []
    for i, view in enumerate(result.views):
        path = views_dir / f"view_{i:02d}.png"
        view.save(path)
        view_files.append(path)
    map_files = []
    for kind, images in (
        ("position", result.maps.position_images()),
        ("normal", result.maps.normal_images()),
        ("mask", result.maps.mask_images()),
    ):
        for i, image in enumerate(images):
            path = maps_dir / f"{kind}_{i:02d}.png"
            image.save(path)
            map_files.append(path)
    return {
        "glb": glb,
        "texture": png,
        "views": view_files,
        "maps": map_files,
        "result": folder / _with_suffix("result.json", suffix),
    }


def _as_float(name: str, value: Any, low: float, high: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(float(value)):
        raise ValueError(f"`{name}` must be a number between {low:g} and {high:g}, got {value!r}.")
    if not low <= float(value) <= high:
        raise ValueError(f"`{name}` must be between {low:g} and {high:g}, got {value}.")
    return float(value)


# ----------------------------------------------------------------------------------------------------------------------
# the job
# ----------------------------------------------------------------------------------------------------------------------


def texture_mesh(
    pipe: Any,
    mesh: Any,
    prompt: str = "",
    *,
    image: Any = None,
    negative_prompt: str = "",
    num_views: int | None = None,
    height: int | None = None,
    width: int | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    reference_guidance_scale: float | None = None,
    seed: int = 0,
    texture_size: int | None = None,
    fit: bool | None = None,
    max_faces: int = MAX_FACES,
    output_dir: str | os.PathLike | None = None,
    backend: str = "auto",
    progress: Callable[[float, str], None] | None = None,
) -> TextureResult:
    """Texture ``mesh`` with the MV-Adapter pipeline ``pipe`` (see the module docstring for the stages).

    Args:
        pipe: an :class:`~pipelines.auto_pipeline.MVAdapterPipeline` with an adapter (e.g.
            ``load_embedded("mv")``); a geometry adapter (``tg2mv`` / ``ig2mv``) follows the mesh, a camera adapter
            (``t2mv`` / ``i2mv``) textures from plain views on its ring (:func:`geometry_guided`).
        mesh: a ``.obj`` / ``.glb`` / ``.gltf`` / ``.ply`` / ``.stl`` path, a ``trimesh`` object or a loaded
            :class:`~adapters.mv_adapter.mesh.Mesh` (see :func:`read_mesh` for the errors).
        prompt: what the texture shows; required without ``image``.
        image: a reference image (path or PIL image; RGBA objects are centred on gray) for image-guided views; needs
            an adapter with a reference branch.
        negative_prompt: ``""``: the pipeline's default.
        num_views: views to generate (default: the adapter's; a ``row_col`` geometry adapter needs 6).
        height, width: view size; ``None``: the model's stored default, else its native size.
        num_inference_steps, guidance_scale, reference_guidance_scale: ``None``: the model's stored defaults
            (``pipeline_defaults.json``), else the pipeline's.
        seed: noise seed (a CPU generator: the same views on any device).
        texture_size: side of the square texture; ``None``: 8x the view side, between 256 and 1024.
        fit: scale and move the mesh onto the generated object's silhouette before baking (:func:`fit_to_views`);
            ``None``: on
            exactly when the views are not geometry-guided.
        max_faces: larger meshes are refused (default :data:`MAX_FACES`).
        output_dir: folder for ``textured.glb``, ``texture.png``, ``views/``, ``maps/`` and ``result.json`` (created);
            existing files are never overwritten: the run's names take the first free suffix (``-2``, ``-3`` ...).
            ``None``: nothing is written.
        backend: rasteriser backend (``"auto"``, ``"torch"`` or ``"nvdiffrast"``).
        progress: ``fn(fraction, description)`` called as each stage starts.

    Returns:
        A :class:`TextureResult`; ``timings`` holds the seconds of each stage (also logged).

    Raises:
        ValueError: a bad argument or mesh, named, before any model work.
    """
    start = time.perf_counter()
    if not isinstance(prompt, str):
        raise ValueError(f"`prompt` must be a string, got {type(prompt).__name__}.")
    if len(prompt) > 2000:
        raise ValueError(f"`prompt` is too long: {len(prompt)} characters, the limit is 2000.")
    if image is None and not prompt.strip():
        raise ValueError("`prompt` is empty: describe the texture, or give a reference `image`.")
    if num_inference_steps is not None and (
        isinstance(num_inference_steps, bool)
        or not isinstance(num_inference_steps, (int, np.integer))
        or not 1 <= num_inference_steps <= 150
    ):
        raise ValueError(f"`num_inference_steps` must be an integer between 1 and 150, got {num_inference_steps!r}.")
    guidance_scale = _as_float("guidance_scale", guidance_scale, 0, 30)
    reference_guidance_scale = _as_float("reference_guidance_scale", reference_guidance_scale, 0, 30)
    if texture_size is not None and (
        isinstance(texture_size, bool)
        or not isinstance(texture_size, (int, np.integer))
        or not 16 <= texture_size <= 4096
    ):
        raise ValueError(f"`texture_size` must be an integer between 16 and 4096, got {texture_size!r}.")
    generator = make_generator(seed)
    folder = _check_output_dir(output_dir)
    cameras, guided = texture_cameras(pipe, num_views)
    adapter = pipe.mv_adapter
    if image is not None and not adapter.config.use_ref:
        raise ValueError("`image` was given but this MV-Adapter has no reference branch (load an i2mv / ig2mv one).")
    given = {"image"} if image is not None else set()
    from .call_defaults import stored_default

    native = native_resolution(pipe)
    height = stored_default(pipe, "height", given, fallback=native) if height is None else height
    width = stored_default(pipe, "width", given, fallback=native) if width is None else width
    height, width = check_size(pipe, height, width)
    reference = _reference(image, height, width) if image is not None else None
    if texture_size is None:
        texture_size = int(min(1024, max(256, 8 * max(height, width))))
    fit = (not guided) if fit is None else bool(fit)

    timings: dict[str, float] = {}

    @contextmanager
    def stage(name: str, description: str) -> Iterator[None]:
        if progress is not None:
            progress(STAGES.index(name) / len(STAGES), description)
        t0 = time.perf_counter()
        yield
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0
        logger.info("texture: %s %.3f s", name, time.perf_counter() - t0)

    device = getattr(pipe, "_execution_device", torch.device("cpu"))
    with stage("load", "Loading the mesh"):
        loaded = read_mesh(mesh, max_faces=max_faces, device=device if torch.device(device).type == "cuda" else None)
    maps = None
    if guided:
        with stage("render", "Rendering position and normal maps"):
            maps = render_geometry(loaded, cameras, height, width, backend=backend)
    with stage("generate", "Generating the views"):
        geometry = {}
        if maps is not None:
            geometry = {"position_map": maps.position.cpu().numpy(), "normal_map": maps.normal.cpu().numpy()}
        else:
            geometry = {"cameras": cameras}
        out = call_pipeline(
            pipe,
            prompt=prompt,
            image=reference,
            negative_prompt=negative_prompt if negative_prompt and negative_prompt.strip() else None,
            num_views=len(cameras),
            height=height,
            width=width,
            num_inference_steps=None if num_inference_steps is None else int(num_inference_steps),
            guidance_scale=guidance_scale,
            reference_guidance_scale=reference_guidance_scale,
            generator=generator,
            output_type="np",
            **geometry,
        )
        views = np.asarray(out.images, dtype=np.float32).reshape(len(cameras), height, width, 3)
    scale, offset = 1.0, np.zeros(3)
    if maps is None:
        with stage("render", "Rendering the mesh for the views"):
            if fit:
                scale, offset = fit_to_views(loaded, views, cameras)
                loaded = _moved(loaded, scale, offset)
            maps = render_geometry(loaded, cameras, height, width, backend=backend)
    with stage("bake", "Baking the views into a texture"):
        baked = bake_texture(loaded, views, cameras, texture_size=texture_size, backend=backend)
    view_images = [PIL.Image.fromarray((np.clip(v, 0, 1) * 255).round().astype(np.uint8)) for v in views]
    result = TextureResult(
        mesh=baked.mesh,
        texture=baked.texture_image(),
        views=view_images,
        cameras=cameras,
        maps=maps,
        geometry_guided=guided,
        mesh_scale=scale,
        mesh_offset=(float(offset[0]), float(offset[1]), float(offset[2])),
        coverage=baked.coverage,
        seed=int(seed),
        timings=timings,
    )
    if folder is not None:
        with stage("export", "Writing the textured mesh"):
            result.files = _export(result, folder)
    else:
        timings["export"] = 0.0
    timings["total"] = time.perf_counter() - start
    result.timings = {name: timings.get(name, 0.0) for name in (*STAGES, "total")}
    if folder is not None:
        result.files["result"].write_text(json.dumps(result.summary(), indent=2) + "\n", encoding="utf-8")
    logger.info(
        "texture: %d views (%s), coverage %.0f%%, %s",
        len(view_images),
        "geometry-guided" if guided else "camera ring, unguided",
        100 * result.coverage,
        ", ".join(f"{k} {v:.2f} s" for k, v in result.timings.items()),
    )
    return result


# ----------------------------------------------------------------------------------------------------------------------
# example meshes
# ----------------------------------------------------------------------------------------------------------------------


def _primitive(shape: str):
    """A trimesh of a mini-world primitive in its local frame (z up), sized as ``training/miniworld/scene.py``."""
    import trimesh

    if shape == "cube":
        return trimesh.creation.box(extents=(1.6, 1.6, 1.6))
    if shape == "sphere":
        return trimesh.creation.icosphere(subdivisions=3, radius=1.0)
    if shape == "cone":
        cone = trimesh.creation.cone(radius=1.0, height=2.0, sections=48)
        cone.apply_translation((0.0, 0.0, -1.0))
        return cone
    if shape == "torus":
        torus = trimesh.creation.torus(major_radius=0.75, minor_radius=0.3, major_sections=48, minor_sections=16)
        torus.apply_transform(trimesh.transformations.rotation_matrix(math.radians(_TORUS_TILT_DEG), (1, 0, 0)))
        return torus
    raise ValueError(f"`shape` must be one of cube, sphere, cone, torus, got {shape!r}.")


def split_sharp_edges(mesh, crease_deg: float = CREASE_DEG):
    """``mesh`` with its vertices split across sharp edges and explicit vertex normals (a ``trimesh.Trimesh``).

    Each face corner takes the area-weighted mean normal of the faces around its vertex whose normal is within
    ``crease_deg`` of its own face's; corners of one vertex with the same normal share a vertex. Flat faces meeting
    at a crease (a cube's edges, a cone's rim and apex) so get flat normals on each side, while finely tessellated
    curved surfaces (sphere, torus, a cone's side) keep smooth ones, as the mini-world's ray caster shades them.

    Args:
        mesh: a ``trimesh.Trimesh`` with ``F`` faces.
        crease_deg: dihedral angle in degrees above which an edge is sharp, in ``(0, 180)``.

    Returns:
        A new ``trimesh.Trimesh`` with the same ``F`` faces (same order and winding) over up to ``3 F`` vertices,
        ``vertex_normals`` ``(N, 3)`` unit vectors set (written to the file by glTF export).
    """
    import trimesh

    if not 0.0 < float(crease_deg) < 180.0:
        raise ValueError(f"`crease_deg` must be in (0, 180), got {crease_deg!r}.")
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    tri = vertices[faces]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # (F, 3), |cross| = 2 * area
    unit = cross / np.clip(np.linalg.norm(cross, axis=1, keepdims=True), 1e-30, None)
    cos_crease = math.cos(math.radians(float(crease_deg)))
    incident: list[list[int]] = [[] for _ in range(len(vertices))]
    for f, corners in enumerate(faces):
        for v in corners:
            incident[v].append(f)
    new_vertices: list[np.ndarray] = []
    new_normals: list[np.ndarray] = []
    new_faces = np.empty_like(faces)
    for v, around in enumerate(incident):
        around_idx = np.asarray(around, dtype=np.int64)
        seen: dict[tuple[float, ...], int] = {}
        for f in around:
            near = around_idx[unit[around_idx] @ unit[f] >= cos_crease]
            normal = cross[near].sum(axis=0)
            normal /= max(float(np.linalg.norm(normal)), 1e-30)
            key = tuple(np.round(normal, 9))
            if key not in seen:
                seen[key] = len(new_vertices)
                new_vertices.append(vertices[v])
                new_normals.append(normal)
            new_faces[f, list(faces[f]).index(v)] = seen[key]
    return trimesh.Trimesh(
        vertices=np.asarray(new_vertices), faces=new_faces, vertex_normals=np.asarray(new_normals), process=False
    )


def write_example_meshes(folder: str | os.PathLike, names: Sequence[str] | None = None) -> list[Path]:
    """Write the example meshes (:data:`EXAMPLE_MESHES`) as ``<name>.glb`` (glTF frame: y up, the object facing +z).

    Vertices are split across sharp edges, with their normals written to the file (:func:`split_sharp_edges`): the
    cube's faces and the cone's base are flat-shaded, the sphere, the torus and the cone's side smooth. The shipped
    files are written by the ``examples`` recipe (``python -m training.reproduce examples``, through
    ``training.miniworld.export --kind examples``), or alone with::

        python -c "from pipelines.texture import write_example_meshes; write_example_meshes('assets/examples')"

    Existing files are kept (not overwritten). Returns the paths.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    to_file = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]], dtype=np.float64)  # z-up -> y-up
    paths = []
    for name in names or EXAMPLE_MESHES:
        shape, _ = EXAMPLE_MESHES[name]
        path = folder / f"{name}.glb"
        if not path.exists():
            tm = _primitive(shape)
            tm.apply_transform(to_file)
            split_sharp_edges(tm).export(str(path), file_type="glb")
        paths.append(path)
    return paths


def example_meshes() -> list[tuple[Path, str]]:
    """``(mesh path, prompt)`` of the example meshes: the shipped ``assets/examples/<name>.glb``, else written once
    into the embedded models' cache folder."""
    from .embedded import assets_dir

    shipped = assets_dir() / "examples"
    if all((shipped / f"{name}.glb").is_file() for name in EXAMPLE_MESHES):
        folder = shipped
    else:
        from .embedded import _cache_dir  # the embedded models' cache folder (as example_entries uses)

        folder = _cache_dir() / "example_meshes"
        write_example_meshes(folder)
    return [(folder / f"{name}.glb", prompt) for name, (_, prompt) in EXAMPLE_MESHES.items()]


def example_reference(mesh_path: str | os.PathLike) -> Path | None:
    """The reference image shipped next to example mesh ``<name>.glb`` (:data:`TEXTURE_REFERENCE`), or ``None``."""
    path = Path(mesh_path)
    ref = path.with_name(TEXTURE_REFERENCE.format(name=path.stem))
    return ref if ref.is_file() else None
