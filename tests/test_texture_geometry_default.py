"""The embedded geometry-guided MV-Adapter (``assets/mv_adapter_geometry/``, recipe ``mv_geometry``) as the texture
job's default: the Python API, the CLI ``texture`` and the web tab use it (views from the mesh's position / normal
maps) when its folder exists, and fall back to the camera-conditioned ``mv`` model (plain views, mesh fitted to them),
saying so, when it does not. On assets folders built from the tiny models (``pipelines.testing``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("trimesh")
pytest.importorskip("xatlas")

from pipelines import embedded, texture  # noqa: E402
from pipelines.pipeline_mv_adapter import MVAdapterPipeline  # noqa: E402
from training import reproduce  # noqa: E402

VIEW = dict(num_inference_steps=1, height=32, width=32, texture_size=64)


@pytest.fixture(scope="module")
def geometry_adapter(tiny_sd15, tmp_path_factory) -> Path:
    """A tiny ig2mv adapter file with random (non-zero) weights, so that the maps it is given change its views."""
    torch.manual_seed(0)
    pipe = MVAdapterPipeline.from_pretrained(tiny_sd15, mv_adapter_config={"variant": "ig2mv"})
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in pipe.mv_adapter.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return pipe.mv_adapter.save(tmp_path_factory.mktemp("adapter") / "mv_adapter.safetensors")


@pytest.fixture(scope="module")
def meshes(tmp_path_factory) -> dict[str, Path]:
    paths = texture.write_example_meshes(tmp_path_factory.mktemp("meshes"), ["red_cube", "blue_sphere"])
    return {p.stem: p for p in paths}


def _assets(root: Path, tiny_sd15: Path, geometry_adapter: Path | None, monkeypatch) -> Path:
    """An assets folder: the tiny base, and the geometry part (with the recipe's call defaults) when given."""
    root.mkdir()
    (root / "base").symlink_to(tiny_sd15, target_is_directory=True)
    if geometry_adapter is not None:
        recipe = next(r for r in reproduce.RECIPES if r.name == "mv_geometry")
        part = root / recipe.folder
        part.mkdir()
        (part / "mv_adapter.safetensors").write_bytes(geometry_adapter.read_bytes())
        (part / reproduce.DEFAULTS_NAME).write_text(reproduce.format_defaults(recipe.defaults))
    monkeypatch.setenv(embedded.ASSETS_ENV, str(root))
    monkeypatch.delenv(embedded.PLACEHOLDER_ENV, raising=False)
    return root


@pytest.fixture
def with_geometry(tmp_path, tiny_sd15, geometry_adapter, monkeypatch) -> Path:
    return _assets(tmp_path / "assets", tiny_sd15, geometry_adapter, monkeypatch)


@pytest.fixture
def without_geometry(tmp_path, tiny_sd15, monkeypatch) -> Path:
    return _assets(tmp_path / "assets", tiny_sd15, None, monkeypatch)


def test_the_geometry_part_is_an_embedded_model_when_its_folder_exists(with_geometry):
    from pipelines.call_defaults import get_call_defaults

    assert texture.texture_model() == "mv_geometry" and texture.texture_task().model == "mv_geometry"
    assert texture.adapter_condition() == "geometry"
    info = embedded.embedded_info("mv_geometry")
    assert not info.is_placeholder and info.parts["mv_adapter_geometry"] == str(with_geometry / "mv_adapter_geometry")
    pipe = embedded.load_embedded("mv_geometry", device="cpu", progress_bar=False)
    config = pipe.mv_adapter.config
    assert config.condition == "geometry" and config.use_ref and config.attention_mode == "row_col"
    stored = get_call_defaults(pipe)
    assert stored.trained_sizes == {"min_side": 32, "max_side": 32}  # the recipe's defaults, attached
    assert embedded.embedded_call_defaults("mv_geometry").trained_sizes == stored.trained_sizes


def test_without_the_folder_the_texture_task_falls_back_to_mv(without_geometry):
    assert texture.texture_model() == "mv" and texture.texture_task().model == "mv"
    info = embedded.embedded_info("mv_geometry")
    assert info.placeholders == ["mv_adapter_geometry"]  # asked for by name: a fresh adapter, reported as such
    with pytest.raises(ValueError, match="'mv_geometry'"):
        embedded.embedded_info("mv_geo")


def _views(pipe, mesh) -> tuple[bool, float, np.ndarray]:
    # 4 steps: the tiny base's PNDM sampler barely uses the model's output at 1 step
    result = texture.texture_mesh(pipe, mesh, "a red cube", seed=3, **{**VIEW, "num_inference_steps": 4})
    return result.geometry_guided, result.mesh_scale, np.stack([np.asarray(v, dtype=np.float32) for v in result.views])


def test_geometry_views_follow_the_mesh_and_fallback_views_do_not(tiny_sd15, geometry_adapter, meshes, tmp_path,
                                                                   monkeypatch):  # fmt: skip
    """Same prompt and seed, two meshes: the geometry-guided default's views differ (the maps reach the model) and no
    fit is applied; the fallback's views are the same for both meshes (they never see it) and the mesh is fitted."""
    _assets(tmp_path / "with", tiny_sd15, geometry_adapter, monkeypatch)
    pipe = embedded.load_embedded(texture.texture_model(), device="cpu", progress_bar=False)
    (g_cube, s_cube, cube), (g_sphere, s_sphere, sphere) = (
        _views(pipe, meshes[n]) for n in ("red_cube", "blue_sphere")
    )
    assert g_cube and g_sphere and s_cube == s_sphere == 1.0
    assert np.abs(cube - sphere).mean() > 0.25  # 8-bit levels (measured 0.87); the fallback's: exactly 0

    _assets(tmp_path / "without", tiny_sd15, None, monkeypatch)
    pipe = embedded.load_embedded(texture.texture_model(), device="cpu", progress_bar=False)
    assert pipe.mv_adapter.config.condition == "camera"
    (g_cube, _, cube), (g_sphere, _, sphere) = (_views(pipe, meshes[n]) for n in ("red_cube", "blue_sphere"))
    assert not g_cube and not g_sphere
    np.testing.assert_array_equal(cube, sphere)


@pytest.mark.parametrize("geometry", [True, False])
def test_cli_texture_uses_the_geometry_default_or_says_it_falls_back(
    geometry, tiny_sd15, geometry_adapter, meshes, tmp_path, monkeypatch, caplog
):
    from pipelines import __main__ as cli

    _assets(tmp_path / "assets", tiny_sd15, geometry_adapter if geometry else None, monkeypatch)
    out = tmp_path / "out"
    argv = ["texture", "--mesh", str(meshes["red_cube"]), "--prompt", "a red cube", "--out", str(out)]
    argv += ["--steps", "1", "--height", "32", "--width", "32", "--texture-size", "64", "--device", "cpu"]
    with caplog.at_level(logging.INFO):
        assert cli.main(argv) == 0
    summary = json.loads((out / "result.json").read_text())
    assert summary["geometry_guided"] is geometry
    if geometry:
        assert summary["mesh_scale"] == 1.0  # no silhouette fit: the views were made from the mesh's maps
    fallback = [r for r in caplog.records if texture.FALLBACK_NOTE in r.getMessage()]
    assert len(fallback) == (0 if geometry else 1)


@pytest.mark.parametrize("geometry", [True, False])
def test_app_tab_runs_on_the_geometry_default_or_says_it_falls_back(
    geometry, tiny_sd15, geometry_adapter, meshes, tmp_path, monkeypatch
):
    pytest.importorskip("gradio")
    import app

    _assets(tmp_path / "assets", tiny_sd15, geometry_adapter if geometry else None, monkeypatch)
    config = app.AppConfig(output_dir=tmp_path / "app", device="cpu")
    key = "mv_geometry" if geometry else "mv"
    assert app._texture_model(config) == key
    note = app._texture_note(config.source(key))
    assert ("geometry-guided: the views follow" in note) is geometry
    assert ("No geometry-guided embedded MV-Adapter is shipped" in note) is not geometry
    # a user's MV model (--mv-adapter) is used as given, never replaced by the embedded geometry model
    assert app._texture_model(app.AppConfig(sources={"mv": app.ModelSource(adapter="x.safetensors")})) == "mv"

    demo_app = app.DemoApp(config)
    glb, files, gallery, seed, info = demo_app.texture_mesh(
        mesh=str(meshes["red_cube"]), prompt="a red cube", image=None, negative_prompt="", seed=0, randomize=False,
        steps=1, guidance=7.0, texture_size="256", fit="auto", progress=None,
    )  # fmt: skip
    assert demo_app.models.loaded == [key] and Path(glb).is_file()
    assert ("views guided by the mesh's position / normal maps" in info) is geometry
