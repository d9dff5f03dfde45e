"""Mini-world scenes as triangle meshes: what a user's mesh file of the same scene would hold.

:func:`object_mesh` is one primitive of :mod:`training.miniworld.scene` in the world frame (z up), with the local
geometry the ray caster intersects (sphere radius 1, cube half-side 0.8, cylinder radius 0.8 and half-height 0.9,
cone of base radius 1 from z = -1 to the apex at z = 1, torus ring radius 0.75 and tube 0.3 in the local xy plane),
then the object's tilt / yaw (:meth:`~training.miniworld.scene.ObjectSpec.rotation`), size and position.
:func:`scene_mesh` joins a scene's objects; :func:`export_scene_glb` writes it as a ``.glb`` in the glTF frame (y up,
the object facing +z), the same transform ``pipelines.texture.write_example_meshes`` uses for the shipped example
meshes, so :func:`adapters.mv_adapter.mesh.load_mesh` reads it back into the scene's world frame and the official unit
box (``MultiViewDataset(normalize=True)`` renders the same scene in that box).

Polygon counts are kept small (a few thousand faces per scene) so that an ``xatlas`` atlas takes about a second.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .scene import ObjectSpec, Scene

__all__ = ["GLTF_FROM_WORLD", "export_scene_glb", "object_mesh", "scene_mesh"]

#: World frame (z up) -> glTF frame (y up, the object facing +z), as the shipped example meshes are written.
GLTF_FROM_WORLD = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]], dtype=np.float64)


def _local(shape: str, sections: int) -> Any:
    """The primitive ``shape`` in its local frame (before rotation, scale and position), as a trimesh."""
    import trimesh

    if shape == "cube":
        return trimesh.creation.box(extents=(1.6, 1.6, 1.6))
    if shape == "sphere":
        return trimesh.creation.icosphere(subdivisions=3, radius=1.0)
    if shape == "cylinder":
        return trimesh.creation.cylinder(radius=0.8, height=1.8, sections=sections)
    if shape == "cone":
        cone = trimesh.creation.cone(radius=1.0, height=2.0, sections=sections)
        cone.apply_translation((0.0, 0.0, -1.0))
        return cone
    if shape == "torus":
        return trimesh.creation.torus(
            major_radius=0.75, minor_radius=0.3, major_sections=sections, minor_sections=max(8, sections // 3)
        )
    raise ValueError(f"`shape` must be one of cube, sphere, cylinder, cone, torus, got {shape!r}.")


def object_mesh(obj: ObjectSpec, *, sections: int = 48) -> Any:
    """One mini-world object as a ``trimesh.Trimesh`` in the world frame (z up, the scene's own units).

    Args:
        obj: the object (shape, size, position, yaw, tilt).
        sections: segments around the round primitives (cylinder, cone, torus); >= 8.
    """
    import trimesh

    if isinstance(sections, bool) or not isinstance(sections, int) or sections < 8:
        raise ValueError(f"`sections` must be an integer >= 8, got {sections!r}.")
    local = _local(obj.shape, sections)
    vertices = np.asarray(local.vertices, dtype=np.float64) @ obj.rotation().T * obj.scale + np.asarray(obj.position)
    return trimesh.Trimesh(vertices=vertices, faces=np.asarray(local.faces), process=False)


def scene_mesh(scene: Scene, *, sections: int = 48) -> Any:
    """Every object of ``scene`` joined into one ``trimesh.Trimesh`` (world frame, z up; the floor is not drawn, as
    in the renders)."""
    import trimesh

    if not scene.objects:
        raise ValueError("`scene` has no objects.")
    return trimesh.util.concatenate([object_mesh(o, sections=sections) for o in scene.objects])


def export_scene_glb(scene: Scene, path: str | os.PathLike, *, sections: int = 48) -> Path:
    """Write :func:`scene_mesh` as a ``.glb`` in the glTF frame (:data:`GLTF_FROM_WORLD`); returns the path."""
    mesh = scene_mesh(scene, sections=sections)
    mesh.apply_transform(GLTF_FROM_WORLD)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mesh.export(str(path), file_type="glb")
    return path
