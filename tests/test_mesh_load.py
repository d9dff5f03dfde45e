"""adapters.mv_adapter.mesh.load: every format, the official unit box and frame, one clear error per bad mesh."""

from __future__ import annotations

import numpy as np
import pytest
import torch

trimesh = pytest.importorskip("trimesh")

from adapters.mv_adapter.mesh import Mesh, axis_rotation, load_mesh  # noqa: E402


def official_normalise(vertices: np.ndarray) -> np.ndarray:
    """The official ``load_mesh(rescale=True)`` re-derived: ``/ max|v| * 0.5``, then ``mesh2std`` for up +y, front +x."""
    v = vertices / np.abs(vertices).max() * 0.5
    z_, x_ = np.array([0, 1, 0]), np.array([1, 0, 0])
    y_ = np.cross(z_, x_)
    std2mesh = np.stack([x_, y_, z_], axis=0).T
    return np.dot(np.linalg.inv(std2mesh), v.T).T


def _box(offset=(0.3, -0.2, 0.1), extents=(2.0, 1.0, 0.5)) -> trimesh.Trimesh:
    box = trimesh.creation.box(extents=extents)
    box.apply_translation(offset)
    return box


@pytest.mark.parametrize("ext", [".obj", ".glb", ".gltf", ".ply", ".stl"])
def test_every_format_loads_into_the_official_unit_box(tmp_path, ext):
    box = _box()
    path = tmp_path / f"box{ext}"
    box.export(path)
    mesh = load_mesh(path)
    assert mesh.num_faces == 12
    assert mesh.vertices.dtype == torch.float32 and mesh.faces.dtype == torch.int64
    assert float(mesh.vertices.abs().max()) == pytest.approx(0.5, abs=1e-6)
    # the same point set as the official formula (file formats may reorder or split vertices)
    expected = official_normalise(np.asarray(box.vertices))
    got = mesh.vertices.double().numpy()
    dist = np.linalg.norm(got[:, None] - expected[None], axis=-1).min(axis=1)
    assert dist.max() < 1e-5
    # normals are unit and point outwards (a convex box around its own centre)
    centre = official_normalise(np.asarray(box.vertices)).mean(0)
    assert torch.allclose(mesh.vertex_normals.norm(dim=-1), torch.ones(mesh.num_vertices), atol=1e-5)
    assert bool(((mesh.vertices.double().numpy() - centre) * mesh.vertex_normals.double().numpy()).sum(-1).min() > 0)
    # source_vertices undoes the normalisation exactly
    src = mesh.source_vertices().numpy()
    assert np.linalg.norm(src[:, None] - np.asarray(box.vertices)[None], axis=-1).min(axis=1).max() < 1e-5


def test_file_frame_becomes_z_up_and_front_faces_minus_y():
    # a marker vertex at file +y (glTF up) goes to world +z; file +z (glTF front) goes to world -y; file +x stays +x
    rot = axis_rotation("+y", "+x")
    np.testing.assert_allclose(rot @ [0, 1, 0], [0, 0, 1])
    np.testing.assert_allclose(rot @ [0, 0, 1], [0, -1, 0])
    np.testing.assert_allclose(rot @ [1, 0, 0], [1, 0, 0])
    tall = trimesh.creation.box(extents=(0.2, 1.0, 0.4))  # tallest along file y
    mesh = load_mesh(tall)
    ext = mesh.vertices.amax(0) - mesh.vertices.amin(0)
    assert torch.allclose(ext, torch.tensor([0.2, 0.4, 1.0]), atol=1e-6)  # now tallest along world z
    z_up = load_mesh(tall, up="+z", front="+x")  # no rotation of the vertical axis
    assert float((z_up.vertices.amax(0) - z_up.vertices.amin(0))[1]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="`up` and `front`"):
        axis_rotation("+y", "-y")


def test_move_to_center_and_no_rescale():
    box = _box(offset=(5.0, 0.0, 0.0), extents=(1.0, 1.0, 1.0))
    plain = load_mesh(box)
    assert float(plain.vertices[:, 0].min()) > 0  # official default: not centred
    centred = load_mesh(box, move_to_center=True)
    assert torch.allclose(centred.vertices.mean(0), torch.zeros(3), atol=1e-6)
    raw = load_mesh(box, rescale=False)
    assert float(raw.vertices[:, 0].max()) == pytest.approx(5.5)


