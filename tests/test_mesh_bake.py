"""adapters.mv_adapter.mesh bake + export: renders baked and re-rendered reproduce themselves; the .glb reloads."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from adapters.mv_adapter.mesh import (
    Mesh,
    bake_texture,
    export_textured_mesh,
    fill_nearest,
    geometry_cameras,
    render_geometry,
    render_texture,
    sample_texture,
    uv_problem,
    uv_rasterize,
    xatlas_available,
)

#: Round-trip bar: ground-truth renders of a smooth texture at 64 px, baked into 128 px and re-rendered from the same
#: cameras, measure ~58 dB on the covered pixels; anything that misplaces texels (a flipped axis, a wrong camera, a
#: half-pixel shift) drops far below. 40 dB leaves room for platform differences.
ROUND_TRIP_PSNR_DB = 40.0


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    return float(10.0 * torch.log10(1.0 / ((a - b) ** 2)[mask].mean()))


def smooth_texture(size: int = 128) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    return torch.stack(
        [0.5 + 0.4 * torch.sin(6 * xx), 0.5 + 0.4 * torch.cos(5 * yy), 0.5 + 0.3 * torch.sin(4 * (xx + yy))], -1
    )


def textured_cube() -> Mesh:
    """A cube with its own UVs: each face a separate square of a 3 x 2 atlas (24 vertices, 12 faces)."""
    verts, faces, uvs = [], [], []
    for k, (axis, sign) in enumerate((a, s) for a in range(3) for s in (-1.0, 1.0)):
        a, b = [d for d in range(3) if d != axis]
        u0, v0 = (k % 3) / 3.0, (k // 3) / 2.0
        base = len(verts)
        for da, db in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
            p = np.zeros(3)
            p[axis], p[a], p[b] = sign * 0.4, da * 0.4, db * 0.4
            verts.append(p)
            uvs.append([u0 + (0.04 + 0.25 * (da + 1) / 2) / 1.0, v0 + (0.03 + 0.44 * (db + 1) / 2) / 1.0])
        faces += [[base, base + 1, base + 2], [base, base + 2, base + 3]]
    return Mesh.from_arrays(verts, faces, uv=uvs, texture=smooth_texture())


def test_bake_round_trip_with_the_mesh_own_uvs():
    mesh = textured_cube()
    cams = geometry_cameras()
    truth, mask = render_texture(mesh, cams, 64)
    result = bake_texture(mesh, truth, cams, texture_size=128)
    assert result.mesh.uv is mesh.uv  # the mesh's own UVs are kept
    again, _ = render_texture(result.mesh, cams, 64)
    assert psnr(again, truth, mask) > ROUND_TRIP_PSNR_DB
    assert result.coverage > 0.9
    # the baked texture itself matches the original where a view saw it (away from chart borders)
    inner = result.seen & torch.nn.functional.max_pool2d((~result.seen)[None, None].float(), 5, 1, 2)[0, 0].eq(0)
    assert float((result.texture - mesh.texture)[inner].abs().max()) < 0.02


def test_bake_is_sensitive_to_wrong_cameras():
    mesh = textured_cube()
    cams = geometry_cameras()
    truth, mask = render_texture(mesh, cams, 64)
    # the same views handed over in the wrong order: the bake is wrong, the round trip fails
    shuffled = truth[[1, 2, 3, 0, 4, 5]]
    again, _ = render_texture(bake_texture(mesh, shuffled, cams, texture_size=128).mesh, cams, 64)
    assert psnr(again, truth, mask) < 25.0


@pytest.mark.skipif(not xatlas_available(), reason="needs xatlas")
def test_bake_round_trip_with_xatlas_uvs_and_held_out_cameras():
    from tests.test_mesh_raster import uv_sphere

    mesh = uv_sphere(0.5, 12, 24)
    colour = lambda p: 0.5 + 0.4 * torch.sin(4.0 * p + torch.tensor([0.0, 1.0, 2.0]))  # noqa: E731
    maps = render_geometry(mesh, height=64)  # the official ring, with top and bottom views
    truth = torch.where(maps.mask[..., None], colour(maps.position), torch.full_like(maps.position, 0.5))
    result = bake_texture(mesh, truth, maps.cameras, texture_size=128)
    assert mesh.uv is None and result.mesh.uv is not None and result.mesh.num_vertices >= mesh.num_vertices
    again, mask = render_texture(result.mesh, maps.cameras, 64)
    assert psnr(again, truth, mask) > ROUND_TRIP_PSNR_DB
    held_out = geometry_cameras(azimuth_deg=[30, 130], elevation_deg=[20, -30])
    gt = render_geometry(mesh, held_out, height=64)
    novel, mask = render_texture(result.mesh, held_out, 64)
    assert psnr(novel, colour(gt.position), mask) > 35.0


def test_occluded_and_grazing_texels_are_not_painted():
    # two parallel quads, one behind the other, seen from the front only: the back quad's texels stay unseen
    quad = np.array([[-0.3, 0, -0.3], [0.3, 0, -0.3], [0.3, 0, 0.3], [-0.3, 0, 0.3]])
    verts = np.vstack([quad + [0, -0.2, 0], quad + [0, 0.2, 0]])
    uv = np.array([[0, 0], [0.45, 0], [0.45, 1], [0, 1], [0.55, 0], [1, 0], [1, 1], [0.55, 1]])
    faces = [[0, 2, 1], [0, 3, 2], [4, 6, 5], [4, 7, 6]]  # normals towards -y (the camera)
    mesh = Mesh.from_arrays(verts, faces, uv=uv)
    cams = geometry_cameras(1, azimuth_deg=[0])
    red = torch.zeros(1, 32, 32, 3)
    red[..., 0] = 1.0
    result = bake_texture(mesh, red, cams, texture_size=32, fill=False)
    left, right = result.seen[:, :14], result.seen[:, 18:]
    assert left.float().mean() > 0.8 and not right.any()
    assert torch.allclose(result.texture[result.seen], torch.tensor([1.0, 0.0, 0.0]).expand(int(result.seen.sum()), 3))
    side = geometry_cameras(1, azimuth_deg=[90])  # edge-on: cos = 0 <= min_cos
    assert not bake_texture(mesh, red, side, texture_size=32, fill=False).seen.any()


def test_fill_nearest_is_the_nearest_known_texel():
    known = torch.zeros(9, 13, dtype=torch.bool)
    image = torch.zeros(9, 13, 1)
    for value, (i, j) in enumerate([(0, 0), (8, 12), (4, 6)], start=1):
        known[i, j] = True
        image[i, j] = float(value)
    out = fill_nearest(image, known)[..., 0]
    ii, jj = torch.meshgrid(torch.arange(9.0), torch.arange(13.0), indexing="ij")
    seeds = torch.tensor([[0.0, 0.0], [8.0, 12.0], [4.0, 6.0]])
    d = (ii[..., None] - seeds[:, 0]) ** 2 + (jj[..., None] - seeds[:, 1]) ** 2
    best = d.min(-1)
    unique = (d == best.values[..., None]).sum(-1) == 1  # ties may go either way
    assert torch.equal(out[unique], (best.indices + 1).float()[unique])
    assert torch.equal(fill_nearest(image, torch.zeros_like(known)), image)


def test_uv_rasterize_and_sample_texture_conventions():
    # one quad over the whole UV square: every texel centre is covered and maps back to its own (u, v)
    verts = [[0, 0, 0], [1, 0, 0], [1, 0, 1], [0, 0, 1]]
    uv = [[0, 0], [1, 0], [1, 1], [0, 1]]
    mesh = Mesh.from_arrays(verts, [[0, 1, 2], [0, 2, 3]], uv=uv)
    rast = uv_rasterize(mesh, 8)
    assert bool(rast.mask.all())
    tex = torch.rand(8, 8, 3)
    centres = (torch.arange(8) + 0.5) / 8
    vv, uu = torch.meshgrid(1.0 - centres, centres, indexing="ij")  # row 0 = top = v near 1
    assert torch.allclose(sample_texture(tex, torch.stack([uu, vv], -1)), tex, atol=1e-6)


def test_bake_arguments():
    mesh = textured_cube()
    cams = geometry_cameras(2)
    views = torch.rand(2, 16, 16, 3)
    with pytest.raises(ValueError, match="cameras"):
        bake_texture(mesh, views[:1], cams)
    with pytest.raises(ValueError, match="view_weights"):
        bake_texture(mesh, views, cams, view_weights=[1.0])
    with pytest.raises(ValueError, match="min_cos"):
        bake_texture(mesh, views, cams, min_cos=1.0)
    with pytest.raises(ValueError, match="views"):
        bake_texture(mesh, torch.rand(2, 16, 16), cams)
    pil = [PIL.Image.fromarray((v.numpy() * 255).astype(np.uint8)) for v in views]
    assert bake_texture(mesh, pil, cams, texture_size=16).texture.shape == (16, 16, 3)


def test_export_glb_reloads_with_its_texture(tmp_path):
    trimesh = pytest.importorskip("trimesh")
    from adapters.mv_adapter.mesh import load_mesh

    source = trimesh.creation.box(extents=(2.0, 1.0, 1.0))
    source.apply_translation([1.0, 2.0, 3.0])
    mesh = load_mesh(source)
    cube = textured_cube()
    mesh = Mesh(cube.vertices * 1.25, cube.faces, cube.vertex_normals, cube.uv, cube.texture, mesh.to_world)
    path = export_textured_mesh(mesh, tmp_path / "out" / "textured.glb")
    assert path.is_file() and (tmp_path / "out" / "textured_texture.png").is_file()
    reloaded = trimesh.load(path, force="mesh", process=False)
    assert reloaded.visual.uv is not None
    image = np.asarray(reloaded.visual.material.baseColorTexture.convert("RGB"))
    assert image.shape == (128, 128, 3)
    np.testing.assert_allclose(image / 255.0, mesh.texture.numpy(), atol=1 / 255 + 1e-6)
    # written in the source file's coordinates: loading it again gives back our world-frame mesh and the same renders
    again = load_mesh(path)
    assert torch.allclose(again.vertices, mesh.vertices, atol=1e-5)
    cams = geometry_cameras()
    a, mask = render_texture(mesh, cams, 32)
    b, _ = render_texture(again, cams, 32)
    assert psnr(a, b, mask) > 45.0
    with pytest.raises(ValueError, match=r"\.glb"):
        export_textured_mesh(mesh, tmp_path / "x.obj")


def test_uvs_that_cannot_hold_a_bake_are_detected_and_replaced():
    import dataclasses

    cube = textured_cube()
    assert uv_problem(cube) is None
    assert "no UVs" in uv_problem(dataclasses.replace(cube, uv=None))
    assert "leave [0, 1]" in uv_problem(dataclasses.replace(cube, uv=cube.uv * 2.0))
    shared = cube.uv.view(6, 4, 2).clone()
    shared[:] = shared[0].clone()  # all six faces on one island: a bake would mix them
    overlapping = dataclasses.replace(cube, uv=shared.view(-1, 2))
    assert "overlap" in uv_problem(overlapping)
    if xatlas_available():
        cams = geometry_cameras()
        truth, mask = render_texture(cube, cams, 64)
        result = bake_texture(overlapping, truth, cams, texture_size=128)
        assert uv_problem(result.mesh) is None  # a new atlas replaced the overlapping one
        assert result.mesh.uv.shape != overlapping.uv.shape or not torch.equal(result.mesh.uv, overlapping.uv)
        again, _ = render_texture(result.mesh, cams, 64)
        assert psnr(again, truth, mask) > ROUND_TRIP_PSNR_DB
