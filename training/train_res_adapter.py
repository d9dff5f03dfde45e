"""Train a ResAdapter (arXiv 2403.02084) on the shared training core.

Only the sampler LoRAs (kohya LoCon on every ``Downsample2D`` / ``Upsample2D`` conv) and the ``norm1`` / ``norm2``
GroupNorms of the ResNet blocks train; everything else is frozen (asserted). The data are images at many resolutions
and aspect ratios: every batch is one *bucket* (one ``height x width``), drawn from all sizes between
``--min_side`` and ``--max_side`` in steps of ``--bucket_step`` whose aspect ratio is at most
``--max_aspect_ratio``; an image goes to the buckets nearest its own aspect ratio and is resized to cover the bucket,
then cropped. (The shared ``--resolution`` option is not used: the buckets set every size.)

Data (``--dataset``):

``folder``     ``--train_data_dir`` with images and captions, either in ``metadata.jsonl`` (``{"file_name": ...,
               "text": ...}`` per line, the Hugging Face image-folder layout), in a ``--manifest`` JSONL (``image`` or
               ``file_name``, and ``text`` or ``caption``; paths relative to the manifest), or in sidecar ``.txt``
               files next to each image (no caption file: empty caption).
``miniworld``  procedural mini-world renders at every bucket size (no files needed), for the embedded model.

The result is written in the official two-file layout (``pytorch_lora_weights.safetensors`` +
``diffusion_pytorch_model.safetensors``) with our metadata (base family, rank, alpha, trained resolution range), so
both our loader and the official recipe read it. Validation images are generated at several resolutions.

Run::

    accelerate launch -m training.train_res_adapter --pretrained_model_name_or_path <sd folder> \
        --train_data_dir <images> --output_dir out/res_adapter --min_side 256 --max_side 1024 --bucket_step 64 \
        --train_batch_size 8 --max_train_steps 20000 --learning_rate 1e-4 --validation_steps 1000
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers.utils import logging
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from adapters.res_adapter import (
    KIND,
    get_res_adapter,
    init_res_adapter,
    res_adapter_state_dict,
    resnet_norm_paths,
    save_res_adapter,
)
from adapters.res_adapter.convert import split_state_dict
from pipelines.utils import is_sdxl_config, size_multiple
from training.core import AdapterTrainer, TrainConfig, diffusion_loss, get_target, main, sample_noise, sample_timesteps
from training.core.config import option_help as _h
from training.data import BucketBatchSampler, ImageCaptionDataset, collate, make_buckets

logger = logging.get_logger(__name__)

__all__ = [
    "MiniworldBucketDataset",
    "ResAdapterTrainConfig",
    "ResAdapterTrainer",
    "parse_size",
]


@dataclass
class ResAdapterTrainConfig(TrainConfig):
    """Options of ResAdapter training (on top of the shared ones)."""

    dataset: str = field(default="folder", metadata=_h("Training data.", ["folder", "miniworld"]))
    manifest: str | None = field(default=None, metadata=_h("JSONL manifest of images and captions (folder data)."))
    rank: int = field(default=16, metadata=_h("Rank of the sampler LoRAs (official v2: 16)."))
    alpha: float = field(default=8.0, metadata=_h("kohya alpha of the sampler LoRAs (official v2: 8)."))
    train_norms: bool = field(default=True, metadata=_h("Train the ResNet GroupNorms (the official release does)."))
    min_side: int = field(default=128, metadata=_h("Smallest bucket side in pixels."))
    max_side: int = field(default=1024, metadata=_h("Largest bucket side in pixels."))
    bucket_step: int = field(
        default=64, metadata=_h("Bucket sides are multiples of this (a multiple of the model's size factor).")
    )
    max_aspect_ratio: float = field(default=2.0, metadata=_h("Largest long/short side ratio of a bucket."))
    caption_dropout: float = field(default=0.0, metadata=_h("Share of empty captions."))
    init_adapter: str | None = field(
        default=None,
        metadata=_h("Start from this ResAdapter (folder or file; same rank, e.g. one trained on an earlier base)."),
    )
    num_samples: int = field(default=4096, metadata=_h("Items of the mini-world dataset."))
    validation_resolutions: list[str] = field(
        default_factory=list,
        metadata=_h("Validation sizes, 'HxW' or 'S' (default: min, middle and max side squares + one non-square)."),
    )
    validation_inference_steps: int = field(default=20, metadata=_h("Denoising steps of validation images."))

    def validate(self) -> None:
        super().validate()
        if self.rank < 1:
            raise ValueError(f"`rank` must be >= 1, got {self.rank}.")
        if self.bucket_step < 1:
            raise ValueError(f"`bucket_step` must be >= 1, got {self.bucket_step}.")
        if not 0 < self.min_side <= self.max_side:
            raise ValueError(f"Need 0 < `min_side` <= `max_side`, got {self.min_side} and {self.max_side}.")
        if self.min_side % self.bucket_step or self.max_side % self.bucket_step:
            raise ValueError(
                f"`min_side` ({self.min_side}) and `max_side` ({self.max_side}) must be multiples of `bucket_step` "
                f"({self.bucket_step})."
            )
        if self.max_aspect_ratio < 1:
            raise ValueError(f"`max_aspect_ratio` must be >= 1, got {self.max_aspect_ratio}.")
        if not 0 <= self.caption_dropout < 1:
            raise ValueError(f"`caption_dropout` must be in [0, 1), got {self.caption_dropout}.")
        for size in self.validation_resolutions:
            parse_size(size)


def parse_size(text: str | int, name: str = "validation_resolutions") -> tuple[int, int]:
    """``'HxW'`` or ``'S'`` (a square) -> ``(height, width)``; ``ValueError`` naming ``name`` unless positive ints."""
    parts = str(text).lower().replace(" ", "").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise ValueError(f"`{name}` entries must be 'HxW' or 'S' (positive ints), got {text!r}.")
    return values[0], values[1]


# ----------------------------------------------------------------------------------------------------------------------
# data: buckets, sampler, folder dataset and collate come from training.data; items are requested as (index, h, w)
# ----------------------------------------------------------------------------------------------------------------------


class MiniworldBucketDataset(Dataset):
    """Mini-world renders at any requested size: ``dataset[(index, height, width)]`` renders scene ``index``
    (deterministic in ``(seed, index)``) at that size, framed the same at every aspect ratio."""

    def __init__(self, length: int, seed: int = 0, max_objects: int = 2):
        self.length = int(length)
        self.seed = int(seed)
        self.max_objects = int(max_objects)
        self._by_size: dict[tuple[int, int], Dataset] = {}

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, Any]:
        from training.base_model import MINIWORLD_FRAMING
        from training.miniworld import TextImageDataset

        index, height, width = key
        data = self._by_size.get((height, width))
        if data is None:
            framing = {**MINIWORLD_FRAMING, "max_objects": self.max_objects}
            data = TextImageDataset((height, width), length=self.length, seed=self.seed, **framing)
            self._by_size[(height, width)] = data
        item = data[index]
        return {
            "pixel_values": item["pixel_values"],
            "text": item["text"],
            "original_size": (height, width),
            "crop_top_left": (0, 0),
        }


# ----------------------------------------------------------------------------------------------------------------------
# trainer
# ----------------------------------------------------------------------------------------------------------------------


class ResAdapterTrainer(AdapterTrainer):
    """ResAdapter training: sampler LoRAs + ResNet GroupNorms of a frozen SD 1.x/2.x or SDXL base."""

    config_class = ResAdapterTrainConfig
    adapter_kind = KIND
    collate_fn = staticmethod(collate)

    # -- models --------------------------------------------------------------------------------------------------------
    def build_models(self) -> None:
        cfg = self.config
        path = Path(cfg.pretrained_model_name_or_path or "")
        index = json.loads((path / "model_index.json").read_text()) if (path / "model_index.json").is_file() else {}
        self.is_xl = is_sdxl_config(index)
        names = ["vae", "text_encoder", "tokenizer", "unet", "noise_scheduler"]
        if self.is_xl:
            names += ["text_encoder_2", "tokenizer_2"]
        self.load_components(*names)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        multiple = size_multiple(vae_config=self.vae.config, unet_config=self.unet.config)
        if cfg.bucket_step % multiple:
            raise ValueError(
                f"`bucket_step` ({cfg.bucket_step}) must be a multiple of {multiple} (this model's UNet down-sampling "
                f"x VAE factor)."
            )
        state = init_res_adapter(
            self.unet,
            cfg.rank,
            cfg.alpha,
            min_resolution=cfg.min_side,
            max_resolution=cfg.max_side,
            norms=cfg.train_norms,
        )
        self.res_lora = state.lora  # an attribute, so the core prepares (and DDP-syncs) it
        self.res_lora.requires_grad_(True)
        self.norm_keys = set()
        if state.norms is not None:
            for path_ in resnet_norm_paths(self.unet):
                norm = self.unet.get_submodule(path_)
                norm.requires_grad_(True)
                self.norm_keys |= {f"unet.{path_}.weight", f"unet.{path_}.bias"}
        if cfg.init_adapter:
            from adapters.res_adapter.loader import read_res_adapter

            # a full, strict load of LoRA and norms (shape or key mismatches are refused with the keys listed)
            self.load_adapter_state_dict(read_res_adapter(cfg.init_adapter)[0])
        self._rng = random.Random(self.seed or 0)
        # nothing but the sampler LoRAs and the ResNet norms may train
        self.assert_only_trainable(lambda name: name.startswith("res_lora.") or name in self.norm_keys)

    def trainable_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        params = [(f"res_lora.{n}", p) for n, p in self.res_lora.named_parameters()]
        params += [
            (n, p) for n, p in (("unet." + k, v) for k, v in self.unet.named_parameters()) if n in self.norm_keys
        ]
        return params

    # -- weights -------------------------------------------------------------------------------------------------------
    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        return res_adapter_state_dict(self.unet)[0]

    @torch.no_grad()
    def load_adapter_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        lora_sd, norm_sd = split_state_dict(state_dict)
        self.res_lora.load_kohya_state_dict(lora_sd)
        params = dict(self.unet.named_parameters())
        expected = {k[len("unet.") :] for k in self.norm_keys}
        if set(norm_sd) != expected:
            raise ValueError("The checkpoint's GroupNorm keys do not match this model's ResNet norms.")
        for key, value in norm_sd.items():
            params[key].copy_(value.to(params[key].device, params[key].dtype))

    def adapter_metadata(self) -> dict[str, str]:
        state = get_res_adapter(self.unet)
        state.config.extra["diffusion_adapters.trained_steps"] = str(self.global_step)
        return res_adapter_state_dict(self.unet)[1]

    def save_adapter(self, output_dir) -> Path:
        """The official two-file layout (with our metadata) in ``output_dir``."""
        self.adapter_metadata()  # records the trained steps
        save_res_adapter(self.unet, output_dir, format="official")
        return Path(output_dir)

    # -- data ----------------------------------------------------------------------------------------------------------
    def build_dataset(self) -> Dataset:
        cfg = self.config
        if cfg.dataset == "miniworld":
            return MiniworldBucketDataset(cfg.num_samples, seed=self.seed or 0)
        return ImageCaptionDataset(
            cfg.train_data_dir,
            cfg.manifest,
            on_missing_file=cfg.on_missing_file,
            center_crop=cfg.center_crop,
            random_flip=cfg.random_flip,
            seed=self.seed or 0,
        )

    def build_dataloader(self, dataset: Dataset) -> DataLoader:
        cfg = self.config
        buckets = make_buckets(cfg.min_side, cfg.max_side, cfg.bucket_step, cfg.max_aspect_ratio)
        ratios = getattr(dataset, "aspect_ratios", None)
        sampler = BucketBatchSampler(len(dataset), buckets, cfg.train_batch_size, ratios, seed=self.seed or 0)
        return DataLoader(
            dataset, batch_sampler=sampler, collate_fn=self.collate_fn, num_workers=cfg.dataloader_num_workers
        )

    # -- loss ----------------------------------------------------------------------------------------------------------
    def _encode_prompt(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        def ids(tokenizer) -> torch.Tensor:
            return tokenizer(
                texts,
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(self.device)

        if not self.is_xl:
            return self.text_encoder(ids(self.tokenizer))[0], None
        out_1 = self.text_encoder(ids(self.tokenizer), output_hidden_states=True)
        out_2 = self.text_encoder_2(ids(self.tokenizer_2), output_hidden_states=True)
        states = torch.cat([out_1.hidden_states[-2], out_2.hidden_states[-2]], dim=-1)
        return states, out_2[0]

    def compute_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Diffusion loss on VAE latents ``(B, 4, H/f, W/f)`` of one bucket's ``pixel_values`` ``(B, 3, H, W)``."""
        cfg = self.config
        pixels = batch["pixel_values"].to(self.device, dtype=self.weight_dtype)
        with torch.no_grad():
            latents = self.vae.encode(pixels).latent_dist.sample() * self.vae.config.scaling_factor
            # The VAE can return channels_last latents; GroupNorm's backward on a channels_last input that does not
            # require grad segfaults in torch 2.13 (CPU), and the ResNet norms train here: use the default layout.
            latents = latents.contiguous()
            texts = [t if self._rng.random() >= cfg.caption_dropout else "" for t in batch["text"]]
            states, pooled = self._encode_prompt(texts)
        noise = sample_noise(latents, cfg.noise_offset)
        timesteps = sample_timesteps(latents.shape[0], self.noise_scheduler, device=latents.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        kwargs = {}
        if self.is_xl:
            height, width = pixels.shape[-2:]
            target_size = torch.tensor([height, width], dtype=torch.float32).expand(len(texts), 2)
            time_ids = torch.cat([batch["original_size"], batch["crop_top_left"], target_size], dim=1)
            kwargs["added_cond_kwargs"] = {
                "text_embeds": pooled.to(states.dtype),
                "time_ids": time_ids.to(self.device, dtype=states.dtype),
            }
        pred = self.unet(noisy, timesteps, encoder_hidden_states=states, **kwargs).sample
        target = get_target(self.noise_scheduler, latents, noise, timesteps)
        return diffusion_loss(pred.float(), target.float(), timesteps, self.noise_scheduler, cfg.snr_gamma)

    # -- validation ----------------------------------------------------------------------------------------------------
    def validation_sizes(self) -> list[tuple[int, int]]:
        cfg = self.config
        if cfg.validation_resolutions:
            return [parse_size(s) for s in cfg.validation_resolutions]
        step = cfg.bucket_step
        middle = max(cfg.min_side, round((cfg.min_side + cfg.max_side) / 2 / step) * step)
        wide = min(cfg.max_side, max(cfg.min_side, round(middle * 1.5 / step) * step))
        return [(cfg.min_side, cfg.min_side), (middle, middle), (cfg.max_side, cfg.max_side), (middle, wide)]

    def log_validation(self, step: int) -> list[Image.Image]:
        from diffusers import DDIMScheduler

        from pipelines.pipeline_res_adapter import ResAdapterPipeline, ResAdapterXLPipeline

        cfg = self.config
        components = {
            "vae": self.vae,
            "text_encoder": self.text_encoder,
            "tokenizer": self.tokenizer,
            "unet": self.unet,
            "scheduler": DDIMScheduler.from_config(self.noise_scheduler.config),
        }
        if self.is_xl:
            pipe = ResAdapterXLPipeline(**components, text_encoder_2=self.text_encoder_2, tokenizer_2=self.tokenizer_2)
        else:
            pipe = ResAdapterPipeline(
                **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
            )
        pipe.set_progress_bar_config(disable=True)
        self.unet.eval()
        prompts = cfg.validation_prompts or ["a red cube"]
        images = []
        for height, width in self.validation_sizes():
            generator = torch.Generator(self.device).manual_seed(self.seed or 0)
            out = pipe(
                prompts,
                height=height,
                width=width,
                num_inference_steps=cfg.validation_inference_steps,
                num_images_per_prompt=cfg.num_validation_images,
                generator=generator,
            )
            images.extend(out.images)
        return images


if __name__ == "__main__":
    main(ResAdapterTrainer)
