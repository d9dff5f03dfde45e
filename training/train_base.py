"""Stage 2 of the embedded base: train its UNet and text encoder on mini-world text-image pairs.

Run ``python -m training.train_base --pretrained_model_name_or_path <stage-1 folder> --output_dir <dir>``. The VAE
stays frozen; the UNet and the small CLIP text encoder train together with the epsilon objective (Min-SNR-gamma
weighting optional), with a share of empty captions so the model supports classifier-free guidance. The output
folder is a complete ``StableDiffusionPipeline`` in the hub layout.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from training.core import AdapterTrainer, TrainConfig, diffusion_loss, get_target, main, sample_noise, sample_timesteps


@dataclass
class BaseConfig(TrainConfig):
    num_samples: int = field(default=8192, metadata={"help": "Distinct mini-world images (rendered once, cached)."})
    max_objects: int = field(default=2, metadata={"help": "Objects per training scene (1..max_objects)."})
    caption_dropout: float = field(default=0.1, metadata={"help": "Share of empty captions (for CFG)."})
    train_text_encoder: bool = field(default=True, metadata={"help": "Train the text encoder with the UNet."})


class BaseTrainer(AdapterTrainer):
    """Text-to-image training of the embedded base's UNet (and text encoder) on mini-world renders."""

    config_class = BaseConfig
    adapter_kind = "base"

    def build_models(self) -> None:
        self.load_components("vae", "text_encoder", "tokenizer", "unet", "noise_scheduler")
        self.unet.requires_grad_(True).train()
        if self.config.train_text_encoder:
            self.text_encoder.requires_grad_(True).train()
        self._rng = random.Random(self.seed or 0)

    def _trained(self) -> dict[str, torch.nn.Module]:
        models = {"unet": self.unet}
        if self.config.train_text_encoder:
            models["text_encoder"] = self.text_encoder
        return models

    def trainable_parameters(self):
        return [(f"{m}.{n}", p) for m, module in self._trained().items() for n, p in module.named_parameters()]

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{m}.{k}": v for m, module in self._trained().items() for k, v in module.state_dict().items()}

    def load_adapter_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        for m, module in self._trained().items():
            prefix = f"{m}."
            module.load_state_dict({k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)})

    def build_dataset(self):
        from training.base_model import miniworld_images

        cfg = self.config
        return miniworld_images(cfg.resolution, cfg.num_samples, seed=self.seed or 0, max_objects=cfg.max_objects)

    def compute_loss(self, batch) -> torch.Tensor:
        """Epsilon loss on VAE latents ``(B, 4, H/2, W/2)`` of ``batch["pixel_values"]`` ``(B, 3, H, W)``."""
        cfg = self.config
        pixels = batch["pixel_values"].to(self.device, dtype=self.weight_dtype)
        with torch.no_grad():
            latents = self.vae.encode(pixels).latent_dist.sample() * self.vae.config.scaling_factor
        texts = [t if self._rng.random() >= cfg.caption_dropout else "" for t in batch["text"]]
        text_states = self.encode_text(texts)
        noise = sample_noise(latents, cfg.noise_offset)
        timesteps = sample_timesteps(latents.shape[0], self.noise_scheduler, device=latents.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        pred = self.unet(noisy, timesteps, encoder_hidden_states=text_states).sample
        target = get_target(self.noise_scheduler, latents, noise, timesteps)
        return diffusion_loss(pred, target, timesteps, self.noise_scheduler, cfg.snr_gamma)

    def _pipeline(self):
        from diffusers import DDIMScheduler, StableDiffusionPipeline

        unwrap = self.accelerator.unwrap_model
        return StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=unwrap(self.text_encoder),
            tokenizer=self.tokenizer,
            unet=unwrap(self.unet),
            scheduler=DDIMScheduler.from_pretrained(self.config.pretrained_model_name_or_path, subfolder="scheduler"),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )

    def log_validation(self, step: int):
        prompts = self.config.validation_prompts or ["a red cube", "a blue sphere", "a yellow cone", "a green torus"]
        pipe = self._pipeline()
        pipe.set_progress_bar_config(disable=True)
        size = self.config.resolution
        generator = torch.Generator(self.device).manual_seed(0)
        images = pipe(prompts, num_inference_steps=25, height=size, width=size, generator=generator).images
        return [img.resize((size * 4, size * 4)) for img in images]

    def save_adapter(self, output_dir) -> Path:
        self._pipeline().save_pretrained(output_dir)
        return Path(output_dir)


def export_checkpoint(checkpoint: str | Path, base: str | Path, output_dir: str | Path, ema: bool = True) -> Path:
    """Write a complete base folder from a training checkpoint (to stop a run early and keep its result).

    Args:
        checkpoint: a ``checkpoint-<step>`` folder of this trainer.
        base: the folder training started from (VAE, tokenizer, scheduler and the architectures come from it; a VAE
            whose decoder was fine-tuned afterwards, with the same encoder, may be used).
        output_dir: where the ``StableDiffusionPipeline`` folder is written.
        ema: use the EMA weights when the checkpoint has them.
    """
    from diffusers import StableDiffusionPipeline

    from adapters.weights import load_weights
    from training.core import ADAPTER_WEIGHTS_NAME, EMA_WEIGHTS_NAME

    checkpoint = Path(checkpoint)
    pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None, requires_safety_checker=False)
    modules = {"unet": pipe.unet, "text_encoder": pipe.text_encoder}
    if ema and (checkpoint / EMA_WEIGHTS_NAME).is_file():
        # the EMA file holds shadow.<i> in the order of trainable_parameters(): the UNet's, then the text encoder's
        shadow, _ = load_weights(checkpoint / EMA_WEIGHTS_NAME)
        names = [f"{m}.{n}" for m, module in modules.items() for n, _ in module.named_parameters()]
        count = sum(1 for k in shadow if k.startswith("shadow."))
        if count not in (len(names), len(names) - sum(1 for n in names if n.startswith("text_encoder."))):
            raise ValueError(f"{checkpoint} holds {count} EMA tensors; this base has {len(names)} trainable ones.")
        state_dict = {names[i]: shadow[f"shadow.{i}"] for i in range(count)}
    else:
        state_dict, _ = load_weights(checkpoint / ADAPTER_WEIGHTS_NAME)
    for prefix, module in modules.items():
        part = {k[len(prefix) + 1 :]: v for k, v in state_dict.items() if k.startswith(prefix + ".")}
        if prefix == "unet" or part:
            own = module.state_dict()
            module.load_state_dict({**own, **part} if prefix == "text_encoder" else part, strict=True)
    pipe.save_pretrained(output_dir)
    return Path(output_dir)


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["export"]:
        import argparse

        parser = argparse.ArgumentParser(description="Export a training checkpoint as a base folder.")
        parser.add_argument("export")
        parser.add_argument("--checkpoint", required=True)
        parser.add_argument("--base", required=True)
        parser.add_argument("--output_dir", required=True)
        parser.add_argument("--no_ema", action="store_true")
        args = parser.parse_args()
        export_checkpoint(args.checkpoint, args.base, args.output_dir, ema=not args.no_ema)
    else:
        main(BaseTrainer)
