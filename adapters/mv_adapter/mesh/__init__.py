"""MV-Adapter's 3D workflow on any machine: load a mesh, render its geometry maps, bake views into a texture.

``load`` (trimesh, the official unit box), ``cameras`` (the official geometry ring), ``raster`` (a torch z-buffer
rasteriser, nvdiffrast when available), ``maps`` (position / normal maps in the official conventions), ``texture``
(textured renders), ``uv`` (xatlas atlases), ``bake`` (views -> UV texture) and ``export`` (textured ``.glb``).
Needs ``trimesh`` (``pip install "diffusion-adapters[mesh]"``), imported only when a mesh is loaded or written.
"""

from .bake import BakeResult, bake_texture, fill_nearest, uv_rasterize
from .cameras import GEOMETRY_AZIMUTHS, GEOMETRY_ELEVATIONS, geometry_cameras
from .export import export_textured_mesh, texture_to_image
from .load import DEFAULT_MAX_FACES, MESH_EXTENSIONS, Mesh, axis_rotation, load_mesh
from .maps import GeometryMaps, render_geometry
from .raster import Rasterization, interpolate, nvdiffrast_available, project_points, rasterize, rasterize_screen
from .texture import render_texture, sample_texture
from .uv import ensure_uv, unwrap_uv, uv_problem, xatlas_available

__all__ = [
    "DEFAULT_MAX_FACES",
    "GEOMETRY_AZIMUTHS",
    "GEOMETRY_ELEVATIONS",
    "MESH_EXTENSIONS",
    "BakeResult",
    "GeometryMaps",
    "Mesh",
    "Rasterization",
    "axis_rotation",
    "bake_texture",
    "ensure_uv",
    "export_textured_mesh",
    "fill_nearest",
    "geometry_cameras",
    "interpolate",
    "load_mesh",
    "nvdiffrast_available",
    "project_points",
    "rasterize",
    "rasterize_screen",
    "render_geometry",
    "render_texture",
    "sample_texture",
    "texture_to_image",
    "unwrap_uv",
    "uv_problem",
    "uv_rasterize",
    "xatlas_available",
]
