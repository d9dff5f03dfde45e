"""The embedded base model: a small SD 1.5-layout text-to-image model for the mini-world.

It has exactly the components and on-disk layout of a hub SD 1.5 repository (``model_index.json``, ``unet/``,
``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``), only smaller, so every pipeline and adapter loads it
by the same code path as a real checkpoint:

* ``AutoencoderKL`` with a down-scale factor of 2 and 4 latent channels (32 px images -> 16x16 latents);
* ``UNet2DConditionModel`` (32/64/64 channels, one layer per block, no attention at the highest resolution, two
  samplers: total down-scale 4 in latent space, so image sizes are multiples of 8);
* a 2-layer ``CLIPTextModel`` (64-d) and a ``CLIPTokenizer`` whose byte-level BPE is built from the mini-world's
  caption vocabulary, so every caption word is one token (any other text still tokenizes, byte by byte).

``python -m training.base_model --out DIR`` writes a randomly initialised (seeded) base that
``training.train_base_vae`` and ``training.train_base`` then train.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable
from pathlib import Path

import torch

from pipelines.utils import clip_bpe as _clip_bpe
from pipelines.utils import clip_tokenizer, write_clip_tokenizer_files

__all__ = [
    "NATIVE_RESOLUTION",
    "VAE_CONFIG",
    "UNET_CONFIG",
    "TEXT_ENCODER_CONFIG",
    "miniworld_vocabulary",
    "clip_bpe",
    "build_tokenizer",
    "init_base",
]

logger = logging.getLogger(__name__)

NATIVE_RESOLUTION = 32
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"

VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2,
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 16,
    "sample_size": NATIVE_RESOLUTION,
}

UNET_CONFIG = {
    "sample_size": NATIVE_RESOLUTION // 2,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [32, 64, 64],
    "layers_per_block": 1,
    "cross_attention_dim": 64,
    "attention_head_dim": 8,
    "norm_num_groups": 16,
}

TEXT_ENCODER_CONFIG = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 64,
}

SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": False,
}


def miniworld_vocabulary() -> list[str]:
    """Every word a mini-world caption can use, plus a few common prompt words."""
    from training.miniworld.scene import COLORS, MOTIONS, SHAPES, SIZES

    words = ["a", "an", "and", "beside", "the", "of", "with", "on", "background", "object", "view"]
    words += list(SHAPES) + list(COLORS) + list(SIZES)
    for phrase in MOTIONS.values():
        words += phrase.split()
    return list(dict.fromkeys(words))


def clip_bpe(words: Iterable[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """``(vocab, merges)`` of a CLIP byte-level BPE in which each of ``words`` (lower-cased, repeats ignored) is a
    single token: :func:`pipelines.utils.clip_bpe` with the byte symbols in byte order, the layout of the shipped
    base's tokenizer (changing it would change the token ids its text encoder was trained on)."""
    return _clip_bpe(dict.fromkeys(w.lower() for w in words), byte_order="byte")


def write_tokenizer_files(directory: str | Path, words: Iterable[str]) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` of :func:`clip_bpe` into ``directory``."""
    return write_clip_tokenizer_files(directory, *clip_bpe(words))


def build_tokenizer(words: Iterable[str] | None = None):
    """A ``CLIPTokenizer`` (``model_max_length=77``) over ``words`` (default: the mini-world vocabulary)."""
    return clip_tokenizer(*clip_bpe(miniworld_vocabulary() if words is None else words))


def init_base(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a randomly initialised (seeded) embedded base in the SD 1.5 hub layout and return its folder."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    torch.manual_seed(seed + 2)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TEXT_ENCODER_CONFIG,
    )
    text_encoder = CLIPTextModel(text_config)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(**SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    out_dir = Path(out_dir)
    pipe.save_pretrained(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a randomly initialised embedded base model.")
    parser.add_argument("--out", required=True, help="output folder (SD 1.5 hub layout)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    logger.info("wrote %s", init_base(args.out, args.seed))


if __name__ == "__main__":
    main()


class CachedDataset(torch.utils.data.Dataset):
    """Keeps each item of ``dataset`` in memory after its first render (for procedural data reused over epochs).

    Use with ``num_workers=0``: worker processes would each fill their own cache.
    """

    def __init__(self, dataset: torch.utils.data.Dataset):
        self.dataset = dataset
        self._cache: dict[int, object] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        if index not in self._cache:
            self._cache[index] = self.dataset[index]
        return self._cache[index]


#: Camera framing and scene size of the mini-world data every embedded model trains on (closer than the renderer's
#: default, at most two objects, so that objects cover enough of a 32 px image).
MINIWORLD_FRAMING = {"distance_range": (1.5, 1.8), "max_objects": 2}


def miniworld_images(resolution, num_samples: int, seed: int = 0, **kwargs) -> CachedDataset:
    """Cached mini-world text-image pairs with the embedded models' framing (:data:`MINIWORLD_FRAMING`).

    Items: ``{"pixel_values": (3, H, W) in [-1, 1], "text": str, "height": int, "width": int}``.
    """
    from training.miniworld import TextImageDataset

    data = TextImageDataset(resolution, length=num_samples, seed=seed, **{**MINIWORLD_FRAMING, **kwargs})
    return CachedDataset(data)
