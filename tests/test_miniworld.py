"""Tests of the procedural mini-world: determinism, geometry, cameras, captions, sizes, clips, export layout."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from training.miniworld import (
    COLORS,
    MOTIONS,
    SHAPES,
    Camera,
    Motion,
    MultiViewDataset,
    ObjectSpec,
    Scene,
    TextImageDataset,
    VideoDataset,
    camera_position,
    camera_rays,
    intrinsics_matrix,
    look_at_camera,
    opencv_to_opengl,
    parse_caption,
    render,
    render_clip,
    render_views,
    ring_cameras,
)
from training.miniworld.export import main as export_main


def unit_sphere_scene(background: str = "gray") -> Scene:
    return Scene((ObjectSpec("sphere", "red", position=(0.0, 0.0, 0.0), custom_scale=1.0),), background)


# ----------------------------------------------------------------------------------------------------- determinism


def test_same_seed_is_bitwise_equal_and_seeds_differ():
    a = TextImageDataset(32, seed=3)
    b = TextImageDataset(32, seed=3)
    c = TextImageDataset(32, seed=4)
    for i in range(4):
        assert torch.equal(a[i]["pixel_values"], b[i]["pixel_values"])
        assert a[i]["text"] == b[i]["text"]
    assert not torch.equal(a[0]["pixel_values"], c[0]["pixel_values"])
    assert not torch.equal(a[0]["pixel_values"], a[1]["pixel_values"])
    assert Scene.random(7) == Scene.random(np.random.default_rng(7))
    assert Scene.random(7) != Scene.random(8)
    mv1, mv2 = MultiViewDataset(4, resolution=24, seed=1)[2], MultiViewDataset(4, resolution=24, seed=1)[2]
    for k in ("pixel_values", "c2w", "position_maps", "normal_maps", "masks"):
        assert torch.equal(mv1[k], mv2[k])


def test_pixel_range_and_dtype():
    x = TextImageDataset(32, seed=0)[0]["pixel_values"]
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
    assert x.min() >= -1.0 and x.max() <= 1.0 and x.std() > 0.05


# -------------------------------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("fov", [40.0, None])
def test_unit_sphere_normals_positions_and_mask(fov):
    cam = Camera.orbit(30.0, 20.0, 4.0, fov_deg=fov, ortho_scale=3.0)
    out = render(unit_sphere_scene(), cam, 65, 65)
    to_cam = camera_position(30.0, 20.0, 4.0)
    to_cam = to_cam / np.linalg.norm(to_cam)
    # The centre pixel looks straight at the centre of the sphere: its normal points at the camera.
    np.testing.assert_allclose(out.normal[0, 32, 32], to_cam, atol=1e-4)
    np.testing.assert_allclose(out.position[0, 32, 32], to_cam, atol=1e-4)
    m = out.mask[0]
    pos = out.position[0][m]
    np.testing.assert_allclose(np.linalg.norm(pos, axis=-1), 1.0, atol=1e-4)
    np.testing.assert_allclose(out.normal[0][m], pos, atol=1e-3)  # sphere normal == position
    # Visible points face the camera: normal . (-ray direction) >= 0.
    o, d = camera_rays(cam, 65, 65)
    assert (np.einsum("pi,pi->p", out.normal[0][m], -d[m]) > -1e-4).all()
    # Mask == rays passing within radius 1 of the origin (analytically), except a hair-thin band at the edge.
    o, d = o.astype(np.float64), d.astype(np.float64)
    closest = np.linalg.norm(o - np.einsum("hwi,hwi->hw", o, d)[..., None] * d, axis=-1)
    clear = np.abs(closest - 1.0) > 1e-3
    assert np.array_equal(m[clear], (closest < 1.0)[clear])
    assert (out.position[0][~m] == 0).all() and (out.normal[0][~m] == 0).all()
    bg = np.asarray((0.55, 0.55, 0.55), dtype=np.float32)
    np.testing.assert_allclose(out.rgb[0][~m], np.broadcast_to(bg, out.rgb[0][~m].shape), atol=1e-6)
    if fov is None:  # orthographic: the disc covers pi r^2 in pixels
        pix = 3.0 / 65
        assert abs(m.sum() - math.pi / pix**2) / (math.pi / pix**2) < 0.02


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_positions_lie_inside_its_bound_and_normals_are_unit(shape):
    obj = ObjectSpec(
        shape, "blue", "large", (0.05, -0.02, 0.0), yaw_deg=33.0, tilt_deg=60.0 if shape == "torus" else 0
    )
    cams = ring_cameras(4, elevation_deg=25.0, distance=2.0, fov_deg=35.0)
    out = render_views(Scene((obj,)), cams, 40, 40)
    assert out.mask.sum(axis=(1, 2)).min() > 20
    m = out.mask
    np.testing.assert_allclose(np.linalg.norm(out.normal[m], axis=-1), 1.0, atol=1e-4)
    rel = (out.position[m] - np.asarray(obj.position)) / obj.scale
    assert np.linalg.norm(rel, axis=-1).max() < 1.5
    # Normals face the camera that sees the point.
    for v, cam in enumerate(cams):
        mv = m[v]
        _, d = camera_rays(cam, 40, 40)
        assert (np.einsum("pi,pi->p", out.normal[v][mv], -d[mv]) > -1e-3).mean() > 0.99


def test_cube_faces_are_axis_normals():
    obj = ObjectSpec("cube", "green", custom_scale=1.0)
    out = render(Scene((obj,)), Camera.orbit(0.0, 0.0, 4.0, fov_deg=30.0), 33, 33)
    np.testing.assert_allclose(out.normal[0, 16, 16], [1.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(out.position[0, 16, 16, 0], 0.8, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------- camera


def _official_c2w_opengl(az, el, d):
    """MV-Adapter's official spherical camera (OpenGL axes), written out here as the reference."""
    az, el = math.radians(az), math.radians(el)
    pos = np.array([d * math.cos(el) * math.cos(az), d * math.cos(el) * math.sin(az), d * math.sin(el)])
    look = -pos / np.linalg.norm(pos)
    right = np.cross(look, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, look)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, -look, pos
    return c2w


