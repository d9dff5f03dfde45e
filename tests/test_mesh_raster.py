"""adapters.mv_adapter.mesh raster + maps: analytic cube and sphere, the official conventions, backends agree."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adapters.mv_adapter import Cameras, geometry_maps, ray_bundle
from adapters.mv_adapter.mesh import (
    GEOMETRY_AZIMUTHS,
    GEOMETRY_ELEVATIONS,
    Mesh,
    geometry_cameras,
    interpolate,
    nvdiffrast_available,
    rasterize,
    render_geometry,
)
from adapters.mv_adapter.mesh import raster as raster_module


def flat_cube(half: float = 0.5) -> Mesh:
    """A cube with 4 vertices per face (24), so interpolated normals are exactly the face normals."""
    verts, faces, normals = [], [], []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            n = np.zeros(3)
            n[axis] = sign
            a, b = [k for k in range(3) if k != axis]
            base = len(verts)
            for da, db in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
                p = np.zeros(3)
                p[axis], p[a], p[b] = sign * half, da * half, db * half
                verts.append(p)
                normals.append(n)
            quad = [base, base + 1, base + 2, base + 3]
            # outward winding
            tri = [[quad[0], quad[1], quad[2]], [quad[0], quad[2], quad[3]]]
            v = np.asarray(verts)
            if np.dot(np.cross(v[tri[0][1]] - v[tri[0][0]], v[tri[0][2]] - v[tri[0][0]]), n) < 0:
                tri = [t[::-1] for t in tri]
            faces.extend(tri)
    return Mesh.from_arrays(verts, faces, vertex_normals=normals)


def uv_sphere(radius: float = 0.5, rings: int = 48, segments: int = 96) -> Mesh:
    """A UV sphere with exact radial normals (no trimesh needed)."""
    theta = np.linspace(0, math.pi, rings + 1)
    phi = np.linspace(0, 2 * math.pi, segments, endpoint=False)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    dirs = np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)], axis=-1).reshape(-1, 3)
    faces = []
    for r in range(rings):
        for s in range(segments):
            a, b = r * segments + s, r * segments + (s + 1) % segments
            c, d = a + segments, b + segments
            faces += [[a, c, b], [b, c, d]]
    return Mesh.from_arrays(dirs * radius, faces, vertex_normals=dirs)


def official_mvp(elevation_deg, azimuth_deg, distance=1.8, half=0.55, near=0.1, far=100.0) -> np.ndarray:
    """The official ``get_orthogonal_camera`` re-derived (OpenGL c2w, y-flipped ortho projection), ``(V, 4, 4)``."""
    out = []
    for el, az in zip(elevation_deg, azimuth_deg):
        el, az = math.radians(el), math.radians(az - 90.0)
        pos = distance * np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
        look = -pos / np.linalg.norm(pos)
        right = np.cross(look, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        up = np.cross(right, look)
        c2w = np.eye(4)
        c2w[:3, :3] = np.stack([right, up, -look], axis=-1)
        c2w[:3, 3] = pos
        proj = np.zeros((4, 4))
        proj[0, 0], proj[1, 1], proj[2, 2] = 1 / half, -1 / half, -2 / (far - near)
        proj[2, 3], proj[3, 3] = -(far + near) / (far - near), 1.0
        out.append(proj @ np.linalg.inv(c2w))
    return np.stack(out)


# ------------------------------------------------------------------------------------------------------ the cube


def test_cube_maps_are_exact():
    size = 64
    maps = render_geometry(flat_cube(), height=size)  # the official geometry ring
    # the face of side 1.0 covers the pixel centres with |(j + 0.5 - 32) * 1.1 / 64| <= 0.5: 58 x 58 pixels
    assert maps.mask.sum((1, 2)).tolist() == [58 * 58] * 6
    expected_normal = [(0, -1, 0), (1, 0, 0), (0, 1, 0), (-1, 0, 0), (0, 0, 1), (0, 0, -1)]
    for view, n in enumerate(expected_normal):
        got = maps.normal[view][maps.mask[view]]
        assert torch.allclose(got, torch.tensor(n, dtype=torch.float32).expand_as(got), atol=1e-5), view
        assert torch.all(maps.normal[view][~maps.mask[view]] == 0)
        assert torch.all(maps.position[view][~maps.mask[view]] == 0)
    # front view: pixel (i, j) shows the point (x, y, z) = ((j + 0.5 - 32) s, -0.5, -(i + 0.5 - 32) s), s = 1.1 / 64
    s = 1.1 / size
    c = (torch.arange(size) + 0.5 - size / 2) * s
    ii, jj = torch.meshgrid(c, c, indexing="ij")
    want = torch.stack([jj, torch.full_like(jj, -0.5), -ii], dim=-1)
    m = maps.mask[0]
    assert torch.allclose(maps.position[0][m], want[m], atol=1e-5)
    assert torch.allclose(maps.depth[0][m], torch.full_like(maps.depth[0][m], 1.3), atol=1e-5)


def test_condition_encoding_matches_official_and_geometry_maps():
    maps = render_geometry(flat_cube(0.4), height=32)
    cond = maps.condition()
    assert cond.shape == (6, 6, 32, 32)
    # the official control_image: cat([(pos + 0.5).clamp(0, 1), (normal / 2 + 0.5).clamp(0, 1)])
    official = torch.cat([(maps.position + 0.5).clamp(0, 1), (maps.normal / 2 + 0.5).clamp(0, 1)], -1)
    assert torch.equal(cond, official.permute(0, 3, 1, 2))
    assert torch.allclose(cond, geometry_maps(maps.position, maps.normal), atol=1e-6)
    bg = ~maps.mask
    assert torch.all(cond.permute(0, 2, 3, 1)[bg] == 0.5)  # background 0.5 in all six channels
    front = cond[0, 3:, 16, 16]
    assert torch.allclose(front, torch.tensor([0.5, 0.0, 0.5]))  # normal (0, -1, 0) encoded
    assert len(maps.position_images()) == 6 and maps.normal_images()[0].size == (32, 32)


def test_pixels_reproject_through_the_official_mvp():
    """Every covered pixel's position, sent through the official camera matrices, lands on that pixel's centre."""
    size = 48
    maps = render_geometry(uv_sphere(0.45, 16, 32), height=size)
    mvp = official_mvp(GEOMETRY_ELEVATIONS, GEOMETRY_AZIMUTHS)
    for view in range(6):
        i, j = torch.nonzero(maps.mask[view], as_tuple=True)
        p = maps.position[view][i, j].double().numpy()
        clip = np.concatenate([p, np.ones((len(p), 1))], -1) @ mvp[view].T
        ndc = clip[:, :2] / clip[:, 3:]
        pix = (ndc + 1.0) / 2.0 * size  # nvdiffrast: pixel (i, j) centred at ndc ((2j + 1) / W - 1, (2i + 1) / H - 1)
        np.testing.assert_allclose(pix[:, 0], j.numpy() + 0.5, atol=1e-3)
        np.testing.assert_allclose(pix[:, 1], i.numpy() + 0.5, atol=1e-3)


def test_front_view_orientation():
    maps = render_geometry(uv_sphere(), height=32)
    front = maps.position[0]
    m = maps.mask[0]
    assert float(front[:16][m[:16]][:, 2].mean()) > 0.1  # top rows show +z (up)
    assert float(front[:, 16:][m[:, 16:]][:, 0].mean()) > 0.1  # right columns show +x
    assert float(maps.normal[0][m][:, 1].mean()) < -0.5  # the front camera sits on -y


# ---------------------------------------------------------------------------------------------------- the sphere


def _ray_sphere(cameras: Cameras, size: int, radius: float):
    o, d = ray_bundle(cameras, size, size)
    b = (o * d).sum(-1)
    disc = b**2 - ((o * o).sum(-1) - radius**2)
    hit = disc > 0
    t = -b - disc.clamp_min(0).sqrt()
    p = o + t[..., None] * d
    n = F.normalize(p, dim=-1)
    return hit, p.float(), n.float(), (-(n * d).sum(-1)).float()


@pytest.mark.parametrize("fov", [None, 40.0])
def test_sphere_matches_ray_casting(fov):
    size, radius = 48, 0.5
    cams = geometry_cameras(azimuth_deg=[0, 60, 200], elevation_deg=[0, 30, -45], fov_deg=fov)
    maps = render_geometry(uv_sphere(radius), cams, height=size)
    hit, p, n, cos = _ray_sphere(cams, size, radius)
    # only silhouette pixels may differ (the polygon is inscribed in the sphere)
    assert int((hit ^ maps.mask).sum()) <= 0.04 * int(hit.sum())
    # away from grazing angles the polygon's sag (~3e-4) moves the hit point by at most sag / cos along the ray
    facing = hit & maps.mask & (cos > 0.3)
    assert float((maps.position[facing] - p[facing]).norm(dim=-1).max()) < 2e-3
    both = hit & maps.mask
    assert float((maps.normal[both] * n[both]).sum(-1).min()) > 0.995
    r = maps.position[maps.mask].norm(dim=-1)
    assert float(r.max()) <= radius + 1e-5 and float(r.min()) > radius - 4e-3
    if fov is None:  # orthographic: the disc's area in pixels
        expected = math.pi * (radius * size / 1.1) ** 2
        assert abs(int(maps.mask[0].sum()) - expected) < 0.02 * expected


def test_perspective_depth_is_camera_z():
    cams = geometry_cameras(1, azimuth_deg=[0], fov_deg=40.0)
    maps = render_geometry(flat_cube(0.3), cams, height=40)
    m = maps.mask[0]
    # the front face y = -0.3 is a plane facing the camera at distance 1.8: depth 1.5 everywhere on it
    assert torch.allclose(maps.depth[0][m], torch.full_like(maps.depth[0][m], 1.5), atol=1e-5)
    assert torch.allclose(maps.position[0][m][:, 1], torch.full_like(maps.depth[0][m], -0.3), atol=1e-5)


# ------------------------------------------------------------------------------------------------- the rasteriser


def test_nearest_face_wins_whatever_the_order():
    # two overlapping quads facing the front camera (at -y): the one at y = -0.2 is nearer than the one at y = +0.2
    quad = np.array([[-0.3, 0, -0.3], [0.3, 0, -0.3], [0.3, 0, 0.3], [-0.3, 0, 0.3]])
    near_q, far_q = quad + [0, -0.2, 0], quad + [0.1, 0.2, 0.1]
    faces = [[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]]
    cams = geometry_cameras(1, azimuth_deg=[0])
    for order in (np.vstack([near_q, far_q]), np.vstack([far_q, near_q])):
        mesh = Mesh.from_arrays(order, faces)
        rast = rasterize(mesh.vertices, mesh.faces, cams, 32)
        y = interpolate(mesh.vertices, rast, mesh.faces)[0, ..., 1]
        seen = y[rast.mask[0]]
        assert float(torch.minimum((seen - 0.2).abs(), (seen + 0.2).abs()).max()) < 1e-6
        assert torch.allclose(y[12:20, 12:20], torch.full((8, 8), -0.2))
        assert bool(((y - 0.2).abs() < 1e-6).any())  # the far quad peeks out where the near one does not cover


def test_chunking_and_stamps_do_not_change_the_result(monkeypatch):
    mesh = uv_sphere(0.5, 12, 24)
    cams = geometry_cameras()
    ref = rasterize(mesh.vertices, mesh.faces, cams, 40)
    small = rasterize(mesh.vertices, mesh.faces, cams, 40, chunk_samples=997)
    assert torch.equal(ref.face_id, small.face_id) and torch.allclose(ref.bary, small.bary)
    monkeypatch.setattr(raster_module, "_STAMPS", ())  # every box enumerated
    enum = rasterize(mesh.vertices, mesh.faces, cams, 40, chunk_samples=5003)
    assert torch.equal(ref.face_id, enum.face_id) and torch.allclose(ref.depth, enum.depth)
    assert torch.allclose(ref.bary.sum(-1)[ref.mask], torch.ones(int(ref.mask.sum())), atol=1e-5)


def test_no_cracks_between_faces_and_empty_views():
    # a quad split into many slivers covers every pixel centre inside it exactly once (no holes on shared edges)
    n = 17
    xs = np.linspace(-0.4, 0.4, n + 1)
    verts = [[x, 0.0, z] for x in xs for z in (-0.4, 0.4)]
    faces = [[2 * k, 2 * k + 2, 2 * k + 3] for k in range(n)] + [[2 * k, 2 * k + 3, 2 * k + 1] for k in range(n)]
    mesh = Mesh.from_arrays(verts, faces)
    cams = geometry_cameras(1, azimuth_deg=[0])
    rast = rasterize(mesh.vertices, mesh.faces, cams, 44)
    o, _ = ray_bundle(cams, 44, 44)
    inside = (o[0, ..., 0].abs() <= 0.4) & (o[0, ..., 2].abs() <= 0.4)
    assert torch.equal(rast.mask[0], inside)
    away = Mesh.from_arrays(np.asarray(verts) + [5.0, 0.0, 0.0], faces)  # outside the view
    assert not rasterize(away.vertices, away.faces, cams, 16).mask.any()


def test_rasterize_arguments():
    mesh = flat_cube()
    cams = geometry_cameras(2)
    with pytest.raises(ValueError, match="backend"):
        rasterize(mesh.vertices, mesh.faces, cams, 8, backend="opengl")
    with pytest.raises(ValueError, match="vertices"):
        rasterize(mesh.vertices[:, :2], mesh.faces, cams, 8)
    with pytest.raises(ValueError, match="height"):
        rasterize(mesh.vertices, mesh.faces, cams, 0)
    rect = rasterize(mesh.vertices, mesh.faces, cams, 16, 24)
    assert rect.face_id.shape == (2, 16, 24)


def test_geometry_cameras_official_ring_and_fallbacks():
    cams = geometry_cameras()
    assert len(cams) == 6 and cams.orthographic
    assert torch.allclose(cams.ortho_scale, torch.full((6,), 1.1, dtype=torch.float64))
    assert torch.allclose(cams.positions.norm(dim=-1), torch.full((6,), 1.8, dtype=torch.float64))
    pos = cams.positions
    assert pos[0, 1] < -1.79 and pos[1, 0] > 1.79 and pos[2, 1] > 1.79 and pos[3, 0] < -1.79  # front right back left
    assert pos[4, 2] > 1.79 and pos[5, 2] < -1.79  # top, bottom
    four = geometry_cameras(4)
    assert torch.allclose(four.positions[:, 2], torch.zeros(4, dtype=torch.float64), atol=1e-9)
    assert not geometry_cameras(2, fov_deg=30.0).orthographic
    with pytest.raises(ValueError, match="num_views"):
        geometry_cameras(0)


# ------------------------------------------------------------------------------------------------------- devices


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_torch_rasteriser_on_cuda_matches_cpu():
    mesh = uv_sphere(0.5, 16, 32)
    cpu = render_geometry(mesh, height=48, backend="torch")
    gpu = render_geometry(mesh.to("cuda"), height=48, backend="torch")
    assert (cpu.raster.face_id != gpu.raster.face_id.cpu()).float().mean() < 1e-3
    assert torch.allclose(cpu.condition(), gpu.condition().cpu(), atol=1e-3)


@pytest.mark.skipif(not nvdiffrast_available(), reason="needs nvdiffrast and a CUDA device")
@pytest.mark.parametrize("fov", [None, 40.0])
def test_nvdiffrast_and_torch_give_the_same_maps(fov):
    mesh = uv_sphere(0.5, 24, 48).to("cuda")
    cams = geometry_cameras(fov_deg=fov)
    ours = render_geometry(mesh, cams, height=64, backend="torch")
    nv = render_geometry(mesh, cams, height=64, backend="nvdiffrast")
    assert (ours.mask ^ nv.mask).float().mean() < 2e-3  # pixel centres exactly on an edge may go either way
    both = ours.mask & nv.mask
    assert torch.allclose(ours.position[both], nv.position[both], atol=1e-4)
    assert torch.allclose(ours.normal[both], nv.normal[both], atol=1e-3)
    assert torch.allclose(ours.depth[both], nv.depth[both], atol=1e-4)


def test_bench_mesh_runs(monkeypatch):
    from benchmarks import bench_mesh

    mesh = bench_mesh.bumpy_sphere(10, 20)
    assert mesh.num_faces == 400 and float(mesh.vertices.norm(dim=-1).max()) <= 0.45 + 1e-6
    assert bench_mesh.SIZES["mid"] == (224, 224, 768)  # the issue's ~100k faces (100,352) at 768 px
    monkeypatch.setitem(bench_mesh.SIZES, "tiny", (10, 20, 64))
    payload = bench_mesh.run("tiny", repeats=1, write=False, threads=None)
    assert [(r["backend"], r["stage"]) for r in payload["rows"]] == [
        ("torch", "rasterize"),
        ("torch", "geometry_maps"),
    ]
    assert payload["rows"][0]["faces"] == 400 and payload["rows"][0]["resolution"] == 64
    assert all(r["median_s"] > 0 and r["met"] == "-" for r in payload["rows"])
