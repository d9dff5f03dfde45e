"""The texture job (``pipelines.texture``): a mesh in, a textured ``.glb`` out, and its ``texture`` CLI subcommand.

Numerics on fake pipelines whose views are known functions of the geometry (the bake must give them back on the
surface; the silhouette fit must find a known scale and offset), then end to end on the tiny MV-Adapter pipelines.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("trimesh")
pytest.importorskip("xatlas")

from adapters.mv_adapter.camera import default_cameras  # noqa: E402
from adapters.mv_adapter.mesh import geometry_cameras, load_mesh, render_geometry, sample_texture  # noqa: E402
from pipelines import texture  # noqa: E402
from pipelines.pipeline_mv_adapter import MVAdapterPipeline  # noqa: E402
from tests.test_reliability import write_cli_meshes  # noqa: E402


@pytest.fixture(scope="module")
def meshes(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("meshes")
    write_cli_meshes(root)
    examples = texture.write_example_meshes(root / "examples")
    return {p.stem: p for p in [*root.iterdir(), *examples] if p.is_file()}


def _fake_pipe(condition: str, render=None, calls=None):
    """What the texture job reads of an MV pipeline, with views computed from the geometry it is given."""
    config = types.SimpleNamespace(
        condition=condition, num_views=6, use_ref=False, attention_mode="row_col" if condition == "geometry" else "row"
    )
    unet = types.SimpleNamespace(config=types.SimpleNamespace(sample_size=32, block_out_channels=(32, 32)))

    class Fake:
        mv_adapter = types.SimpleNamespace(config=config)
        vae_scale_factor = 2

        def __init__(self):
            self.unet = unet

        def prepare_cameras(self, num_views, *args):
            return default_cameras(num_views)

        def __call__(self, **kwargs):
            if calls is not None:
                calls.append(kwargs)
            return types.SimpleNamespace(images=render(kwargs)[None])

    return Fake()


def _colour_by_position(kwargs) -> np.ndarray:
    """Views that show each surface point's world position + 0.5, white on the background."""
    pos, nrm = kwargs["position_map"], kwargs["normal_map"]
    mask = np.abs(nrm).sum(-1, keepdims=True) > 0
    return np.where(mask, np.clip(pos + 0.5, 0, 1), 1.0).astype(np.float32)


def _face_centres(mesh) -> tuple[torch.Tensor, torch.Tensor]:
    """UV and world position of every face's centroid (inside its UV chart, away from seams)."""
    return mesh.uv[mesh.faces].mean(1), mesh.vertices[mesh.faces].mean(1)


def test_geometry_guided_views_bake_back_onto_the_surface(meshes):
    """A geometry adapter gets the mesh's own maps on the official ring, and what the views show at each surface
    point ends up in the texture at that point (views = position + 0.5: the texture must give the position back)."""
    calls = []
    pipe = _fake_pipe("geometry", _colour_by_position, calls)
    result = texture.texture_mesh(pipe, meshes["blue_sphere"], "a blue sphere", height=64, width=64, texture_size=256)
    assert result.geometry_guided and result.mesh_scale == 1.0 and len(result.views) == 6
    expected = render_geometry(load_mesh(meshes["blue_sphere"]), geometry_cameras(), 64, 64)
    np.testing.assert_allclose(calls[0]["position_map"], expected.position.numpy(), atol=1e-6)
    np.testing.assert_allclose(calls[0]["normal_map"], expected.normal.numpy(), atol=1e-6)
    assert calls[0]["num_views"] == 6 and calls[0]["output_type"] == "np"
    uv, centre = _face_centres(result.mesh)
    error = (sample_texture(result.mesh.texture, uv) - (centre + 0.5)).abs().max(-1).values
    assert float(error.median()) < 0.02 and float(torch.quantile(error, 0.95)) < 0.06, error.max()
    assert result.coverage > 0.95  # the six views (with top and bottom) see the whole sphere
    assert list(result.timings) == [*texture.STAGES, "total"] and result.timings["export"] == 0.0
    assert all(result.timings[k] > 0 for k in ("load", "render", "generate", "bake"))


