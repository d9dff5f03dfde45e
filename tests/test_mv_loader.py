"""MV-Adapter weight files: the official single-file layout (written here by the test), ours, strict validation."""

from __future__ import annotations

import pytest
import torch
from diffusers import T2IAdapter
from diffusers.models.attention_processor import Attention
from safetensors.torch import load_file, save_file

from adapters.mv_adapter import MVAdapter
from adapters.weights import AdapterWeightsError
from pipelines import MVAdapterPipeline


def official_state_dict(unet, *, use_ref: bool, xl: bool, vae_scale_factor: int = 2, seed: int = 0):
    """Random tensors under the official key names, built from the UNet's structure (not from our adapter)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, module in unet.named_modules():
        if not (isinstance(module, Attention) and name.endswith("attn1")):
            continue
        query, inner = module.to_q.in_features, module.to_q.out_features
        for branch in ["mv", "ref"] if use_ref else ["mv"]:
            for proj in "qkv":
                sd[f"{name}.processor.to_{proj}_{branch}.weight"] = torch.randn(inner, query, generator=g)
            sd[f"{name}.processor.to_out_{branch}.0.weight"] = torch.randn(query, inner, generator=g)
            sd[f"{name}.processor.to_out_{branch}.0.bias"] = torch.randn(query, generator=g)
    ch = list(unet.config.block_out_channels)
    if xl:
        enc = T2IAdapter(6, [ch[0], ch[1], ch[2], ch[2]], 2, 2 * vae_scale_factor, "full_adapter_xl")
    else:
        enc = T2IAdapter(6, ch, unet.config.layers_per_block, vae_scale_factor, "full_adapter")
    for key, value in enc.state_dict().items():
        assert key.startswith("adapter.")
        sd[key] = torch.randn(value.shape, generator=g)
    return sd


@pytest.fixture(scope="module")
def sd21_pipe(tiny_sd21):
    pipe = MVAdapterPipeline.from_pretrained(tiny_sd21, mv_adapter=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize(("variant", "use_ref", "mode"), [("t2mv", False, "row"), ("i2mv", True, "row")])
def test_official_file_loads_all_keys_and_saves_back(sd21_pipe, tmp_path, variant, use_ref, mode):
    sd = official_state_dict(sd21_pipe.unet, use_ref=use_ref, xl=False)
    path = tmp_path / f"mvadapter_{variant}_sd21.safetensors"
    save_file(sd, str(path))
    adapter = sd21_pipe.load_mv_adapter(path)
    assert adapter.config.variant == variant and adapter.config.use_ref is use_ref
    assert adapter.config.attention_mode == mode
    ours = adapter.state_dict()
    assert set(ours) == set(sd)  # every key consumed, nothing left over
    assert all(torch.equal(ours[k], sd[k]) for k in sd)
    out = tmp_path / "back.safetensors"
    adapter.save(out, format="official")
    back = load_file(str(out))
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    sd21_pipe.unload_mv_adapter()


def test_geometry_variant_on_sdxl(tiny_sdxl, tmp_path):
    pipe = MVAdapterPipeline.from_pretrained(tiny_sdxl, mv_adapter=False)
    sd = official_state_dict(pipe.unet, use_ref=True, xl=True)
    path = tmp_path / "mvadapter_ig2mv_sdxl.safetensors"
    save_file(sd, str(path))
    adapter = pipe.load_mv_adapter(path)
    assert (adapter.config.condition, adapter.config.attention_mode, adapter.config.use_ref) == (
        "geometry",
        "row_col",
        True,
    )
    assert set(adapter.state_dict()) == set(sd)


def _processors(unet):
    return {n: m.processor for n, m in unet.named_modules() if isinstance(m, Attention)}


@pytest.mark.parametrize("damage", ["missing", "unexpected", "shape"])
def test_bad_file_raises_and_leaves_pipeline_untouched(sd21_pipe, tmp_path, damage):
    good = sd21_pipe.init_mv_adapter()
    before = _processors(sd21_pipe.unet)
    sd = official_state_dict(sd21_pipe.unet, use_ref=False, xl=False)
    key = next(k for k in sd if k.endswith("to_q_mv.weight"))
    if damage == "missing":
        del sd[key]
    elif damage == "unexpected":
        sd["down_blocks.9.attn1.processor.to_q_mv.weight"] = torch.zeros(2, 2)
    else:
        sd[key] = torch.zeros(3, 3)
    save_file(sd, str(tmp_path / "bad.safetensors"))
    with pytest.raises(AdapterWeightsError) as err:
        sd21_pipe.load_mv_adapter(tmp_path / "bad.safetensors")
    assert {"missing": err.value.missing, "unexpected": err.value.unexpected, "shape": err.value.mismatched}[damage]
    assert sd21_pipe.mv_adapter is good
    assert _processors(sd21_pipe.unet) == before
    sd21_pipe.unload_mv_adapter()


def test_our_format_roundtrip_and_family_check(sd21_pipe, tiny_sd15, tmp_path):
    adapter = sd21_pipe.init_mv_adapter(use_ref=True, attention_mode="full", num_views=4)
    torch.manual_seed(0)
    for p in adapter.trainable_parameters():
        torch.nn.init.normal_(p, std=0.1)
    path = adapter.save(tmp_path / "ours.safetensors")
    loaded = sd21_pipe.load_mv_adapter(path)
    assert loaded.config == adapter.config
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in adapter.state_dict().items())
    other = MVAdapterPipeline.from_pretrained(tiny_sd15, mv_adapter=False)
    with pytest.raises(AdapterWeightsError, match="sd2"):
        other.load_mv_adapter(path)
    assert other.mv_adapter is None
    sd21_pipe.unload_mv_adapter()


def test_custom_condition_encoder(sd21_pipe):
    class Zeros(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.zeros(()))

        def forward(self, cond):
            return [cond.new_zeros(1)[0] * self.scale]

    adapter = MVAdapter.from_unet(sd21_pipe.unet, cond_encoder=Zeros(), attach=False)
    assert "scale" in adapter.state_dict() and adapter.config.cond_encoder is None
