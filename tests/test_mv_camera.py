"""MV-Adapter cameras, camera/geometry maps and the shifted-SNR schedule vs the official formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, EulerDiscreteScheduler

from adapters.mv_adapter import (
    Cameras,
    camera_maps,
    convert_c2w_convention,
    default_cameras,
    geometry_maps,
    ray_bundle,
)
from adapters.mv_adapter.schedule import shifted_betas, shifted_snr_scheduler

# ----------------------------------------------------------------------------------------------------------------------
# The official formulas, re-derived here from the MV-Adapter inference code (huanngzh/MV-Adapter), independently of
# our implementation: OpenGL c2w from (elevation, distance, azimuth - 90) with z up, then the "ortho plucker" map
# [view direction, normalised camera position], mapped with (x + 1) / 2.
# ----------------------------------------------------------------------------------------------------------------------


def official_c2w_opengl(elevation_deg, distance, azimuth_deg):
    el = torch.tensor(elevation_deg, dtype=torch.float32) * math.pi / 180
    az = torch.tensor(azimuth_deg, dtype=torch.float32) * math.pi / 180
    d = torch.tensor(distance, dtype=torch.float32)
    pos = torch.stack([d * el.cos() * az.cos(), d * el.cos() * az.sin(), d * el.sin()], -1)
    up = torch.tensor([0.0, 0.0, 1.0]).expand_as(pos)
    lookat = F.normalize(-pos, dim=-1)
    right = F.normalize(torch.cross(lookat, up, dim=-1), dim=-1)
    up = F.normalize(torch.cross(right, lookat, dim=-1), dim=-1)
    c2w = torch.zeros(pos.shape[0], 4, 4)
    c2w[:, :3, :3] = torch.stack([right, up, -lookat], -1)
    c2w[:, :3, 3] = pos
    c2w[:, 3, 3] = 1
    return c2w


def official_ortho_condition(c2w_gl, size):
    out = []
    for m in c2w_gl:
        w2c = m.inverse()
        w2c[1, :] *= -1
        w2c[2, :] *= -1
        rot, trans = w2c[:3, :3], w2c[:3, 3]
        cam_pos = F.normalize(-rot.T @ trans, dim=0)
        view_dir = rot.T @ torch.tensor([0.0, 0.0, 1.0])
        out.append(torch.cat([view_dir, cam_pos])[:, None, None].repeat(1, size, size))
    return ((torch.stack(out) + 1) / 2).clamp(0, 1)


def official_perspective_plucker(c2w_gl, fov_rad, size):
    focal = 0.5 * size / math.tan(0.5 * fov_rad)
    i, j = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="xy")
    dirs = F.normalize(torch.stack([(i - size / 2) / focal, -(j - size / 2) / focal, -torch.ones_like(i)], -1), dim=-1)
    out = []
    for m in c2w_gl:
        rays_d = dirs @ m[:3, :3].T
        rays_o = m[:3, 3].expand(rays_d.shape)
        out.append(torch.cat([rays_d, torch.cross(rays_o, rays_d, dim=-1)], -1).permute(2, 0, 1))
    return torch.stack(out)


def test_default_cameras_match_official_ring_and_condition():
    az = [0, 45, 90, 180, 270, 315]
    cams = default_cameras(6)
    gl = official_c2w_opengl([0.0] * 6, [1.8] * 6, [a - 90 for a in az])
    torch.testing.assert_close(cams.c2w_as("opengl").float(), gl, atol=1e-6, rtol=0)
    ours = camera_maps(cams, 16, 16)
    torch.testing.assert_close(ours, official_ortho_condition(gl, 16), atol=1e-6, rtol=0)
    # front camera on -y looking at +y
    torch.testing.assert_close(cams.positions[0], torch.tensor([0.0, -1.8, 0.0], dtype=torch.float64))
    torch.testing.assert_close(cams.c2w[0, :3, 2], torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))


def test_perspective_plucker_matches_official_formula():
    cams = Cameras.from_spherical([0, 120, 240], elevation_deg=20.0, distance=2.0, fov_deg=40.0)
    gl = cams.c2w_as("opengl").float()
    ours = camera_maps(cams, 12, 12, kind="plucker")
    ref = ((official_perspective_plucker(gl, math.radians(40.0), 12) + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_known_rays_perspective_and_orthographic():
    cams = Cameras.from_spherical([0.0], 0.0, 2.0, fov_deg=90.0)
    origins, dirs = ray_bundle(cams, 2, 2)
    # 90 degree vertical fov, 2x2 image: focal 1 px, pixel centres at +-0.5 px -> camera dirs (+-0.5, +-0.5, 1)
    c2w = cams.c2w[0]
    expected = F.normalize(torch.tensor([-0.5, -0.5, 1.0], dtype=torch.float64) @ c2w[:3, :3].T, dim=0)
    torch.testing.assert_close(dirs[0, 0, 0], expected)
    torch.testing.assert_close(origins[0, 1, 1], c2w[:3, 3])
    # image "up" (row 0) is world +z for an elevation-0 camera
    assert dirs[0, 0, 0, 2] > 0 and dirs[0, 1, 0, 2] < 0
    ortho = default_cameras(1)
    o, d = ray_bundle(ortho, 4, 8)
    assert torch.allclose(d, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).expand_as(d), atol=1e-12)
    # vertical extent 1.1 over 4 rows; horizontal extent 2.2 over 8 columns (square pixels)
    assert math.isclose(float(o[0, 0, 0, 2] - o[0, 3, 0, 2]), 1.1 * 3 / 4, rel_tol=1e-9)
    assert math.isclose(float(o[0, 0, 7, 0] - o[0, 0, 0, 0]), 1.1 * 7 / 4, rel_tol=1e-9)


def test_convention_conversion_and_from_c2w():
    cams = Cameras.from_spherical([10, 200], [15, -30], [1.5, 2.5], fov_deg=50.0)
    gl = cams.c2w_as("opengl")
    assert torch.equal(convert_c2w_convention(gl, "opengl", "opencv"), cams.c2w)
    again = Cameras.from_c2w(gl.numpy(), convention="opengl", fov_deg=50.0)
    torch.testing.assert_close(camera_maps(again, 8, 8), camera_maps(cams, 8, 8))
    # OpenGL looks down -z: its z column is the negated viewing direction
    torch.testing.assert_close(gl[:, :3, 2], -cams.c2w[:, :3, 2])
    with pytest.raises(ValueError, match="source"):
        convert_c2w_convention(gl, "blender")


def test_agrees_with_miniworld_cameras():
    mw = pytest.importorskip("training.miniworld.camera")
    for az, el, d in [(0.0, 0.0, 1.8), (135.0, 30.0, 2.2), (300.0, -20.0, 1.5)]:
        ours = Cameras.from_spherical([az], el, d, fov_deg=35.0)
        theirs = mw.Camera.orbit(az - 90.0, el, d, fov_deg=35.0)
        np.testing.assert_allclose(ours.c2w[0].numpy(), theirs.c2w, atol=1e-9)
        o_mw, d_mw = mw.camera_rays(theirs, 6, 10)
        o, dd = ray_bundle(ours, 6, 10)
        np.testing.assert_allclose(dd[0].numpy(), d_mw, atol=1e-5)
        np.testing.assert_allclose(o[0].numpy(), o_mw, atol=1e-5)
        theirs_o = mw.Camera.orbit(az - 90.0, el, d, fov_deg=None, ortho_scale=1.1)
        o_mw, d_mw = mw.camera_rays(theirs_o, 6, 10)
        o, dd = ray_bundle(Cameras.from_spherical([az], el, d), 6, 10)
        np.testing.assert_allclose(o[0].numpy(), o_mw, atol=1e-5)
        np.testing.assert_allclose(dd[0].numpy(), d_mw, atol=1e-5)


def test_camera_maps_nonsquare_and_view_subsets():
    cams = default_cameras(4)
    maps = camera_maps(cams, 8, 20)
    assert maps.shape == (4, 6, 8, 20) and maps.min() >= 0 and maps.max() <= 1
    torch.testing.assert_close(camera_maps(cams[[2, 0]], 8, 20), maps[[2, 0]])
    with pytest.raises(ValueError, match="kind"):
        camera_maps(cams, 8, 8, kind="depth")


def test_geometry_maps_encoding():
    pos = np.random.default_rng(0).uniform(-0.5, 0.5, size=(2, 6, 6, 3))
    nrm = np.random.default_rng(1).normal(size=(2, 6, 6, 3))
    nrm /= np.linalg.norm(nrm, axis=-1, keepdims=True)
    maps = geometry_maps(pos, nrm)
    assert maps.shape == (2, 6, 6, 6)
    np.testing.assert_allclose(maps[:, :3].permute(0, 2, 3, 1).numpy(), pos + 0.5, atol=1e-6)
    np.testing.assert_allclose(maps[:, 3:].permute(0, 2, 3, 1).numpy(), nrm / 2 + 0.5, atol=1e-6)
    assert geometry_maps(list(pos), list(nrm), 12, 10).shape == (2, 6, 12, 10)
    with pytest.raises(ValueError, match="normal_map"):
        geometry_maps(pos, nrm[:1])


def _official_interpolated_betas(alphas_cumprod, scale):
    t = torch.arange(0, alphas_cumprod.shape[0])
    a = (alphas_cumprod**0.5)[t].float()
    s = ((1.0 - alphas_cumprod) ** 0.5)[t].float()
    snr = (a / s) ** 2
    w = t.float() / (alphas_cumprod.shape[0] - 1)
    inter = torch.exp(torch.log(snr) * (1 - w) + torch.log(snr / scale) * w)
    ac = ((inter / (1 + inter)) ** 0.5) ** 2
    return 1 - ac / torch.cat([torch.ones(1), ac[:-1]])


@pytest.mark.parametrize("cls", [DDIMScheduler, EulerDiscreteScheduler])
def test_shifted_snr_schedule_matches_official(cls):
    base = cls(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    shifted = shifted_snr_scheduler(base, 8.0)
    assert type(shifted) is cls
    expected = _official_interpolated_betas(base.alphas_cumprod, 8.0)
    assert torch.equal(shifted_betas(base.alphas_cumprod, 8.0), expected)
    torch.testing.assert_close(shifted.betas, expected.to(shifted.betas.dtype), atol=1e-7, rtol=0)
    # lower SNR at every t > 0, unchanged at t = 0
    assert torch.all(shifted.alphas_cumprod[1:] < base.alphas_cumprod[1:])
    assert shifted_snr_scheduler(base, 1.0) is base
    with pytest.raises(ValueError, match="noise_shift"):
        shifted_betas(base.alphas_cumprod, 0.0)
