"""MV-Adapter attention: batched processor vs a plain reference, zero-init == base, scales, equivariance, unload."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from adapters.mv_adapter import (
    MVAdapter,
    MVAdapterAttnProcessor,
    MVAttentionState,
    camera_maps,
    default_cameras,
    encode_condition,
)


def _softmax_attn(q, k, v):
    """Plain attention on (tokens, heads, d) tensors with einsum."""
    w = torch.einsum("qhd,khd->hqk", q, k) / q.shape[-1] ** 0.5
    return torch.einsum("hqk,khd->qhd", w.softmax(-1), v)


def reference_processor(attn, proc, x, views, hw, ref=None, mv_scale=1.0, ref_scale=1.0):
    """Loop-based reference of the decoupled attention (per sample, per view, per row)."""
    bv, n, c = x.shape
    heads = attn.heads
    h, w = hw
    base = AttnProcessor2_0()(attn, x)
    out = base.clone()
    for s in range(bv // views):
        xs = x[s * views : (s + 1) * views]  # (V, N, C)

        q, k, v = (layer(xs).reshape(views, n, heads, -1) for layer in (proc.to_q_mv, proc.to_k_mv, proc.to_v_mv))
        mv = torch.zeros(views, n, heads, q.shape[-1])
        for view in range(views):
            if proc.mode == "full":
                mv[view] = _softmax_attn(q[view], k.reshape(-1, heads, q.shape[-1]), v.reshape(-1, heads, q.shape[-1]))
            else:
                qg, kg, vg = (t.reshape(views, h, w, heads, -1) for t in (q, k, v))
                for row in range(h):
                    keys = kg[:, row].reshape(-1, heads, q.shape[-1])
                    vals = vg[:, row].reshape(-1, heads, q.shape[-1])
                    mv[view].reshape(h, w, heads, -1)[row] = _softmax_attn(qg[view, row], keys, vals)
        mv = proc.to_out_mv[0](mv.reshape(views, n, -1))
        out[s * views : (s + 1) * views] += mv_scale * mv
        if ref is not None:
            qr = proc.to_q_ref(xs).reshape(views, n, heads, -1)
            kr = proc.to_k_ref(ref[s]).reshape(-1, heads, qr.shape[-1])
            vr = proc.to_v_ref(ref[s]).reshape(-1, heads, qr.shape[-1])
            r = torch.stack([_softmax_attn(qr[view], kr, vr) for view in range(views)])
            out[s * views : (s + 1) * views] += ref_scale * proc.to_out_ref[0](r.reshape(views, n, -1))
    return out


def _random_processor(mode, use_ref, dim=16, heads=2, seed=0):
    torch.manual_seed(seed)
    attn = Attention(dim, heads=heads, dim_head=dim // heads)
    state = MVAttentionState()
    proc = MVAdapterAttnProcessor(
        "layer", dim, dim, state=state, base_processor=AttnProcessor2_0(), use_ref=use_ref, mode=mode
    )
    for p in proc.parameters():
        torch.nn.init.normal_(p, std=0.3)
    attn.set_processor(proc)
    return attn, proc, state


@pytest.mark.parametrize("mode", ["full", "row"])
def test_batched_processor_matches_reference(mode):
    attn, proc, state = _random_processor(mode, use_ref=True)
    views, h, w = 3, 2, 5  # non-square token grid
    x = torch.randn(2 * views, h * w, 16)
    ref = torch.randn(2, 7, 16)
    state.num_views, state.latent_hw = views, (h, w)
    state.ref_states = {"layer": ref}
    state.mv_scale, state.ref_scale = 0.7, 1.3
    with torch.no_grad():
        out = attn(x)
        expected = reference_processor(attn, proc, x, views, (h, w), ref, 0.7, 1.3)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_row_col_processor_matches_reference():
    attn, proc, state = _random_processor("row_col", use_ref=False)
    views, h, w = 6, 3, 3
    x = torch.randn(views, h * w, 16)
    state.num_views, state.latent_hw = views, (h, w)
    q, k, v = (layer(x).reshape(views, h, w, 2, 8) for layer in (proc.to_q_mv, proc.to_k_mv, proc.to_v_mv))
    row = torch.zeros(4, h, w, 2, 8)
    for view in range(4):
        for r in range(h):
            row[view, r] = _softmax_attn(q[view, r], k[:4, r].reshape(-1, 2, 8), v[:4, r].reshape(-1, 2, 8))
    cq, ck, cv = (torch.cat([t[0:1].flip(2), t[[2, 4, 5]]]) for t in (q, k, v))
    col = torch.zeros(4, h, w, 2, 8)
    for view in range(4):
        for c in range(w):
            keys = ck[:, :, c].reshape(-1, 2, 8)
            col[view, :, c] = _softmax_attn(cq[view, :, c], keys, cv[:, :, c].reshape(-1, 2, 8))
    col[0] = col[0].flip(1)
    mv = torch.stack([(row[0] + col[0]) / 2, row[1], (row[2] + col[1]) / 2, row[3], col[2], col[3]])
    with torch.no_grad():
        expected = AttnProcessor2_0()(attn, x) + proc.to_out_mv[0](mv.reshape(views, h * w, 16))
        out = attn(x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    state.num_views = 4
    with pytest.raises(ValueError, match="6 views"):
        attn(torch.randn(4, h * w, 16))


# ----------------------------------------------------------------------------------------------------------------------
# on the tiny UNets
# ----------------------------------------------------------------------------------------------------------------------


def _unet_inputs(unet, batch, hw=(8, 12), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, unet.config.in_channels, *hw, generator=g)
    ehs = torch.randn(batch, 7, unet.config.cross_attention_dim, generator=g)
    kw = {}
    if unet.config.addition_embed_type == "text_time":
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        kw["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, pooled, generator=g),
            "time_ids": torch.tensor([[hw[0] * 2.0, hw[1] * 2.0, 0, 0, hw[0] * 2.0, hw[1] * 2.0]] * batch),
        }
    return x, torch.tensor(400), ehs, kw


@pytest.fixture(scope="module", params=["tiny_sd15", "tiny_sd21", "tiny_sdxl"])
def unet(request):
    path = request.getfixturevalue(request.param)
    return UNet2DConditionModel.from_pretrained(path, subfolder="unet").eval()


@torch.no_grad()
def test_fresh_adapter_is_base_and_unload_restores(unet):
    views = 3
    x, t, ehs, kw = _unet_inputs(unet, views)
    originals = {name: attn.processor for name, attn in unet.named_modules() if isinstance(attn, Attention)}
    base = unet(x, t, ehs, **kw).sample
    adapter = MVAdapter.from_unet(unet, vae_scale_factor=2, use_ref=True, num_views=views)
    cache = {}
    with adapter.state.override(caching=True, cache=cache, num_views=1):
        unet(x[:1], 0, ehs[:1], **{k: {kk: vv[:1] for kk, vv in v.items()} for k, v in kw.items()})
    assert set(cache) == set(adapter.processors)
    adapter.state.ref_states = cache
    assert torch.equal(unet(x, t, ehs, **kw).sample, base)  # zero-initialised output projections
    # random adapter weights with both scales 0 == base, bit for bit
    for p in adapter.trainable_parameters():
        torch.nn.init.normal_(p, std=0.05)
    assert not torch.equal(unet(x, t, ehs, **kw).sample, base)
    adapter.set_scale(0.0, ref_scale=0.0)
    assert torch.equal(unet(x, t, ehs, **kw).sample, base)
    adapter.unload()
    now = {name: attn.processor for name, attn in unet.named_modules() if isinstance(attn, Attention)}
    assert all(now[k] is originals[k] for k in originals)
    assert not any(".processor." in k for k in unet.state_dict())
    assert torch.equal(unet(x, t, ehs, **kw).sample, base)


@torch.no_grad()
@pytest.mark.parametrize("mode", ["row", "full"])
def test_view_equivariance(tiny_sd15, mode):
    unet = UNet2DConditionModel.from_pretrained(tiny_sd15, subfolder="unet").eval()
    views = 4
    adapter = MVAdapter.from_unet(unet, vae_scale_factor=2, num_views=views, attention_mode=mode)
    torch.manual_seed(0)
    for p in adapter.trainable_parameters():
        torch.nn.init.normal_(p, std=0.05)
    x, t, ehs, kw = _unet_inputs(unet, views)
    cams = default_cameras(views)
    perm = [2, 0, 3, 1]

    ehs = ehs[:1].expand(views, -1, -1)  # one prompt for all views of the sample

    def run(latents, cameras):
        feats = encode_condition(adapter.cond_encoder, camera_maps(cameras, 16, 24))
        return unet(latents, t, ehs, down_intrablock_additional_residuals=feats).sample

    out = run(x, cams)
    out_perm = run(x[perm], cams[perm])
    torch.testing.assert_close(out_perm, out[perm], atol=1e-5, rtol=1e-5)
    # the views really interact: changing one view changes the others
    x2 = x.clone()
    x2[0] += 1.0
    assert not torch.allclose(run(x2, cams)[1:], out[1:], atol=1e-6)
    adapter.unload()
