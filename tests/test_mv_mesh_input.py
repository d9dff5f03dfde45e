"""``mesh=`` on the MV-Adapter pipelines: a mesh instead of precomputed position / normal maps.

The pipeline renders the maps with the mesh module for its own cameras and size; the output must be exactly the one
of passing those maps rendered by hand (``load_mesh`` -> ``geometry_cameras`` -> ``render_geometry``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adapters.mv_adapter import geometry_cameras, load_mesh, render_geometry
from pipelines.pipeline_mv_adapter_sd import MVAdapterSDPipeline
from pipelines.pipeline_mv_adapter_sdxl import MVAdapterXLPipeline
from tests import tiny_models
from tests.conformance.common import perturb_

trimesh = pytest.importorskip("trimesh")

SIZE = 16


def _pipe(variant: str = "tg2mv", sdxl: bool = False, **config):
    if sdxl:
        pipe = MVAdapterXLPipeline(**tiny_models.build_sdxl_components())
    else:
        pipe = MVAdapterSDPipeline(**tiny_models.build_sd15_components(), requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    perturb_(pipe.init_mv_adapter(variant=variant, **config).trainable_parameters(), seed=1, std=0.1)
    return pipe


def _run(pipe, **kwargs) -> np.ndarray:
    inputs = {"prompt": "a red chair", "num_inference_steps": 2, "guidance_scale": 5.0, "height": SIZE,
              "width": SIZE, "output_type": "np", "generator": torch.Generator().manual_seed(0)}  # fmt: skip
    inputs.update(kwargs)
    return np.asarray(pipe(**inputs).images)


def _chair() -> trimesh.Trimesh:
    """A box seat on a taller thin back: no symmetry the ring could hide."""
    seat = trimesh.creation.box(extents=(1.0, 0.3, 1.0))
    back = trimesh.creation.box(extents=(1.0, 1.2, 0.2))
    back.apply_translation((0.0, 0.6, -0.4))
    return trimesh.util.concatenate([seat, back])


@pytest.fixture(scope="module")
def tg2mv():
    return _pipe()


@pytest.fixture(scope="module")
def chair_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("mesh") / "chair.obj"
    _chair().export(path)
    return path


def _by_hand(mesh, cameras, height=SIZE, width=SIZE):
    maps = render_geometry(load_mesh(mesh), cameras, height, width)
    return {"position_map": maps.position, "normal_map": maps.normal}


@pytest.mark.parametrize("form", ["path", "trimesh", "Mesh"])
def test_mesh_equals_the_maps_rendered_by_hand(tg2mv, chair_file, form):
    """``mesh=`` (a path, a trimesh object or a loaded Mesh) with the default cameras: bit for bit the output of the
    maps of the official 6-view geometry ring rendered by hand at the output size; another mesh changes it."""
    mesh = {"path": chair_file, "trimesh": trimesh.load(chair_file, force="mesh"), "Mesh": load_mesh(chair_file)}[form]
    expected = _run(tg2mv, **_by_hand(chair_file, geometry_cameras(6)))
    out = _run(tg2mv, mesh=mesh)
    assert out.shape == (1, 6, SIZE, SIZE, 3)
    assert np.array_equal(out, expected)
    sphere = trimesh.creation.icosphere(subdivisions=2)
    assert np.abs(_run(tg2mv, mesh=sphere) - out).max() > 1e-3


def test_mesh_follows_the_call_cameras_and_size(chair_file):
    """Azimuths / elevation / distance / perspective ``fov`` and a non-square size go into the rendering: the output
    equals the hand-rendered maps for those cameras, and differs from the default ring's."""
    pipe = _pipe(attention_mode="row")
    azimuths, height, width = [0.0, 45.0, 180.0, 300.0], SIZE, 2 * SIZE
    cams = geometry_cameras(4, azimuth_deg=azimuths, elevation_deg=20.0, distance=2.5, fov_deg=40.0)
    kw = {"height": height, "width": width}
    out = _run(pipe, mesh=chair_file, azimuth_deg=azimuths, elevation_deg=20.0, distance=2.5, fov=40.0, **kw)
    assert out.shape == (1, 4, height, width, 3)
    assert np.array_equal(out, _run(pipe, **_by_hand(chair_file, cams, height, width), **kw))
    assert np.array_equal(_run(pipe, mesh=chair_file, cameras=cams, **kw), out)  # explicit cameras, same views
    assert np.abs(_run(pipe, mesh=chair_file, num_views=4, **kw) - out).max() > 1e-3


def test_mesh_with_a_reference_image_on_sdxl(chair_file):
    """ig2mv on SDXL: ``image`` + ``mesh`` equals ``image`` + the hand-rendered maps."""
    pipe = _pipe("ig2mv", sdxl=True)
    image = np.random.default_rng(0).random((SIZE, SIZE, 3)).astype(np.float32)
    kw = {"image": image, "num_inference_steps": 1}
    expected = _run(pipe, **_by_hand(chair_file, geometry_cameras(6)), **kw)
    assert np.array_equal(_run(pipe, mesh=chair_file, **kw), expected)


def test_mesh_errors_name_the_arguments(tg2mv, chair_file, tmp_path):
    maps = _by_hand(chair_file, geometry_cameras(6))
    with pytest.raises(ValueError, match=r"either `mesh` or `position_map` / `normal_map`, not both"):
        _run(tg2mv, mesh=chair_file, **maps)
    with pytest.raises(ValueError, match=r"either `mesh` or `condition_maps`"):
        _run(tg2mv, mesh=chair_file, condition_maps=torch.zeros(6, 6, SIZE, SIZE))
    with pytest.raises(TypeError, match="`mesh` must be a mesh file path"):
        _run(tg2mv, mesh=np.zeros((4, 3)))
    fake = tmp_path / "model.glb"
    fake.write_text("not a mesh")
    with pytest.raises(ValueError, match="model.glb"):
        _run(tg2mv, mesh=fake)
    camera_adapter = _pipe("t2mv")
    with pytest.raises(ValueError, match=r"`mesh` needs a geometry condition encoder.*'camera'.*tg2mv / ig2mv"):
        _run(camera_adapter, mesh=chair_file, num_views=2)
    camera_adapter.unload_mv_adapter()
    with pytest.raises(ValueError, match=r"`mesh` needs a geometry-guided MV-Adapter and none is loaded"):
        _run(camera_adapter, mesh=chair_file, num_views=2)