def test_look_at_azimuth0_elevation0():
    c2w = look_at_camera(0.0, 0.0, 2.0)
    np.testing.assert_allclose(c2w[:3, 3], [2.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(c2w[:3, 2], [-1.0, 0.0, 0.0], atol=1e-12)  # forward: towards the origin
    np.testing.assert_allclose(c2w[:3, 1], [0.0, 0.0, -1.0], atol=1e-12)  # image down: world -z
    np.testing.assert_allclose(c2w[:3, 0], [0.0, 1.0, 0.0], atol=1e-12)
    assert np.isclose(np.linalg.det(c2w[:3, :3]), 1.0)
    # The origin projects to the image centre.
    w2c = np.linalg.inv(c2w)
    p_cam = w2c @ np.array([0.0, 0.0, 0.0, 1.0])
    uvw = intrinsics_matrix(40.0, 64, 48) @ p_cam[:3]
    np.testing.assert_allclose(uvw[:2] / uvw[2], [32.0, 24.0], atol=1e-9)


@pytest.mark.parametrize("az,el,d", [(30.0, 20.0, 1.8), (-90.0, 0.0, 2.5), (200.0, -35.0, 1.2), (75.0, 89.99, 1.8)])
def test_look_at_matches_spherical_formula_and_official_convention(az, el, d):
    c2w = look_at_camera(az, el, d)
    a, e = math.radians(az), math.radians(el)
    expect = [d * math.cos(e) * math.cos(a), d * math.cos(e) * math.sin(a), d * math.sin(e)]
    np.testing.assert_allclose(c2w[:3, 3], expect, atol=1e-12)
    np.testing.assert_allclose(c2w[:3, :3] @ c2w[:3, :3].T, np.eye(3), atol=1e-9)
    np.testing.assert_allclose(opencv_to_opengl(c2w), _official_c2w_opengl(az, el, d), atol=1e-6)
    np.testing.assert_allclose(opencv_to_opengl(opencv_to_opengl(c2w)), c2w)
    # A world point projects through K [R|t] to where the renderer's ray for that pixel goes.
    cam = Camera(c2w=c2w, fov_deg=40.0)
    o, dirs = camera_rays(cam, 32, 48)
    p = o[5, 40] + 1.3 * dirs[5, 40]
    pc = (np.linalg.inv(c2w) @ np.append(p, 1.0))[:3]
    uv = intrinsics_matrix(40.0, 48, 32) @ pc
    np.testing.assert_allclose(uv[:2] / uv[2], [40.5, 5.5], atol=1e-3)


def test_look_at_vectorised_and_pole():
    c2w = look_at_camera(np.array([0.0, 90.0]), np.array([10.0, 90.0]), 2.0)
    assert c2w.shape == (2, 4, 4)
    np.testing.assert_allclose(c2w[0], look_at_camera(0.0, 10.0, 2.0))
    assert np.isfinite(c2w).all()
    np.testing.assert_allclose(c2w[1, :3, 2], [0.0, 0.0, -1.0], atol=1e-12)


# -------------------------------------------------------------------------------------------------------- captions


def test_caption_from_attributes():
    red_cube = ObjectSpec("cube", "red")
    blue_sphere = ObjectSpec("sphere", "blue", "small")
    assert Scene((red_cube,)).caption() == "a red cube"
    assert Scene((red_cube, blue_sphere)).caption() == "a red cube beside a small blue sphere"
    three = Scene((ObjectSpec("cone", "orange", "large"), red_cube, blue_sphere))
    assert three.caption() == "a large orange cone, a red cube and a small blue sphere"
    for seed in range(30):
        s = Scene.random(seed)
        parsed = parse_caption(s.caption())
        assert parsed == [{"size": o.size, "color": o.color, "shape": o.shape} for o in s.objects]
        assert 1 <= s.count <= 3
        assert Scene.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    with pytest.raises(ValueError, match="shape"):
        ObjectSpec("pyramid", "red")
    with pytest.raises(ValueError, match="color"):
        ObjectSpec("cube", "magenta")


def test_rendered_colour_matches_caption():
    scene = Scene((ObjectSpec("cube", "yellow", "large"),), "dark")
    out = render(scene, Camera.orbit(-60.0, 25.0, 2.0, fov_deg=35.0), 32)
    cols = out.rgb[0][out.mask[0]]
    albedo = np.asarray(COLORS["yellow"])
    np.testing.assert_allclose(cols / np.linalg.norm(cols, axis=1, keepdims=True), np.broadcast_to(
        albedo / np.linalg.norm(albedo), cols.shape), atol=1e-5)  # fmt: skip


# ---------------------------------------------------------------------------------------------------- sizes & clips


def test_aspect_ratio_renders_and_dataset_sizes():
    out = render(Scene.random(0), Camera.orbit(10.0, 20.0, 2.0, fov_deg=35.0), 24, 56, supersample=2)
    assert out.rgb.shape == (1, 24, 56, 3) and out.mask.shape == (1, 24, 56)
    ds = TextImageDataset([32, (24, 48)], aspect_ratios=[0.5, 1.0, 2.0], group_size=4, seed=0)
    assert (48, 24) in ds.sizes and (24, 48) in ds.sizes and (32, 32) in ds.sizes
    for i in range(8):
        item = ds[i]
        h, w = ds.size_for_index(i)
        assert item["pixel_values"].shape == (3, h, w) == (3, item["height"], item["width"])
    assert ds.size_for_index(0) == ds.size_for_index(3) and ds.size_for_index(4) == ds.size_for_index(7)


def test_multiview_item_layout():
    ds = MultiViewDataset(4, "ortho_ring", 24, seed=0)
    item = ds[0]
    assert item["pixel_values"].shape == (4, 3, 24, 24)
    assert item["c2w"].shape == (4, 4, 4) and item["orthographic"] is True
    np.testing.assert_allclose(item["azimuth"].numpy(), [-90.0, 0.0, 90.0, 180.0])
    for v in range(4):
        np.testing.assert_allclose(
            item["c2w"][v].numpy(), look_at_camera(float(item["azimuth"][v]), 0.0, 1.8), atol=1e-6
        )
    assert item["position_maps"].shape == item["normal_maps"].shape == (4, 3, 24, 24)
    assert item["masks"].shape == (4, 1, 24, 24) and item["masks"].sum() > 0
    assert item["position_maps"].abs().max() <= 0.5 + 1e-3  # scenes fit in the unit box
    assert isinstance(item["text"], str)
    persp = MultiViewDataset(6, "mvadapter", 16)[1]
    np.testing.assert_allclose(persp["elevation"].numpy()[4:], [89.99, -89.99], atol=1e-4)
    rnd = MultiViewDataset(3, "random", 16)[1]
    assert (rnd["fov"] == 40.0).all() and rnd["orthographic"] is False


@pytest.mark.parametrize("kind", ["spin", "bounce", "slide", "turntable", "orbit"])
def test_clip_frames_differ_but_keep_colour(kind):
    scene = Scene((ObjectSpec("cube", "purple", position=(0.1, 0.0, -0.25 + 0.8 * 0.17), yaw_deg=10.0),), "gray")
    motion = Motion(kind, amount=0.2 if kind in ("bounce", "slide") else 90.0)
    out = render_clip(scene, motion, Camera.orbit(-70.0, 25.0, 2.0, fov_deg=35.0), 6, 32)
    assert out.rgb.shape == (6, 32, 32, 3)
    albedo = np.asarray(COLORS["purple"])
    for f in range(6):
        if f:
            assert not np.array_equal(out.rgb[f], out.rgb[f - 1])
        cols = out.rgb[f][out.mask[f]]
        assert len(cols) > 10
        np.testing.assert_allclose(
            cols / np.linalg.norm(cols, axis=1, keepdims=True),
            np.broadcast_to(albedo / np.linalg.norm(albedo), cols.shape),
            atol=1e-5,
        )


def test_video_dataset():
    ds = VideoDataset(5, 24, seed=2)
    for i in range(3):
        item = ds[i]
        x = item["pixel_values"]
        assert x.shape == (5, 3, 24, 24)
        assert not torch.equal(x[0], x[-1])
        assert item["text"] == f"{item['scene_text']}, {MOTIONS[item['motion']]}"
    only = VideoDataset(3, 16, motions=["bounce"])
    assert all(only[i]["motion"] == "bounce" for i in range(3))


# ---------------------------------------------------------------------------------------------------------- export


def test_export_images(tmp_path):
    export_main(["--kind", "images", "--num", "3", "--out", str(tmp_path / "img"), "--resolution", "16", "24x32"])
    rows = [json.loads(line) for line in (tmp_path / "img" / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and set(rows[0]) == {"file_name", "text"}
    ds = TextImageDataset([16, (24, 32)])
    for i, row in enumerate(rows):
        img = Image.open(tmp_path / "img" / row["file_name"])
        assert img.mode == "RGB" and (img.height, img.width) == ds.size_for_index(i)
        assert row["text"] == ds[i]["text"]


def test_export_multiview(tmp_path):
    out = tmp_path / "mv"
    export_main(["--kind", "multiview", "--num", "2", "--out", str(out), "--resolution", "16", "--num-views", "3"])
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["file_name"] for r in rows] == ["obj_0000", "obj_0001"]
    obj = out / "obj_0000"
    names = sorted(p.name for p in obj.iterdir())
    expect = ["cameras.json", "caption.txt"] + [
        f"{k}_{v:02d}.png" for k in ("normal", "position", "view") for v in range(3)
    ]
    assert names == sorted(expect)
    cams = json.loads((obj / "cameras.json").read_text())
    assert cams["convention"] == "opencv" and cams["projection"] == "orthographic" and len(cams["frames"]) == 3
    f0 = cams["frames"][0]
    np.testing.assert_allclose(
        np.asarray(f0["c2w"]), look_at_camera(f0["azimuth_deg"], f0["elevation_deg"], f0["distance"]), atol=1e-9
    )
    assert f0["fov_deg"] is None and f0["ortho_scale"] == pytest.approx(1.1)
    item = MultiViewDataset(3, resolution=16)[0]
    assert (obj / "caption.txt").read_text().strip() == item["text"] == rows[0]["text"]
    pos = np.asarray(Image.open(obj / "position_00.png"))
    assert pos.shape == (16, 16, 4)
    mask = item["masks"][0, 0].numpy() > 0.5
    assert np.array_equal(pos[..., 3] > 127, mask)
    decoded = pos[..., :3][mask] / 255.0 - 0.5
    np.testing.assert_allclose(decoded, item["position_maps"][0].permute(1, 2, 0).numpy()[mask], atol=3e-3)
    assert (pos[..., :3][~mask] == 128).all()


def test_export_video(tmp_path):
    out = tmp_path / "vid"
    export_main(["--kind", "video", "--num", "2", "--out", str(out), "--resolution", "16", "--num-frames", "4"])
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["file_name"] for r in rows] == ["clip_0000", "clip_0001"] and rows[0]["num_frames"] == 4
    frames = sorted(p.name for p in (out / "clip_0000").iterdir())
    assert frames == [f"frame_{f:02d}.png" for f in range(4)]
    assert rows[0]["text"] == VideoDataset(4, 16)[0]["text"]


def test_geometry_off_gives_the_same_rgb_and_supersampling_keeps_size():
    scene, cam = Scene.random(5), Camera.orbit(40.0, 30.0, 2.0, fov_deg=35.0)
    for ss in (1, 2):
        full = render(scene, cam, 20, 28, supersample=ss)
        lite = render(scene, cam, 20, 28, supersample=ss, geometry=False)
        assert np.array_equal(full.rgb, lite.rgb) and np.array_equal(full.mask, lite.mask)
        assert lite.position is None and full.position.shape == (1, 20, 28, 3)
        assert np.array_equal(full.object_index, lite.object_index)
        assert full.object_index.shape == (1, 20, 28) and full.object_index.max() < scene.count
        if ss == 1:
            assert np.array_equal(full.object_index >= 0, full.mask)


# ------------------------------------------------------------------------------------------------------ classifier


def test_classifier_save_load_predict_and_prompt_match(tmp_path, monkeypatch):
    from training.miniworld.classifier import AttributeClassifier, load_classifier

    torch.manual_seed(0)
    model = AttributeClassifier().eval()
    x = TextImageDataset(32, seed=0)[0]["pixel_values"][None]
    out = model(model.preprocess(x))
    assert out["count"].shape == (1, 3) and out["pairs"].shape == (1, len(SHAPES) * len(COLORS))
    # Any size / aspect ratio: the shorter side is resized to 48.
    assert model.preprocess(torch.zeros(2, 3, 24, 96)).shape == (2, 3, 48, 192)
    pil = Image.fromarray(np.zeros((64, 64, 3), np.uint8))
    assert model.preprocess(pil).shape == (1, 3, 48, 48)
    path = tmp_path / "c.safetensors"
    model.save(path)
    loaded = load_classifier(path)
    torch.testing.assert_close(loaded.features(x), model.half().float().features(x), rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="train one"):
        load_classifier(tmp_path / "missing.safetensors")

    fake = [{"count": 2, "shapes": {"cube", "sphere"}, "colors": {"red", "blue"},
             "pairs": {("red", "cube"), ("blue", "sphere")}}]  # fmt: skip
    monkeypatch.setattr(AttributeClassifier, "predict", lambda self, images, threshold=0.5: fake)
    ok = model.prompt_match(x, "a red cube beside a small blue sphere")[0]
    assert ok["match"] and ok["count_ok"] and ok["objects_ok"]
    swapped = model.prompt_match(x, "a blue cube beside a red sphere")[0]
    assert not swapped["match"] and swapped["colors_ok"] and swapped["shapes_ok"]
    assert not model.prompt_match(x, "a red cube")[0]["count_ok"]


def test_frechet_distance():
    from training.miniworld.classifier import frechet_distance

    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 4))
    assert abs(frechet_distance(a, a)) < 1e-6
    shift = np.array([1.0, 0.0, 2.0, 0.0])
    assert frechet_distance(a, a + shift) == pytest.approx(5.0, abs=1e-6)
    assert frechet_distance(a, 2 * a) > 1.0
    with pytest.raises(ValueError, match="same D"):
        frechet_distance(a, a[:, :3])


