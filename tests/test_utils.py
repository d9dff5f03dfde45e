"""``pipelines.utils``: the helpers written once (SDXL detection, sizes, ``PRESET=PATH``, tiny CLIP tokenizers)."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest

from pipelines import utils

REPO = Path(__file__).resolve().parent.parent


def fake_pipe(vae_factor, blocks, sample, addition_embed_type=None):
    config = types.SimpleNamespace(
        block_out_channels=blocks, sample_size=sample, addition_embed_type=addition_embed_type
    )
    return types.SimpleNamespace(unet=types.SimpleNamespace(config=config), vae_scale_factor=vae_factor)


@pytest.mark.parametrize(
    ("vae_factor", "blocks", "sample", "multiple", "native"),
    [
        (8, (320, 640, 1280, 1280), 64, 64, 512),  # SD 1.5
        (8, (320, 640, 1280), 128, 32, 1024),  # SDXL
        (2, (32, 64, 64), 16, 8, 32),  # the embedded base
        (8, (1,), [96, 96], 8, 768),  # sample_size as a list
        (None, None, None, 64, 512),  # unknown parts count as SD's
    ],
)
def test_size_multiple_and_native_resolution(vae_factor, blocks, sample, multiple, native):
    pipe = fake_pipe(vae_factor, blocks, sample)
    assert utils.size_multiple(pipe) == multiple and utils.native_resolution(pipe) == native
    if vae_factor is not None:  # the same from the config files, without a pipeline
        vae = {"block_out_channels": [0] * (vae_factor.bit_length())}
        unet = {"block_out_channels": list(blocks), "sample_size": sample}
        assert utils.size_multiple(vae_config=vae, unet_config=unet) == multiple
        assert utils.native_resolution(vae_config=vae, unet_config=unet) == native


def test_is_sdxl_one_rule_for_folders_dicts_and_pipelines(tmp_path, tiny_sd15, tiny_sdxl):
    assert utils.is_sdxl(tiny_sdxl) and not utils.is_sdxl(tiny_sd15)
    assert utils.is_sdxl(json.loads((Path(tiny_sdxl) / "model_index.json").read_text()))
    assert not utils.is_sdxl({"_class_name": "StableDiffusionPipeline", "text_encoder_2": [None, None]})
    assert utils.is_sdxl({"_class_name": "StableDiffusionXLImg2ImgPipeline"})
    assert utils.is_sdxl({"text_encoder_2": object()})  # a pipeline's components
    assert utils.is_sdxl(fake_pipe(8, (1, 2, 3), 128, addition_embed_type="text_time"))
    assert not utils.is_sdxl(fake_pipe(8, (1, 2, 3, 4), 64))
    (tmp_path / "unet").mkdir()  # a folder with only a UNet config
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"addition_embed_type": "text_time"}))
    assert utils.is_sdxl(tmp_path) and not utils.is_sdxl(tmp_path / "unet")


def test_parse_preset_paths():
    assert utils.parse_preset_paths(["lcm=a/b", " TCD = c "]) == {"lcm": "a/b", "tcd": "c"}
    assert utils.parse_preset_paths([]) == {}
    for bad in ("lcm", "=a", "lcm=", " = "):
        with pytest.raises(ValueError, match=r"--x must look like PRESET=PATH .* got"):
            utils.parse_preset_paths([bad], "--x")


def test_clip_bpe_layouts():
    vocab, merges = utils.clip_bpe([])  # the placeholder models' tokenizer: bytes only, CLIP's order
    assert len(vocab) == 514 and merges == [] and next(iter(vocab)) == "!" and vocab["!</w>"] == 256
    assert list(vocab)[-2:] == [utils.BOS_TOKEN, utils.EOS_TOKEN]
    byte_vocab, _ = utils.clip_bpe([], byte_order="byte")
    assert byte_vocab.keys() == vocab.keys() and next(iter(byte_vocab)) == "Ā"  # byte 0 first
    # repeats weigh: "ab" twice outweighs "cd" once; merges stop at the budget, or when each word is one symbol
    _, merges = utils.clip_bpe(["ab", "ab", "cd"], max_merges=1)
    assert merges == [("a", "b</w>")]
    vocab, merges = utils.clip_bpe(["cube", "cube", "sphere"])
    assert "cube</w>" in vocab and "sphere</w>" in vocab and len(vocab) == 514 + len(merges)


def test_tokenizers_match_the_shipped_and_tiny_models():
    """The embedded base's tokenizer (training.base_model) rebuilds the shipped one exactly; the tiny test models'
    keeps its layout (its hash is part of the tiny-model cache key)."""
    from pipelines.testing import TOKENIZER_VOCAB_SIZE, build_tokenizer
    from training.base_model import build_tokenizer as base_tokenizer
    from training.base_model import clip_bpe, miniworld_vocabulary

    shipped = REPO / "assets" / "base" / "tokenizer" / "tokenizer.json"
    if shipped.is_file():
        model = json.loads(shipped.read_text(encoding="utf-8"))["model"]
        vocab, merges = clip_bpe(miniworld_vocabulary())
        assert list(vocab.items()) == list(model["vocab"].items())
        assert [tuple(m.split()) if isinstance(m, str) else tuple(m) for m in model["merges"]] == merges
    assert TOKENIZER_VOCAB_SIZE == 807
    tiny = build_tokenizer()
    assert tiny("a red cube").input_ids[:5] == tiny("a red cube").input_ids[:5]
    assert len(tiny) == 807 and tiny.pad_token == utils.EOS_TOKEN and build_tokenizer("!").pad_token == "!"
    assert base_tokenizer().tokenize("a red cube") == ["a</w>", "red</w>", "cube</w>"]
