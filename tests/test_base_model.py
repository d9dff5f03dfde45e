"""training.base_model: the embedded base's tokenizer and SD 1.5 layout."""

from __future__ import annotations

import json

import torch

from training.base_model import (
    NATIVE_RESOLUTION,
    build_tokenizer,
    clip_bpe,
    init_base,
    miniworld_images,
    miniworld_vocabulary,
)


def test_every_caption_word_is_one_token():
    tokenizer = build_tokenizer()
    for word in miniworld_vocabulary():
        assert tokenizer.tokenize(word) == [f"{word}</w>"], word
    assert tokenizer.model_max_length == 77
    ids = tokenizer("a small red cube beside a large blue torus").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert len(ids) == 9 + 2  # one token per word, plus BOS and EOS


def test_unknown_text_still_tokenizes_byte_by_byte():
    tokenizer = build_tokenizer()
    pieces = tokenizer.tokenize("an astronaut!")
    assert "".join(pieces).replace("</w>", "") == "anastronaut!"


def test_bpe_is_deterministic_and_clip_shaped():
    vocab, merges = clip_bpe(["cube", "sphere", "cube"])
    assert (vocab, merges) == clip_bpe(["cube", "sphere"])
    assert list(vocab)[-2:] == ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 512 + len(merges) + 2


def test_init_base_loads_as_stable_diffusion(tmp_path):
    from diffusers import StableDiffusionPipeline

    init_base(tmp_path / "base")
    index = json.loads((tmp_path / "base" / "model_index.json").read_text())
    assert {"unet", "vae", "text_encoder", "tokenizer", "scheduler"} <= set(index)
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "base")
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red cube", num_inference_steps=1, output_type="np").images
    assert image.shape == (1, NATIVE_RESOLUTION, NATIVE_RESOLUTION, 3)
    assert pipe.vae_scale_factor == 2


def test_miniworld_images_are_cached():
    data = miniworld_images(NATIVE_RESOLUTION, 4)
    first = data[1]
    assert first is data[1]
    assert first["pixel_values"].shape == (3, NATIVE_RESOLUTION, NATIVE_RESOLUTION)
    assert torch.all(first["pixel_values"].abs() <= 1)


def test_export_checkpoint_maps_ema_shadows_to_parameters(tmp_path):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    from adapters.weights import save_weights
    from training.core import EMA_WEIGHTS_NAME
    from training.train_base import export_checkpoint

    base = init_base(tmp_path / "base")
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    text = CLIPTextModel.from_pretrained(base, subfolder="text_encoder")
    params = [p for _, p in unet.named_parameters()] + [p for _, p in text.named_parameters()]
    shadow = {f"shadow.{i}": p.detach() + 1.0 for i, p in enumerate(params)}
    save_weights({**shadow, "num_updates": torch.tensor(3)}, tmp_path / "ckpt" / EMA_WEIGHTS_NAME)
    out = export_checkpoint(tmp_path / "ckpt", base, tmp_path / "out")
    new_unet = UNet2DConditionModel.from_pretrained(out, subfolder="unet")
    new_text = CLIPTextModel.from_pretrained(out, subfolder="text_encoder")
    for (name, old), (_, new) in zip(unet.named_parameters(), new_unet.named_parameters()):
        assert torch.equal(new, old + 1.0), name
    for (name, old), (_, new) in zip(text.named_parameters(), new_text.named_parameters()):
        assert torch.equal(new, old + 1.0), name


def test_vae_decoder_only_run_at_several_sizes(tmp_path):
    """``--sizes``: every batch has one of the given sizes (both seen), only the decoder trains, and the latent space
    (encoder and scaling factor) is kept bit for bit, so a UNet trained on it stays valid."""
    import pytest
    from diffusers import AutoencoderKL

    from training.train_base_vae import BaseVAEConfig, BaseVAETrainer

    init_base(tmp_path / "init")
    argv = [
        "--pretrained_model_name_or_path", str(tmp_path / "init"), "--output_dir", str(tmp_path / "out"),
        "--decoder_only", "--sizes", "8", "16x8", "--resolution", "16", "--train_batch_size", "2",
        "--max_train_steps", "6", "--num_samples", "8", "--learning_rate", "1e-3", "--seed", "0",
    ]  # fmt: skip
    seen = []

    class Recording(BaseVAETrainer):
        def compute_loss(self, batch):
            seen.append(tuple(batch["pixel_values"].shape[-2:]))
            return super().compute_loss(batch)

    Recording(BaseVAEConfig.from_args(argv)).train()
    assert len(seen) == 6 and set(seen) == {(8, 8), (16, 8)}
    before = AutoencoderKL.from_pretrained(tmp_path / "init", subfolder="vae")
    after = AutoencoderKL.from_pretrained(tmp_path / "out", subfolder="vae")
    assert after.config.scaling_factor == before.config.scaling_factor
    old, new = before.state_dict(), after.state_dict()
    assert old.keys() == new.keys()
    assert all(torch.equal(old[k], new[k]) for k in old if not k.startswith("decoder."))
    assert any(not torch.equal(old[k], new[k]) for k in old if k.startswith("decoder."))
    with pytest.raises(ValueError, match="sizes"):
        BaseVAEConfig.from_args([*argv[:4], "--sizes", "0"])