def test_shipped_classifier_recognises_renders():
    from training.miniworld.classifier import DEFAULT_CLASSIFIER_PATH, load_classifier

    if not DEFAULT_CLASSIFIER_PATH.exists():
        pytest.skip("assets/eval/classifier.safetensors not trained yet")
    try:
        model = load_classifier()
    except (RuntimeError, ValueError) as err:
        pytest.skip(f"the classifier in assets/eval/ does not load with this code: {err}")
    ds = TextImageDataset(64, seed=123, max_objects=1)
    batch = [ds[i] for i in range(24)]
    res = model.prompt_match(torch.stack([b["pixel_values"] for b in batch]), [b["text"] for b in batch])
    assert np.mean([r["match"] for r in res]) >= 0.75


def test_export_examples(tmp_path):
    export_main(["--kind", "examples", "--out", str(tmp_path / "ex"), "--resolution", "16"])
    meta = json.loads((tmp_path / "ex" / "examples.json").read_text())
    for e in meta["examples"]:
        assert Image.open(tmp_path / "ex" / e["image"]).size == (16, 16)
        assert Image.open(tmp_path / "ex" / e["front_view"]).size == (16, 16)
        assert parse_caption(e["caption"]) == [
            {"size": o["size"], "color": o["color"], "shape": o["shape"]} for o in e["scene"]["objects"]
        ]
    assert len(json.loads((tmp_path / "ex" / meta["multiview"] / "cameras.json").read_text())["frames"]) == 6
