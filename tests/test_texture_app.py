"""The web demo's "Texture a mesh" tab, through its Python handler (``DemoApp.texture_mesh``) on a tiny pipeline."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("gradio")
pytest.importorskip("trimesh")
pytest.importorskip("xatlas")

from tests.test_reliability import write_cli_meshes  # noqa: E402


@pytest.fixture(scope="module")
def tiny_camera_pipe(tiny_sd15):
    from pipelines.pipeline_mv_adapter import MVAdapterPipeline

    torch.manual_seed(0)
    pipe = MVAdapterPipeline.from_pretrained(tiny_sd15, mv_adapter_config={"use_ref": True})
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def mesh_files(tmp_path_factory) -> dict[str, str]:
    from pipelines.texture import write_example_meshes

    root = tmp_path_factory.mktemp("tab-meshes")
    write_cli_meshes(root)
    write_example_meshes(root, ["red_cube"])
    return {p.stem: str(p) for p in root.iterdir()}


def texture_args(mesh, prompt="a red cube", image=None, **overrides) -> dict:
    """Keyword arguments of ``/texture_mesh`` (the handler's parameters)."""
    args = dict(
        mesh=mesh,
        prompt=prompt,
        image=image,
        negative_prompt="",
        seed=0,
        randomize=False,
        steps=1,
        guidance=7.0,
        texture_size="auto",
        fit="auto",
    )
    return args | overrides


def test_handler_textures_an_uploaded_mesh(tiny_camera_pipe, mesh_files, tmp_path):
    import trimesh

    import app

    loads = []
    demo_app = app.DemoApp(
        app.AppConfig(output_dir=tmp_path, loader=lambda key, *a: loads.append(key) or tiny_camera_pipe)
    )
    reference = tmp_path / "ref.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(reference)
    glb, files, gallery, seed, info = demo_app.texture_mesh(
        **texture_args(mesh_files["red_cube"], image=str(reference), texture_size="256"), progress=None
    )
    assert loads == [app._texture_model(demo_app.config)] and seed == 0  # "mv_geometry" once shipped, else "mv"
    assert Path(glb).is_file() and Path(glb).is_relative_to(tmp_path) and glb.endswith("textured.glb")
    assert [Path(f).name for f in files] == ["textured.glb", "texture.png", "views.zip"]
    assert len(gallery) == 7 and gallery[-1][1].startswith("texture · 256x256")  # six views, the texture
    assert "12 faces textured from 6 views (unguided views on the camera ring" in info
    (mesh,) = trimesh.load(glb).geometry.values()
    texture = np.asarray(mesh.visual.material.baseColorTexture.convert("RGB"))
    assert texture.shape == (256, 256, 3) and texture.std() > 0


def test_bad_meshes_are_one_message_each_and_load_no_model(mesh_files, tmp_path, caplog):
    import app

    loads = []
    demo_app = app.DemoApp(app.AppConfig(output_dir=tmp_path, loader=lambda key, *a: loads.append(key)))
    handler = app._user_errors(demo_app.texture_mesh)
    cases = {
        "empty": "Mesh file 'empty.glb' is empty (0 bytes).",
        "text": "Mesh file 'text.glb' is not a binary glTF (.glb) file",
        "points": "Mesh 'points.ply' has no faces (3 vertices only, e.g. a point cloud)",
        "huge": "Mesh 'huge.ply' has 500,001 faces, more than the limit of 500,000: decimate it first.",
    }
    for stem, message in cases.items():
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="diffusion_adapters.app"):
            with pytest.raises(app.gr.Error) as err:
                handler(**texture_args(mesh_files[stem]), progress=None)
        assert message in str(err.value.message), str(err.value.message)
        assert len(caplog.records) == 1 and caplog.records[0].exc_info is None  # one log line, no traceback
    with pytest.raises(app.gr.Error, match="Mesh is missing: upload a .obj"):
        handler(**texture_args(None), progress=None)
    with pytest.raises(app.gr.Error, match="Prompt is empty: describe the texture, or upload a reference image"):
        handler(**texture_args(mesh_files["red_cube"], prompt=" "), progress=None)
    assert loads == []  # refused before any model loads


def test_tab_is_built_with_examples_and_an_endpoint(tmp_path):
    import app
    from pipelines.texture import EXAMPLE_MESHES, adapter_condition

    demo = app.build_demo(app.AppConfig(output_dir=tmp_path))
    assert demo.app_state.models.loaded == []
    text = str(demo.config)
    assert "Texture a mesh" in text
    if adapter_condition() == "camera":  # the shipped i2mv adapter (placeholder weights carry no config)
        assert "takes camera maps, not geometry maps" in text
    endpoint = next(d for d in demo.config["dependencies"] if d.get("api_name") == "texture_mesh")
    ids = {c["id"]: c for c in demo.config["components"]}
    labels = [ids[i].get("props", {}).get("elem_id") for i in endpoint["outputs"]]
    assert labels[:3] == ["texture-model", "texture-files", "texture-gallery"]
    expected = [name for name in inspect.signature(demo.app_state.texture_mesh).parameters if name != "progress"]
    assert list(texture_args(None)) == expected
    assert all(f"{name}.glb" in text for name in EXAMPLE_MESHES)
