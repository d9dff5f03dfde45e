"""adapters.processors: reversible swaps of attn1 processors on a diffusers UNet."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0

from adapters.processors import iter_self_attention, restore_attn_processors, swap_attn_processors


class ScaledProcessor(AttnProcessor2_0):
    """Doubles the attention output: enough to see that the swap took effect."""

    def __call__(self, attn, hidden_states, *args, **kwargs):
        return 2 * super().__call__(attn, hidden_states, *args, **kwargs)


@pytest.fixture
def unet(tiny_sd15):
    return UNet2DConditionModel.from_pretrained(tiny_sd15, subfolder="unet")


def _run(unet):
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(1, unet.config.in_channels, 16, 16, generator=g)
    text = torch.randn(1, 7, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        return unet(sample, 10, encoder_hidden_states=text).sample


def test_iter_self_attention_finds_only_attn1(unet):
    names = [name for name, _ in iter_self_attention(unet)]
    assert names and all(name.endswith("attn1") for name in names)
    n_transformer_blocks = sum(1 for n, _ in unet.named_modules() if n.endswith("transformer_blocks.0"))
    assert len(names) == n_transformer_blocks


def test_swap_changes_output_and_restore_is_exact(unet):
    base = _run(unet)
    before = {name: attn.processor for name, attn in iter_self_attention(unet)}
    originals = swap_attn_processors(unet, lambda name, attn: ScaledProcessor())
    assert set(originals) == set(before)
    assert not torch.allclose(_run(unet), base)
    restore_attn_processors(unet, originals)
    assert all(attn.processor is before[name] for name, attn in iter_self_attention(unet))
    assert torch.equal(_run(unet), base)


def test_none_leaves_processor_and_failing_factory_changes_nothing(unet):
    names = [name for name, _ in iter_self_attention(unet)]
    originals = swap_attn_processors(unet, lambda name, attn: ScaledProcessor() if name == names[0] else None)
    assert list(originals) == [names[0]]
    restore_attn_processors(unet, originals)
    before = {name: attn.processor for name, attn in iter_self_attention(unet)}
    calls = []

    def factory(name, attn):
        calls.append(name)
        if len(calls) == len(names):
            raise RuntimeError("boom")
        return ScaledProcessor()

    with pytest.raises(RuntimeError, match="boom"):
        swap_attn_processors(unet, factory)
    assert all(attn.processor is before[name] for name, attn in iter_self_attention(unet))