def test_unguided_views_fit_the_mesh_to_the_generated_object(meshes):
    """A camera adapter's views do not follow the mesh: the fit finds the scale and offset of the object they show
    (here the mesh itself, rendered at half size and moved), and the bake then lands the colours on the mesh."""
    loaded = load_mesh(meshes["red_cube"])
    scale, offset = 0.5, np.array([0.05, -0.03, -0.1])

    def shifted(kwargs):
        moved = texture._moved(loaded, scale, offset)
        maps = render_geometry(moved, kwargs["cameras"], kwargs["height"], kwargs["width"])
        colour = (maps.position.numpy() + 0.5).clip(0, 1)
        return np.where(maps.mask.numpy()[..., None], colour, 1.0).astype(np.float32)

    pipe = _fake_pipe("camera", shifted)
    result = texture.texture_mesh(pipe, meshes["red_cube"], "a cube", height=64, width=64, texture_size=128)
    assert not result.geometry_guided
    assert abs(result.mesh_scale - scale) < 0.04, result.mesh_scale
    np.testing.assert_allclose(result.mesh_offset, offset, atol=0.02)
    # the fitted mesh's faces get the colours the views show there (position + 0.5 of the object they show)
    uv, centre = _face_centres(result.mesh)
    side = result.mesh.face_normals()[:, 2].abs() < 0.1  # the side faces: the elevation-0 ring sees them head-on
    error = (sample_texture(result.mesh.texture, uv) - (centre + 0.5)).abs()[side]
    assert side.sum() == 8 and float(error.max()) < 0.05, error
    # fit=False keeps the mesh as loaded
    off = texture.texture_mesh(pipe, meshes["red_cube"], "a cube", height=64, width=64, texture_size=64, fit=False)
    assert off.mesh_scale == 1.0 and off.mesh_offset == (0.0, 0.0, 0.0)


def test_bad_meshes_give_one_clear_error_each(meshes, tmp_path):
    cases = {
        "empty": ("empty", "is empty (0 bytes)"),
        "text renamed .glb": ("text", "is not a binary glTF (.glb) file"),
        "no faces": ("points", "has no faces (3 vertices only"),
        "above the limit": ("huge", f"more than the limit of {texture.MAX_FACES:,}: decimate it first."),
    }
    for label, (stem, message) in cases.items():
        with pytest.raises(ValueError) as err:
            texture.read_mesh(meshes[stem], name="--mesh")
        text = str(err.value)
        assert text.startswith("`--mesh`") and message in text and "\n" not in text, (label, text)
    with pytest.raises(ValueError, match=r"`mesh` file '.*missing.obj' does not exist"):
        texture.read_mesh(tmp_path / "missing.obj")
    with pytest.raises(ValueError, match=r"`mesh` must be one of \.obj, \.glb"):
        texture.read_mesh(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="`mesh` is missing"):
        texture.read_mesh(None)
    # non-manifold is fine: three triangles on one edge
    nonmanifold = tmp_path / "fin.obj"
    nonmanifold.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 -1 0\nv 0 0 1\nf 1 2 3\nf 1 2 4\nf 1 2 5\n")
    assert texture.read_mesh(nonmanifold).num_faces == 3


def test_arguments_are_checked_before_any_model_work(meshes, tmp_path):
    pipe = _fake_pipe("camera", lambda kwargs: pytest.fail("generated"))
    with pytest.raises(ValueError, match="`prompt` is empty"):
        texture.texture_mesh(pipe, meshes["red_cube"], "  ")
    with pytest.raises(ValueError, match="`texture_size` must be an integer between 16 and 4096"):
        texture.texture_mesh(pipe, meshes["red_cube"], "a cube", texture_size=4)
    with pytest.raises(ValueError, match="`guidance_scale` must be a number between 0 and 30, got nan"):
        texture.texture_mesh(pipe, meshes["red_cube"], "a cube", guidance_scale=float("nan"))
    with pytest.raises(ValueError, match="no reference branch"):
        texture.texture_mesh(pipe, meshes["red_cube"], "a cube", image=np.zeros((8, 8, 3)))
    (tmp_path / "taken").write_text("x")
    with pytest.raises(ValueError, match="`output_dir` .* is a file"):
        texture.texture_mesh(pipe, meshes["red_cube"], "a cube", output_dir=tmp_path / "taken")
    with pytest.raises(ValueError, match="`mesh` .* has no faces"):
        texture.texture_mesh(pipe, meshes["points"], "a cube")
    with pytest.raises(ValueError, match="Texturing needs an MV-Adapter"):
        texture.texture_mesh(types.SimpleNamespace(mv_adapter=None), meshes["red_cube"], "a cube")


