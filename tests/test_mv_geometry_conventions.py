"""The geometry maps MV-Adapter trains on (the mini-world) are the ones the mesh module renders for a user's mesh.

The geometry-guided trainer (``training.train_mv_adapter --mode tg2mv|ig2mv --dataset miniworld``) reads position /
normal maps from the mini-world's ray caster; the texture job reads them from ``adapters.mv_adapter.mesh`` (a mesh file
loaded into the official unit box, rasterised on the official camera ring). Here one mini-world object is exported as
a ``.glb`` (glTF frame, y up, in the scene's own units, as a user's file would be), loaded with ``load_mesh`` and
rendered with ``render_geometry``: frame, orientation, value ranges, background value, camera ring and scale must agree
with the training item of the same object, to within the rasterisers' pixel sampling (stated per check).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

trimesh = pytest.importorskip("trimesh")

from adapters.mv_adapter.mesh import geometry_cameras, load_mesh, render_geometry  # noqa: E402
from training.miniworld import MultiViewDataset  # noqa: E402
from training.miniworld.render import render_views  # noqa: E402
from training.train_mv_adapter import MVAdapterTrainConfig, MVAdapterTrainer  # noqa: E402

SIZE = 64
PIXEL = 1.1 / SIZE  # world size of one pixel of the official orthographic box


def _object_mesh(obj) -> trimesh.Trimesh:
    """A mini-world primitive as a triangle mesh in the world frame (z up), flat-shaded for the cube."""
    if obj.shape == "cube":
        tm = trimesh.creation.box(extents=(1.6, 1.6, 1.6))
        tm.unmerge_vertices()  # one normal per face, as the ray caster's
    elif obj.shape == "sphere":
        tm = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    else:
        raise ValueError(obj.shape)
    rot = obj.rotation()
    vertices = np.asarray(tm.vertices) @ rot.T * obj.scale + np.asarray(obj.position)
    normals = np.asarray(tm.vertex_normals) @ rot.T
    return trimesh.Trimesh(vertices=vertices, faces=tm.faces, vertex_normals=normals, process=False)


def _export_glb(mesh: trimesh.Trimesh, path) -> None:
    """Write ``mesh`` as a user's glTF file: y up (world z-up -> glTF y-up, the object facing +z)."""
    to_file = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
    mesh = mesh.copy()
    mesh.apply_transform(to_file)
    mesh.export(str(path), file_type="glb")


def _first(dataset: MultiViewDataset, shape: str) -> int:
    return next(i for i in range(200) if dataset.sample(i)[0].objects[0].shape == shape)


def test_scene_extent_is_exact_and_normalized_scenes_touch_the_box():
    """``Scene.extent`` (support functions) against the farthest rendered surface point on the six axis views."""
    data = MultiViewDataset(6, "mvadapter", SIZE, length=40, seed=3, supersample=1, max_objects=3)
    for i in range(8):
        scene, cams = data.sample(i)
        out = render_views(scene, cams, SIZE, SIZE, supersample=1)
        seen = float(np.abs(out.position[out.mask]).max())
        assert -1e-5 <= scene.extent() - seen < 1.5 * PIXEL, (i, scene.extent(), seen)
        norm = scene.normalized()
        assert math.isclose(norm.extent(), 0.5, rel_tol=1e-9)
        assert norm.caption() == scene.caption()
    with pytest.raises(ValueError, match="factor"):
        scene.scaled(0.0)


@pytest.mark.parametrize("shape", ["cube", "sphere"])
def test_miniworld_training_maps_match_the_mesh_module(shape, tmp_path):
    """One object: the trainer's condition (normalized mini-world item, official ring) vs ``render_geometry`` of its
    ``.glb`` loaded like a user's mesh. Tolerances: masks IoU >= 0.97 (edge pixels: the ray caster and the
    rasteriser sample the same pixel centres, but the mesh is a polygon); positions within 0.5 pixel (p99) and 1.5
    pixels (max) of the official box on pixels both cover; normals within 8 degrees (p01) there; both conditions 0.5
    on the background."""
    trainer = MVAdapterTrainer.__new__(MVAdapterTrainer)
    trainer.seed = 0
    trainer.config = MVAdapterTrainConfig(
        dataset="miniworld", mode="ig2mv", num_views=6, resolution=SIZE, max_objects=1
    )
    assert trainer.config.camera_mode == "mvadapter" and trainer.config.normalize_scenes
    wrapped = trainer.build_dataset()
    wrapped.base.supersample = 1  # pixel-centre samples, as the rasteriser
    index = _first(wrapped.base, shape)
    item = wrapped.base[index]
    condition = wrapped[index]["condition"]  # what the trainer feeds the condition encoder

    # the same object in the scene's own units (unnormalized), written as a user's file and loaded the official way
    plain = MultiViewDataset(6, "mvadapter", SIZE, length=wrapped.base.length, seed=0, background=None,
                             max_objects=1, supersample=1)  # fmt: skip
    scene, _ = plain.sample(index)
    path = tmp_path / f"{shape}.glb"
    _export_glb(_object_mesh(scene.objects[0]), path)
    maps = render_geometry(load_mesh(path), geometry_cameras(), SIZE, SIZE)

    mw_mask = item["masks"][:, 0].bool()
    both = mw_mask & maps.mask
    assert both.sum() / (mw_mask | maps.mask).sum() >= 0.97
    mw_pos = item["position_maps"].permute(0, 2, 3, 1)
    mw_nrm = item["normal_maps"].permute(0, 2, 3, 1)
    assert float(mw_pos.abs().amax()) <= 0.5 + 1e-4 and float(maps.position.abs().amax()) <= 0.5 + 1e-4
    dp = (mw_pos - maps.position).abs().amax(-1)[both]
    assert float(torch.quantile(dp, 0.99)) < 0.5 * PIXEL and float(dp.max()) < 1.5 * PIXEL
    cos = (mw_nrm * maps.normal).sum(-1)[both]
    assert float(torch.quantile(cos, 0.01)) > math.cos(math.radians(8.0))

    mesh_condition = maps.condition()
    for c, mask in ((condition, mw_mask), (mesh_condition, maps.mask)):
        background = c.permute(0, 2, 3, 1)[~mask]
        assert torch.equal(background, torch.full_like(background, 0.5))
    diff = (condition - mesh_condition).abs().permute(0, 2, 3, 1)[both]
    assert float(torch.quantile(diff.amax(-1), 0.99)) < 0.05

    # the check can fail: without the normalisation the training maps hold a smaller object than the loaded mesh
    small = plain[index]
    assert small["masks"].sum() < 0.8 * item["masks"].sum()
