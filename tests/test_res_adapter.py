"""ResAdapter: official layout loading, strictness, reversibility, scales, fusing, saving, resolution guard.

Everything runs on the tiny SD 1.5-like and SDXL-like models (offline). Composition with other LoRAs, ControlNet,
LCM and IP-Adapter is in ``test_res_adapter_composition.py``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from adapters.res_adapter import (
    LORA_WEIGHTS_NAME,
    NORM_WEIGHTS_NAME,
    SINGLE_FILE_NAME,
    get_res_adapter,
    load_res_adapter,
    resnet_norm_paths,
    sampler_conv_paths,
    save_res_adapter,
    set_res_adapter_scale,
    unload_res_adapter,
)
from adapters.weights import AdapterWeightsError, adapter_metadata, load_weights
from pipelines.pipeline_res_adapter import ResAdapterPipeline, ResAdapterXLPipeline
from tests import tiny_models

# ----------------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------------


def kohya(path: str) -> str:
    return "lora_unet_" + path.replace(".", "_")


def official_state_dicts(unet, *, rank: int = 4, alpha: float = 2.0, zero: bool = False, seed: int = 0):
    """Random (or zero-lora_up + base-norm) ResAdapter state dicts in the official layout: (lora, norms)."""
    gen = torch.Generator().manual_seed(seed)
    lora = {}
    for path in sampler_conv_paths(unet):
        conv = unet.get_submodule(path)
        kh, kw = conv.kernel_size
        lora[f"{kohya(path)}.lora_down.weight"] = torch.randn(rank, conv.in_channels, kh, kw, generator=gen) * 0.1
        up = torch.randn(conv.out_channels, rank, 1, 1, generator=gen) * 0.1
        lora[f"{kohya(path)}.lora_up.weight"] = torch.zeros_like(up) if zero else up
        lora[f"{kohya(path)}.alpha"] = torch.tensor(alpha)
    norms = {}
    for path in resnet_norm_paths(unet):
        norm = unet.get_submodule(path)
        for name in ("weight", "bias"):
            base = getattr(norm, name).detach().clone()
            norms[f"{path}.{name}"] = base if zero else base + 0.3 * torch.randn(base.shape, generator=gen)
    return lora, norms


def write_official(folder: Path, lora: dict | None, norms: dict | None, metadata: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if lora is not None:
        save_file(lora, str(folder / LORA_WEIGHTS_NAME), metadata=metadata)
    if norms is not None:
        save_file(norms, str(folder / NORM_WEIGHTS_NAME), metadata=metadata)
    return folder


def unet_snapshot(unet) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in unet.state_dict().items()}


def assert_unet_equal(unet, snapshot) -> None:
    current = unet.state_dict()
    assert current.keys() == snapshot.keys()
    for key, value in snapshot.items():
        assert torch.equal(current[key], value), key


def hook_count(unet) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in unet.modules())


@pytest.fixture(scope="module")
def sd15():
    return tiny_models.make_pipeline("sd15", pipeline_cls=ResAdapterPipeline)


@pytest.fixture(scope="module")
def sdxl():
    return tiny_models.make_pipeline("sdxl", pipeline_cls=ResAdapterXLPipeline)


@pytest.fixture
def pipe(request, sd15, sdxl):
    """The SD 1.5-like or SDXL-like pipeline, guaranteed clean (no ResAdapter) before and after the test."""
    p = {"sd15": sd15, "sdxl": sdxl}[request.param]
    assert get_res_adapter(p) is None
    yield p
    if get_res_adapter(p) is not None:
        unload_res_adapter(p)


both = pytest.mark.parametrize("pipe", ["sd15", "sdxl"], indirect=True)


def unet_out(pipe, height: int = 32, width: int = 48) -> torch.Tensor:
    """One UNet forward on fixed inputs (fast stand-in for a full generation)."""
    unet = pipe.unet
    gen = torch.Generator().manual_seed(1)
    f = pipe.vae_scale_factor
    sample = torch.randn(1, unet.config.in_channels, height // f, width // f, generator=gen)
    text = torch.randn(1, 77, unet.config.cross_attention_dim, generator=gen)
    kwargs = {}
    if unet.config.addition_embed_type == "text_time":
        pooled = pipe.text_encoder_2.config.projection_dim
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(1, pooled, generator=gen),
            "time_ids": torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32),
        }
    with torch.no_grad():
        return unet(sample, torch.tensor([500]), text, **kwargs).sample


def generate(pipe, height: int = 32, width: int = 48, steps: int = 2) -> np.ndarray:
    gen = torch.Generator().manual_seed(0)
    return pipe(
        "a red cube", height=height, width=width, num_inference_steps=steps, generator=gen, output_type="np"
    ).images


# ----------------------------------------------------------------------------------------------------------------------
# loading the official layout
# ----------------------------------------------------------------------------------------------------------------------


@both
def test_official_folder_loads_every_key_and_changes_output(pipe, tmp_path):
    lora, norms = official_state_dicts(pipe.unet)
    folder = write_official(tmp_path / "resadapter", lora, norms)
    base_image = generate(pipe)
    state = pipe.load_res_adapter(folder)
    # every key consumed: one delta per sampler conv, one patch entry per norm tensor
    assert len(state.lora.paths) == len(sampler_conv_paths(pipe.unet)) == len({k.split(".")[0] for k in lora})
    assert set(state.norms.state_dict()) == set(norms)
    assert state.config.rank == 4 and state.config.alpha == 2.0
    image = generate(pipe)
    assert np.abs(image - base_image).max() > 1e-3
    # the live norms hold the file's values exactly
    for key, value in norms.items():
        path, name = key.rsplit(".", 1)
        assert torch.equal(getattr(pipe.unet.get_submodule(path), name).detach(), value)


@both
def test_zero_lora_up_and_base_norms_reproduce_base_bitwise(pipe, tmp_path):
    lora, norms = official_state_dicts(pipe.unet, zero=True)
    folder = write_official(tmp_path / "zero", lora, norms)
    base_image = generate(pipe)
    pipe.load_res_adapter(folder)
    assert np.array_equal(generate(pipe), base_image)


def test_either_official_file_alone(sd15, tmp_path):
    lora, norms = official_state_dicts(sd15.unet)
    write_official(tmp_path / "both", lora, norms)
    base = unet_out(sd15)
    state = load_res_adapter(sd15, tmp_path / "both" / LORA_WEIGHTS_NAME)
    assert state.norms is None and state.lora is not None
    lora_only = unet_out(sd15)
    state = load_res_adapter(sd15, tmp_path / "both" / NORM_WEIGHTS_NAME)  # replaces the previous adapter
    assert state.lora is None and state.norms is not None
    norms_only = unet_out(sd15)
    load_res_adapter(sd15, tmp_path / "both")
    full = unet_out(sd15)
    unload_res_adapter(sd15)
    assert torch.equal(unet_out(sd15), base)
    for out in (lora_only, norms_only, full):
        assert not torch.allclose(out, base)
    assert not torch.allclose(lora_only, full) and not torch.allclose(norms_only, full)


def test_kohya_file_without_alpha_and_v1_names(sd15, tmp_path):
    lora, norms = official_state_dicts(sd15.unet, rank=4, alpha=4.0)
    folder = tmp_path / "v1"
    folder.mkdir()
    save_file(lora, str(folder / "resolution_lora.safetensors"))
    save_file(norms, str(folder / "resolution_normalization.safetensors"))
    load_res_adapter(sd15, folder)
    with_alpha = unet_out(sd15)
    no_alpha = {k: v for k, v in lora.items() if not k.endswith(".alpha")}  # kohya default: alpha = rank
    state = load_res_adapter(sd15, no_alpha)
    assert state.config.alpha == 4.0
    load_res_adapter(sd15, {**no_alpha, **norms})
    assert torch.allclose(unet_out(sd15), with_alpha, atol=1e-6)
    unload_res_adapter(sd15)


# ----------------------------------------------------------------------------------------------------------------------
# scales, unload, fuse
# ----------------------------------------------------------------------------------------------------------------------


@both
def test_scale_zero_is_base_and_unload_restores_bitwise(pipe, tmp_path):
    lora, norms = official_state_dicts(pipe.unet)
    folder = write_official(tmp_path / "ra", lora, norms)
    snapshot, hooks = unet_snapshot(pipe.unet), hook_count(pipe.unet)
    base = unet_out(pipe)
    pipe.load_res_adapter(folder, lora_scale=0.0, norm_scale=0.0)
    assert torch.equal(unet_out(pipe), base)
    pipe.set_res_adapter_scale(lora_scale=1.0, norm_scale=1.0)
    assert not torch.allclose(unet_out(pipe), base)
    pipe.fuse_res_adapter()
    pipe.unload_res_adapter()  # unload from the fused state
    assert get_res_adapter(pipe) is None and pipe.res_adapter is None
    assert_unet_equal(pipe.unet, snapshot)
    assert hook_count(pipe.unet) == hooks
    assert torch.equal(unet_out(pipe), base)


@both
def test_fused_equals_unfused_and_leaves_no_hooks(pipe, tmp_path):
    lora, norms = official_state_dicts(pipe.unet)
    folder = write_official(tmp_path / "ra", lora, norms)
    hooks = hook_count(pipe.unet)
    pipe.load_res_adapter(folder, lora_scale=0.7)
    assert hook_count(pipe.unet) == hooks + len(lora) // 3
    unfused = unet_out(pipe)
    before = unet_snapshot(pipe.unet)
    pipe.fuse_res_adapter()
    assert hook_count(pipe.unet) == hooks  # fused: no extra module or hook in the forward
    assert pipe.res_adapter.fused
    torch.testing.assert_close(unet_out(pipe), unfused, atol=1e-5, rtol=1e-5)
    pipe.set_res_adapter_scale(lora_scale=0.3)  # re-fused at the new scale
    fused_03 = unet_out(pipe)
    pipe.unfuse_res_adapter()
    assert_unet_equal(pipe.unet, before)
    assert hook_count(pipe.unet) == hooks + len(lora) // 3
    torch.testing.assert_close(unet_out(pipe), fused_03, atol=1e-5, rtol=1e-5)


def test_norm_scale_half_lies_between(sd15, tmp_path):
    lora, norms = official_state_dicts(sd15.unet)
    write_official(tmp_path / "ra", None, norms)
    base_params = {k: v for k, v in unet_snapshot(sd15.unet).items() if k in norms}
    base = unet_out(sd15)
    load_res_adapter(sd15, tmp_path / "ra", norm_scale=1.0)
    full = unet_out(sd15)
    set_res_adapter_scale(sd15, norm_scale=0.5)
    half = unet_out(sd15)
    live = sd15.unet.state_dict()
    for key, value in norms.items():
        torch.testing.assert_close(live[key], (base_params[key] + value) / 2, atol=1e-6, rtol=0)
    d_full, d_half = (full - base).norm(), (half - base).norm()
    assert 0 < d_half < d_full
    assert (full - half).norm() < d_full
    set_res_adapter_scale(sd15, norm_scale=0.0)
    assert torch.equal(unet_out(sd15), base)
    unload_res_adapter(sd15)


def test_scale_arguments_are_checked(sd15, tmp_path):
    lora, norms = official_state_dicts(sd15.unet)
    folder = write_official(tmp_path / "ra", lora, norms)
    with pytest.raises(ValueError, match="lora_scale"):
        load_res_adapter(sd15, folder, lora_scale=float("nan"))
    assert get_res_adapter(sd15) is None
    with pytest.raises(ValueError, match="No ResAdapter is loaded"):
        set_res_adapter_scale(sd15, lora_scale=0.5)
    load_res_adapter(sd15, folder)
    with pytest.raises(ValueError, match="norm_scale"):
        set_res_adapter_scale(sd15, norm_scale="high")
    unload_res_adapter(sd15)


# ----------------------------------------------------------------------------------------------------------------------
# strictness: bad files leave the pipeline unchanged
# ----------------------------------------------------------------------------------------------------------------------


def _bad_cases(sd15_unet, sdxl_unet, tmp_path: Path) -> dict[str, tuple[Path, str]]:
    lora, norms = official_state_dicts(sd15_unet)
    xl_lora, xl_norms = official_state_dicts(sdxl_unet)
    cases = {}
    # an SDXL ResAdapter saved with our metadata
    cases["family-metadata"] = (
        write_official(tmp_path / "xl_meta", xl_lora, xl_norms, adapter_metadata("res_adapter", "sdxl")),
        "made for a 'sdxl' base",
    )
    # an official SDXL folder without metadata: caught by the keys / shapes
    cases["family-keys"] = (write_official(tmp_path / "xl", xl_lora, xl_norms), "do not fit this model")
    missing = dict(lora)
    missing.pop(next(k for k in lora if k.endswith("lora_up.weight")))
    cases["missing"] = (write_official(tmp_path / "missing", missing, norms), "1 missing keys")
    extra = {**norms, "mid_block.resnets.0.conv1.weight": torch.zeros(3)}
    cases["extra"] = (write_official(tmp_path / "extra", lora, extra), "unexpected keys: mid_block.resnets.0.conv1")
    shape = dict(lora)
    key = next(k for k in lora if k.endswith("lora_down.weight"))
    shape[key] = torch.zeros(4, 3, 3, 3)
    cases["shape"] = (write_official(tmp_path / "shape", shape, norms), "shape mismatches")
    nan = dict(norms)
    nan[next(iter(nan))] = torch.full_like(next(iter(nan.values())), float("nan"))
    cases["nan"] = (write_official(tmp_path / "nan", lora, nan), "NaN")
    ints = {k: (v.to(torch.int32) if k.endswith(".weight") and "norm1" in k else v) for k, v in norms.items()}
    cases["dtype"] = (write_official(tmp_path / "dtype", lora, ints), "floating point")
    other_kind = adapter_metadata("mv_adapter", "sd1")
    cases["kind"] = (write_official(tmp_path / "kind", lora, norms, other_kind), "'mv_adapter' adapter")
    corrupt = write_official(tmp_path / "corrupt", lora, norms)
    data = (corrupt / LORA_WEIGHTS_NAME).read_bytes()
    (corrupt / LORA_WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    cases["truncated"] = (corrupt, "truncated or corrupt")
    pickled = tmp_path / "pickled" / "pytorch_lora_weights.bin"
    pickled.parent.mkdir()
    torch.save(lora, pickled)
    cases["pickle"] = (pickled, "pickle")
    unknown = tmp_path / "unknown.safetensors"
    save_file({"foo.bar": torch.zeros(2)}, str(unknown))
    cases["layout"] = (unknown, "Unrecognised res_adapter weight layout")
    return cases


def test_bad_files_raise_and_leave_pipeline_unchanged(sd15, sdxl, tmp_path):
    cases = _bad_cases(sd15.unet, sdxl.unet, tmp_path)
    # with a good adapter already loaded: a failed load must keep it exactly as it was
    good_lora, good_norms = official_state_dicts(sd15.unet, seed=5)
    load_res_adapter(sd15, write_official(tmp_path / "good", good_lora, good_norms), lora_scale=0.8)
    snapshot, hooks, out = unet_snapshot(sd15.unet), hook_count(sd15.unet), unet_out(sd15)
    state = get_res_adapter(sd15)
    for name, (path, message) in cases.items():
        with pytest.raises(AdapterWeightsError, match=message) as info:
            load_res_adapter(sd15, path)
        assert isinstance(info.value, ValueError), name
        assert get_res_adapter(sd15) is state, name
        assert_unet_equal(sd15.unet, snapshot)
        assert hook_count(sd15.unet) == hooks, name
        assert torch.equal(unet_out(sd15), out), name
    unload_res_adapter(sd15)


def test_bad_file_on_clean_pipeline_changes_nothing(sd15, sdxl, tmp_path):
    cases = _bad_cases(sd15.unet, sdxl.unet, tmp_path)
    snapshot, hooks = unet_snapshot(sd15.unet), hook_count(sd15.unet)
    base_image = generate(sd15)
    for name in ("family-metadata", "family-keys", "missing", "extra", "shape"):
        path, message = cases[name]
        with pytest.raises(AdapterWeightsError, match=message):
            sd15.load_res_adapter(path)
        assert get_res_adapter(sd15) is None
    assert_unet_equal(sd15.unet, snapshot)
    assert hook_count(sd15.unet) == hooks
    assert np.array_equal(generate(sd15), base_image)


def test_error_lists_missing_unexpected_and_mismatched(sd15, tmp_path):
    lora, norms = official_state_dicts(sd15.unet)
    bad = dict(lora)
    dropped = sorted(k for k in lora if k.endswith(".alpha"))[0]
    bad.pop(dropped)
    bad["lora_unet_conv_in.lora_down.weight"] = torch.zeros(4, 4, 3, 3)
    with pytest.raises(AdapterWeightsError) as info:
        load_res_adapter(sd15, write_official(tmp_path / "x", bad, norms))
    assert info.value.missing == [dropped]
    assert "lora_unet_conv_in.lora_down.weight" in info.value.unexpected
    assert "nothing was changed" in str(info.value)


def test_missing_path_and_empty_folder(sd15, tmp_path):
    with pytest.raises(FileNotFoundError, match="No ResAdapter file or folder"):
        load_res_adapter(sd15, tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=LORA_WEIGHTS_NAME):
        load_res_adapter(sd15, tmp_path / "empty")
    assert get_res_adapter(sd15) is None


def test_pickle_allowed_when_asked(sd15, tmp_path):
    lora, norms = official_state_dicts(sd15.unet)
    folder = tmp_path / "pickled"
    folder.mkdir()
    torch.save(lora, folder / "pytorch_lora_weights.bin")
    torch.save(norms, folder / "diffusion_pytorch_model.bin")
    with pytest.raises(FileNotFoundError):
        load_res_adapter(sd15, folder)  # the folder has no safetensors, and pickles are not looked for
    state = load_res_adapter(sd15, folder, allow_pickle=True)
    assert state.lora is not None and state.norms is not None
    unload_res_adapter(sd15)


# ----------------------------------------------------------------------------------------------------------------------
# saving
# ----------------------------------------------------------------------------------------------------------------------


@both
@pytest.mark.parametrize("fmt", ["official", "diffusion-adapters"])
def test_save_then_load_gives_the_same_adapter(pipe, tmp_path, fmt):
    lora, norms = official_state_dicts(pipe.unet)
    pipe.load_res_adapter(write_official(tmp_path / "src", lora, norms), norm_scale=0.5)
    out = unet_out(pipe)
    written = pipe.save_res_adapter(tmp_path / "saved", format=fmt)
    names = sorted(p.name for p in written)
    assert names == (sorted([LORA_WEIGHTS_NAME, NORM_WEIGHTS_NAME]) if fmt == "official" else [SINGLE_FILE_NAME])
    # saved values are the adapter's (not the 0.5 blend), in the official key names
    saved = {}
    for path in written:
        sd, meta = load_weights(path)
        saved.update(sd)
        assert meta["diffusion_adapters.kind"] == "res_adapter"
        assert meta["diffusion_adapters.base_family"] == ("sdxl" if pipe.unet.config.addition_embed_type else "sd1")
    assert saved.keys() == {**lora, **norms}.keys()
    for key, value in {**lora, **norms}.items():
        assert torch.equal(saved[key], value), key
    pipe.unload_res_adapter()
    pipe.load_res_adapter(tmp_path / "saved", norm_scale=0.5)
    assert torch.equal(unet_out(pipe), out)


def test_resolution_range_metadata_and_defaults(sd15, sdxl, tmp_path):
    lora, norms = official_state_dicts(sd15.unet)
    state = load_res_adapter(sd15, write_official(tmp_path / "plain", lora, norms))
    assert state.resolution_range == (128, 1024)  # official SD 1.5 v2 default
    state.config.min_resolution, state.config.max_resolution = 16, 64
    save_res_adapter(sd15, tmp_path / "mine.safetensors", format="diffusion-adapters")
    state = load_res_adapter(sd15, tmp_path / "mine.safetensors")
    assert state.resolution_range == (16, 64)
    unload_res_adapter(sd15)
    xl_lora, xl_norms = official_state_dicts(sdxl.unet)
    state = load_res_adapter(sdxl, write_official(tmp_path / "xl", xl_lora, xl_norms))
    assert state.resolution_range == (256, 1536)
    unload_res_adapter(sdxl)
    with pytest.raises(ValueError, match="format"):
        save_res_adapter(sdxl, tmp_path / "x", format="ckpt")


def test_diffusers_lora_loader_reads_our_official_files(tmp_path):
    """The official loading recipe (diffusers `load_lora_weights` + `unet.load_state_dict(strict=False)`) gives the
    same UNet output as our loader on the same files."""
    ours = tiny_models.make_pipeline("sd15")
    theirs = tiny_models.make_pipeline("sd15")
    lora, norms = official_state_dicts(ours.unet)
    folder = write_official(tmp_path / "ra", lora, norms)
    load_res_adapter(ours, folder)
    theirs.load_lora_weights(folder, weight_name=LORA_WEIGHTS_NAME, adapter_name="res_adapter")
    missing, unexpected = theirs.unet.load_state_dict(norms, strict=False)
    assert not unexpected
    torch.testing.assert_close(unet_out(ours), unet_out(theirs), atol=1e-5, rtol=1e-5)


def test_peft_saved_sampler_lora_loads(tmp_path):
    """A ResAdapter LoRA round-tripped through diffusers (load_lora_weights + save_lora_weights) loads in ours."""
    pipe = tiny_models.make_pipeline("sd15")
    lora, norms = official_state_dicts(pipe.unet)
    folder = write_official(tmp_path / "ra", lora, norms)
    load_res_adapter(pipe, folder)
    expected = unet_out(pipe)
    unload_res_adapter(pipe)
    pipe.load_lora_weights(folder, weight_name=LORA_WEIGHTS_NAME, adapter_name="res_adapter")
    from peft.utils import get_peft_model_state_dict

    peft_sd = get_peft_model_state_dict(pipe.unet, adapter_name="res_adapter")
    pipe.unload_lora_weights()
    peft_sd = {f"unet.{k}": v for k, v in peft_sd.items()}
    import json

    peft_meta = {"lora_adapter_metadata": json.dumps({"r": 4, "lora_alpha": 2.0})}
    state = load_res_adapter(pipe, {**peft_sd, **norms}, metadata=peft_meta)
    assert state.config.alpha == 2.0
    torch.testing.assert_close(unet_out(pipe), expected, atol=1e-5, rtol=1e-5)
    unload_res_adapter(pipe)


# ----------------------------------------------------------------------------------------------------------------------
# pipelines: sizes and the resolution guard
# ----------------------------------------------------------------------------------------------------------------------


@both
@pytest.mark.parametrize("size", [(32, 48), (56, 24)])
def test_non_square_and_off_native_sizes_run(pipe, tmp_path, size):
    lora, norms = official_state_dicts(pipe.unet)
    pipe.load_res_adapter(write_official(tmp_path / "ra", lora, norms))
    height, width = size
    image = generate(pipe, height=height, width=width)
    assert image.shape == (1, height, width, 3)
    assert np.isfinite(image).all()


@both
def test_resolution_guard_names_nearest_sizes(pipe):
    multiple = 8  # tiny models: UNet down-sampling 4 x VAE 2
    assert tiny_models.UNET_DOWNSAMPLE_FACTOR * tiny_models.VAE_SCALE_FACTOR == multiple
    with pytest.raises(ValueError, match=r"`height` must be a multiple of 8 .*nearest valid sizes: 32 or 40"):
        generate(pipe, height=36, width=32)
    with pytest.raises(ValueError, match=r"`width` .*nearest valid sizes: 8 or 16"):
        generate(pipe, height=32, width=12)
    with pytest.raises(ValueError, match="`width` must be a positive multiple"):
        pipe.check_res_adapter_resolution(32, 0)


def test_resolution_range_warning(sd15, tmp_path, caplog):
    lora, norms = official_state_dicts(sd15.unet)
    meta = adapter_metadata("res_adapter", "sd1", min_resolution=24, max_resolution=48)
    sd15.load_res_adapter(write_official(tmp_path / "ra", lora, norms, meta))
    logger = "pipelines.pipeline_res_adapter"
    with caplog.at_level(logging.WARNING, logger=logger):
        sd15.check_res_adapter_resolution(32, 48)
    assert not [r for r in caplog.records if r.name == logger]
    with caplog.at_level(logging.WARNING, logger=logger):
        generate(sd15, height=64, width=32, steps=1)
    assert any("outside the range" in r.getMessage() and "24-48" in r.getMessage() for r in caplog.records)
    sd15.unload_res_adapter()


def test_sd21_family(tmp_path):
    pipe = tiny_models.make_pipeline("sd21", pipeline_cls=ResAdapterPipeline)
    lora, norms = official_state_dicts(pipe.unet)
    base = unet_out(pipe)
    state = pipe.load_res_adapter(write_official(tmp_path / "ra", lora, norms))
    assert state.config.family == "sd2" and state.resolution_range is None
    assert not torch.allclose(unet_out(pipe), base)
    pipe.unload_res_adapter()
    assert torch.equal(unet_out(pipe), base)


def test_fp16_files_load_and_save(sd15, tmp_path):
    lora, norms = official_state_dicts(sd15.unet)
    half = {k: v.half() for k, v in {**lora, **norms}.items()}
    load_res_adapter(sd15, {k: v.float() for k, v in half.items()})
    expected = unet_out(sd15)
    folder = write_official(
        tmp_path / "fp16",
        {k: v for k, v in half.items() if k.startswith("lora_unet_")},
        {k: v for k, v in half.items() if not k.startswith("lora_unet_")},
    )
    load_res_adapter(sd15, folder)
    assert torch.equal(unet_out(sd15), expected)  # fp16 values are exact in the fp32 model
    written = save_res_adapter(sd15, tmp_path / "out16", format="official", dtype=torch.float16)
    sd, _ = load_weights(written[0])
    assert all(v.dtype == torch.float16 for k, v in sd.items() if not k.endswith(".alpha"))
    unload_res_adapter(sd15)


def test_benchmark_smoke():
    from benchmarks.bench_res_adapter import run

    payload = run("tiny", rounds=1, repeats=1, write=False)
    assert payload["extra_modules_fused"] == 0 and payload["extra_hooks_fused"] == 0
    assert payload["fused_vs_unfused_max_abs_diff"] < 1e-4
    assert [row["variant"] for row in payload["rows"]] == ["base", "fused", "unfused"]


def test_non_strict_loads_a_partial_adapter(sd15, tmp_path):
    lora, norms = official_state_dicts(sd15.unet)
    dropped_norm = "mid_block.resnets.0.norm1"
    partial_norms = {k: v for k, v in norms.items() if not k.startswith(dropped_norm + ".")}
    dropped_conv = sorted({k.split(".")[0] for k in lora})[0]
    partial_lora = {k: v for k, v in lora.items() if not k.startswith(dropped_conv + ".")}
    folder = write_official(tmp_path / "partial", partial_lora, partial_norms)
    with pytest.raises(AdapterWeightsError, match="missing keys"):
        load_res_adapter(sd15, folder)
    base_norm = sd15.unet.get_submodule(dropped_norm).weight.detach().clone()
    state = load_res_adapter(sd15, folder, strict=False)
    assert len(state.lora.paths) == len(sampler_conv_paths(sd15.unet)) - 1
    assert torch.equal(sd15.unet.get_submodule(dropped_norm).weight, base_norm)
    bad = {**partial_norms, f"{dropped_norm}.weight": norms[f"{dropped_norm}.weight"]}  # weight without its bias
    with pytest.raises(AdapterWeightsError, match=f"{dropped_norm}.bias"):
        load_res_adapter(sd15, bad, strict=False)
    unload_res_adapter(sd15)