@pytest.fixture(scope="module")
def tiny_pipes(tiny_sd15) -> dict[str, MVAdapterPipeline]:
    out = {}
    for condition in ("camera", "geometry"):
        torch.manual_seed(0)
        pipe = MVAdapterPipeline.from_pretrained(
            tiny_sd15, mv_adapter_config={"condition": condition, "use_ref": True}
        )
        pipe.set_progress_bar_config(disable=True)
        out[condition] = pipe
    return out


@pytest.mark.parametrize("condition", ["camera", "geometry"])
def test_texture_mesh_end_to_end_on_a_tiny_pipeline(condition, tiny_pipes, meshes, tmp_path):
    import trimesh

    pipe = tiny_pipes[condition]
    kwargs = dict(num_inference_steps=1, height=32, width=32, output_dir=tmp_path)
    result = texture.texture_mesh(pipe, meshes["yellow_cone"], "a yellow cone", **kwargs)
    assert result.geometry_guided is (condition == "geometry")
    files = result.files
    assert files["glb"] == tmp_path / "textured.glb" and files["texture"] == tmp_path / "texture.png"
    assert [p.name for p in files["views"]] == [f"view_{i:02d}.png" for i in range(6)]
    assert len(files["maps"]) == 18 and all(p.is_file() for p in result.file_list())
    summary = json.loads(files["result"].read_text())
    assert list(summary["timings"]) == [*texture.STAGES, "total"] and summary["timings"]["export"] > 0
    assert summary["geometry_guided"] is (condition == "geometry")

    scene = trimesh.load(files["glb"])
    (loaded,) = scene.geometry.values()
    image = loaded.visual.material.baseColorTexture
    assert image.size == (256, 256)  # 8x the 32 px views, at least 256
    np.testing.assert_array_equal(np.asarray(image.convert("RGB")), np.asarray(result.texture))
    source = trimesh.load(meshes["yellow_cone"], force="mesh")
    np.testing.assert_allclose(loaded.bounds, source.bounds, atol=1e-5)  # written in the input's coordinates
    # the baked texture is the views' colours, not a constant (every view pixel on the mesh is some texel's source)
    assert np.asarray(result.texture).std() > 1

    # a second run never overwrites the first: its files take the next suffix
    before = files["glb"].read_bytes()
    again = texture.texture_mesh(pipe, meshes["yellow_cone"], "a yellow cone", seed=1, **kwargs)
    assert again.files["glb"].name == "textured-2.glb" and again.files["result"].name == "result-2.json"
    assert again.files["views"][0].parent.name == "views-2" and files["glb"].read_bytes() == before


def test_cli_texture_one_run(tiny_pipes, meshes, tmp_path, monkeypatch, capsys):
    import pipelines.embedded
    from pipelines import __main__ as cli

    loads = []
    monkeypatch.setattr(
        pipelines.embedded, "load_pipeline", lambda name, **kw: loads.append(name) or tiny_pipes["camera"]
    )
    argv = ["texture", "--mesh", str(meshes["red_cube"]), "--prompt", "a red cube", "--out", str(tmp_path / "out")]
    argv += ["--steps", "1", "--height", "32", "--width", "32", "--texture-size", "64", "--quiet"]
    assert cli.main(argv) == 0 and loads == [texture.texture_model()]  # "mv_geometry" once shipped, else "mv"
    printed = capsys.readouterr().out.split()
    assert printed[0] == str(tmp_path / "out" / "textured.glb") and all(Path(p).is_file() for p in printed)
    summary = json.loads((tmp_path / "out" / "result.json").read_text())
    assert summary["texture_size"] == 64 and set(texture.STAGES) <= set(summary["timings"])
    assert summary["placeholder_weights"] is False
    # the same command again: new names, the first run's files kept
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.split()[0].endswith("textured-2.glb")
    assert (tmp_path / "out" / "result.json").read_text() == json.dumps(summary, indent=2) + "\n"