def test_scene_parts_are_merged_with_their_transforms(tmp_path):
    a = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    b = trimesh.creation.icosphere(subdivisions=1, radius=0.5)
    scene = trimesh.Scene()
    scene.add_geometry(a, node_name="a")
    scene.add_geometry(b, node_name="b", transform=trimesh.transformations.translation_matrix([3.0, 0.0, 0.0]))
    path = tmp_path / "scene.glb"
    scene.export(path)
    mesh = load_mesh(path)
    assert mesh.num_faces == len(a.faces) + len(b.faces)
    # the sphere (translated by 3 along x) sets the scale: x spans [-0.5, 3.5] -> max |x| = 3.5 -> 0.5
    assert float(mesh.vertices[:, 0].max()) == pytest.approx(0.5, abs=1e-6)
    assert float(mesh.vertices[:, 0].min()) == pytest.approx(-0.5 / 3.5 * 0.5, abs=1e-6)
    assert load_mesh(scene).num_faces == mesh.num_faces  # a trimesh.Scene object works too


def test_textured_glb_keeps_uv_and_texture(tmp_path):
    box = trimesh.creation.box()
    uv = np.random.default_rng(0).random((len(box.vertices), 2))
    image = np.random.default_rng(1).integers(0, 255, (8, 16, 3), dtype=np.uint8)
    box.visual = trimesh.visual.TextureVisuals(uv=uv, image=__import__("PIL.Image").Image.fromarray(image))
    path = tmp_path / "tex.glb"
    box.export(path)
    mesh = load_mesh(path)
    assert mesh.uv is not None and mesh.texture is not None
    assert np.abs(mesh.uv.numpy() - uv).max() < 1e-5
    assert mesh.texture.shape == (8, 16, 3)
    np.testing.assert_allclose(mesh.texture.numpy(), image / 255.0, atol=1e-6)


def test_non_manifold_mesh_loads():
    # three triangles on one edge: not a manifold, still a valid surface to texture
    v = [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1]]
    f = [[0, 1, 2], [0, 1, 3], [0, 1, 4]]
    tm = trimesh.Trimesh(v, f, process=False)
    assert not tm.is_watertight
    assert load_mesh(tm).num_faces == 3


def test_mesh_dataclass_checks_shapes():
    with pytest.raises(ValueError, match="vertices"):
        Mesh(torch.zeros(3, 2), torch.zeros(1, 3, dtype=torch.long), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="uv"):
        Mesh(torch.zeros(3, 3), torch.zeros(1, 3, dtype=torch.long), torch.zeros(3, 3), uv=torch.zeros(2, 2))


# ---------------------------------------------------------------------------------------------------- bad meshes


def test_empty_file(tmp_path):
    path = tmp_path / "empty.obj"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        load_mesh(path)


def test_text_file_renamed_glb(tmp_path):
    path = tmp_path / "notes.glb"
    path.write_text("these are my notes, not a mesh\n")
    with pytest.raises(ValueError, match="not a binary glTF"):
        load_mesh(path)


def test_mesh_without_any_geometry(tmp_path):
    path = tmp_path / "nothing.obj"
    path.write_text("# a comment and nothing else\n")
    with pytest.raises(ValueError, match="empty: it holds no vertices"):
        load_mesh(path)


def test_point_cloud_has_no_faces(tmp_path):
    path = tmp_path / "points.ply"
    trimesh.PointCloud(np.random.default_rng(0).random((20, 3))).export(path)
    with pytest.raises(ValueError, match="has no faces"):
        load_mesh(path)


def test_non_finite_vertices():
    box = trimesh.creation.box()
    v = np.asarray(box.vertices).copy()
    v[2, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        load_mesh(trimesh.Trimesh(v, box.faces, process=False))


def test_too_many_faces():
    with pytest.raises(ValueError, match="max_faces"):
        load_mesh(trimesh.creation.icosphere(subdivisions=2), max_faces=100)


def test_only_zero_area_faces():
    v = [[0, 0, 0], [1, 0, 0], [2, 0, 0]]
    with pytest.raises(ValueError, match="zero area"):
        load_mesh(trimesh.Trimesh(v, [[0, 1, 2]], process=False))


def test_unknown_extension_and_missing_file_and_wrong_type(tmp_path):
    path = tmp_path / "mesh.fbx"
    path.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"\.obj, \.glb"):
        load_mesh(path)
    with pytest.raises(ValueError, match="does not exist"):
        load_mesh(tmp_path / "missing.glb")
    with pytest.raises(TypeError, match="trimesh.Trimesh"):
        load_mesh(42)


def test_malformed_ply_is_a_value_error(tmp_path):
    path = tmp_path / "broken.ply"
    path.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 100\nproperty float x\nend_header\n\x00")
    with pytest.raises(ValueError, match="broken.ply"):
        load_mesh(path)
