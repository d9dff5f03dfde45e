"""The texture tab's shipped examples (``assets/examples/<name>.glb`` and ``<name>_texture_ref.png``).

The meshes are shaded as the mini-world the geometry adapter was trained on (flat faces where its shapes have creases,
smooth elsewhere), and each reference image is the view the adapter's trainer takes as a reference, of the same scene.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("trimesh")

from adapters.mv_adapter.mesh import geometry_cameras, load_mesh, render_geometry  # noqa: E402
from pipelines import texture  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "examples"


def _directions(normals: torch.Tensor, max_deg: float = 2.0) -> list[torch.Tensor]:
    """Greedy clusters of unit ``normals`` ``(P, 3)``: each within ``max_deg`` of its cluster's first member."""
    cos = np.cos(np.radians(max_deg))
    centres: list[torch.Tensor] = []
    left = normals
    while len(left):
        centres.append(left[0])
        left = left[left @ left[0] < cos]
    return centres


def _front_normals(mesh) -> torch.Tensor:
    maps = render_geometry(mesh, geometry_cameras(), 64)
    return maps.normal[0][maps.mask[0]]  # (P, 3) visible world normals of the front view


def test_cube_normals_are_piecewise_constant_on_its_faces():
    """The shipped cube's front view shows flat faces: <= 3 normal directions (within 2 degrees), each an axis."""
    normals = _front_normals(load_mesh(EXAMPLES / "red_cube.glb"))
    centres = _directions(normals)
    assert len(centres) <= 3, len(centres)
    for c in centres:  # axis-aligned faces: one coordinate is +-1
        assert float(c.abs().max()) > 0.9994
    # the same cube with its 8 corners shared (the old example) smooths the normals across its edges: the check fails
    import trimesh

    shared = trimesh.creation.box(extents=(1.6, 1.6, 1.6))
    assert len(_directions(_front_normals(load_mesh(shared, up="+z")))) > 3


def test_cone_base_is_flat_and_round_shapes_stay_smooth():
    import trimesh

    cone = trimesh.load(EXAMPLES / "yellow_cone.glb", force="mesh", process=False)
    up = np.asarray(cone.vertex_normals)[:, 1]  # glTF y up
    base = np.isclose(np.asarray(cone.vertices)[:, 1], -1.0)
    assert np.allclose(up[base & (np.abs(up) > 0.99)], -1.0) and (base & (up < -0.999)).sum() == 49  # rim + centre
    side = base & (up > -0.5)  # the rim's side copies: the side's smooth normal, (2 r + z) / sqrt(5) for this cone
    np.testing.assert_allclose(up[side], 1 / np.sqrt(5), atol=2e-3)
    for name in ("blue_sphere", "green_torus"):  # smooth: many directions, no vertex split
        mesh = trimesh.load(EXAMPLES / f"{name}.glb", force="mesh", process=False)
        assert len(np.unique(np.round(mesh.vertices, 6), axis=0)) == len(mesh.vertices), name
        assert len(_directions(_front_normals(load_mesh(EXAMPLES / f"{name}.glb")))) > 50, name


def test_split_sharp_edges_keeps_the_surface():
    import trimesh

    box = trimesh.creation.box(extents=(1.0, 2.0, 3.0))
    split = texture.split_sharp_edges(box)
    assert len(split.vertices) == 24 and len(split.faces) == 12
    np.testing.assert_allclose(split.vertices[split.faces], box.vertices[box.faces])  # same triangles, same order
    np.testing.assert_allclose(np.asarray(split.vertex_normals)[split.faces[:, 0]], box.face_normals, atol=1e-12)
    with pytest.raises(ValueError, match="crease_deg"):
        texture.split_sharp_edges(box, crease_deg=180)


def test_reference_images_are_the_trainers_front_view_of_the_example():
    """Each shipped reference equals a fresh render (bitwise), has the trainer's size, and shows the mesh: its
    object pixels match the mesh's front-view mask as load_mesh normalises it (IoU >= 0.9)."""
    from PIL import Image

    from training import reproduce
    from training.miniworld.export import TEXTURE_REFERENCE_SIZE, texture_reference

    (recipe,) = reproduce.resolve_names(["mv_geometry"])
    assert f"--resolution {TEXTURE_REFERENCE_SIZE} " in recipe.steps[0].args  # the adapter's training size
    size = TEXTURE_REFERENCE_SIZE
    for name in texture.EXAMPLE_MESHES:
        path = EXAMPLES / texture.TEXTURE_REFERENCE.format(name=name)
        assert texture.example_reference(EXAMPLES / f"{name}.glb") == path
        shipped = np.asarray(Image.open(path))
        assert shipped.shape == (size, size, 3)
        np.testing.assert_array_equal(shipped, np.asarray(texture_reference(name)), err_msg=name)
        gray = np.abs(shipped.astype(np.int16) - shipped[0, 0]).max(axis=-1) > 8  # off the uniform background
        mask = render_geometry(load_mesh(EXAMPLES / f"{name}.glb"), geometry_cameras(), size).mask[0].numpy()
        iou = (gray & mask).sum() / (gray | mask).sum()
        assert iou >= 0.9, (name, iou)