def test_example_meshes_are_the_miniworld_primitives(tmp_path):
    """The example meshes have the mini-world's shapes and sizes (training/miniworld/scene.py) and are small."""
    import trimesh

    from training.miniworld import scene

    paths = texture.write_example_meshes(tmp_path)
    assert sum(p.stat().st_size for p in paths) < 200_000
    assert {shape for shape, _ in texture.EXAMPLE_MESHES.values()} <= set(scene.SHAPES)
    cube = trimesh.load(tmp_path / "red_cube.glb", force="mesh")
    np.testing.assert_allclose(cube.extents, [1.6, 1.6, 1.6], atol=1e-6)  # half-side 0.8
    sphere = trimesh.load(tmp_path / "blue_sphere.glb", force="mesh")
    np.testing.assert_allclose(np.linalg.norm(sphere.vertices, axis=1), 1.0, atol=1e-6)
    cone = load_mesh(tmp_path / "yellow_cone.glb", rescale=False)  # glTF y-up -> the z-up world: apex on +z
    assert float(cone.vertices[:, 2].max()) == pytest.approx(1.0) and float(cone.vertices[:, 2].min()) == -1.0
    shipped = Path(__file__).resolve().parents[1] / "assets" / "examples"
    for path in paths:  # the shipped copies are exactly what the documented command writes
        if (shipped / path.name).is_file():
            assert (shipped / path.name).read_bytes() == path.read_bytes(), path.name
    mtimes = [p.stat().st_mtime_ns for p in paths]
    texture.write_example_meshes(tmp_path)  # existing files are kept
    assert [p.stat().st_mtime_ns for p in paths] == mtimes


def test_readme_texture_example_runs(tiny_sd15, meshes, tmp_path, monkeypatch):
    """The README's "Texture a mesh" Python block, as written (the embedded model replaced by the tiny pipeline)."""
    import re
    import shutil

    from PIL import Image

    import pipelines

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Texture a mesh\n", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "assets" / "examples").mkdir(parents=True)
    shutil.copy(meshes["red_cube"], tmp_path / "assets" / "examples" / "red_cube.glb")
    Image.new("RGB", (32, 32), (200, 20, 20)).save(tmp_path / "assets" / "examples" / "red_cube_texture_ref.png")
    shutil.copy(meshes["cube"], tmp_path / "model.obj")
    Image.new("RGB", (32, 32), (20, 200, 20)).save(tmp_path / "reference.png")
    from pipelines.call_defaults import set_call_defaults

    pipe = MVAdapterPipeline.from_pretrained(tiny_sd15, mv_adapter_config={"use_ref": True})
    pipe.set_progress_bar_config(disable=True)
    set_call_defaults(pipe, {"num_inference_steps": 1, "height": 32, "width": 32})  # as the embedded model's file
    monkeypatch.setattr(pipelines, "load_embedded", lambda name: pipe)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["result"].files["glb"] == Path("out/texture/textured-2.glb")  # the second run: a new name
    assert (tmp_path / "out" / "texture" / "textured.glb").is_file()


def test_bench_mesh_texture_job_rows(tiny_pipes):
    from benchmarks import bench_mesh

    payload = bench_mesh.run_texture_job(
        "tiny", pipe=tiny_pipes["camera"], repeats=1, write=False, num_inference_steps=1, height=32, width=32
    )
    rows = payload["rows"]
    assert [r["stage"] for r in rows] == ["model load (once, not in total)", *texture.STAGES, "total"]
    assert rows[1]["faces"] == 12 and rows[1]["views"] == 6 and rows[1]["view_px"] == 32
    stages = {r["stage"]: r["median_s"] for r in rows[1:]}
    assert sum(stages[s] for s in texture.STAGES) <= stages["total"] and rows[-1]["share"] == 1.0
