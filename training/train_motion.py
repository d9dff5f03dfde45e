"""Train an AnimateDiff motion module (a diffusers ``MotionAdapter``) for a frozen SD 1.5-family base.

Used for the embedded models: ``python -m training.train_motion --pretrained_model_name_or_path assets/base
--output_dir runs/motion`` trains on mini-world clips (spinning, bouncing, sliding, turning objects and orbiting
cameras) and writes ``output_dir/motion_adapter/`` in diffusers' layout, loadable with
``MotionAdapter.from_pretrained``. Only the temporal motion modules train; every weight of the image base stays
frozen (the base is inflated with ``UNetMotionModel.from_unet2d``). diffusers zero-initialises the motion modules'
output projections, so training starts from the still-image model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from training.core import AdapterTrainer, TrainConfig, diffusion_loss, get_target, main, sample_noise, sample_timesteps


@dataclass
class MotionConfig(TrainConfig):
    num_frames: int = field(default=8, metadata={"help": "Frames per training clip."})
    num_samples: int = field(default=1024, metadata={"help": "Distinct mini-world clips (rendered once, cached)."})
    max_objects: int = field(default=2, metadata={"help": "Objects per training scene."})
    motion_num_attention_heads: int = field(default=4, metadata={"help": "Heads of the temporal attention."})
    motion_max_seq_length: int = field(default=32, metadata={"help": "Longest clip the positional encoding covers."})
    caption_dropout: float = field(default=0.1, metadata={"help": "Share of empty captions (for CFG)."})


class MotionTrainer(AdapterTrainer):
    """Motion-module training on mini-world clips with the image base frozen."""

    config_class = MotionConfig
    adapter_kind = "motion_adapter"

    def build_models(self) -> None:
        from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

        cfg = self.config
        self.load_components("vae", "text_encoder", "tokenizer", "noise_scheduler")
        unet2d = UNet2DConditionModel.from_pretrained(cfg.pretrained_model_name_or_path, subfolder="unet")
        adapter = MotionAdapter(
            block_out_channels=tuple(unet2d.config.block_out_channels),
            motion_layers_per_block=unet2d.config.layers_per_block,
            motion_num_attention_heads=cfg.motion_num_attention_heads,
            motion_norm_num_groups=unet2d.config.norm_num_groups,
            motion_max_seq_length=cfg.motion_max_seq_length,
            use_motion_mid_block=True,
        )
        unet = UNetMotionModel.from_unet2d(unet2d, adapter)
        unet.freeze_unet2d_params()
        self.unet = unet.to(self.device).train()
        import random

        self._rng = random.Random(self.seed or 0)

    def _motion_parameters(self):
        return [(n, p) for n, p in self.unet.named_parameters() if "motion_modules" in n]

    def trainable_parameters(self):
        return [(f"unet.{n}", p) for n, p in self._motion_parameters()]

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.unet.state_dict().items() if "motion_modules" in k}

    def load_adapter_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        from adapters.weights import validate_state_dict

        own = self.adapter_state_dict()
        validate_state_dict(state_dict, {k: v.shape for k, v in own.items()}, what="motion module")
        with torch.no_grad():
            for key, value in state_dict.items():
                own[key].copy_(value)

    def build_dataset(self):
        from training.base_model import MINIWORLD_FRAMING, CachedDataset
        from training.miniworld import VideoDataset

        cfg = self.config
        framing = {**MINIWORLD_FRAMING, "max_objects": cfg.max_objects}
        data = VideoDataset(cfg.num_frames, cfg.resolution, length=cfg.num_samples, seed=self.seed or 0, **framing)
        return CachedDataset(data)

    def compute_loss(self, batch) -> torch.Tensor:
        """Epsilon loss on clip latents ``(B, C, F, h, w)`` of ``batch["pixel_values"]`` ``(B, F, 3, H, W)``."""
        cfg = self.config
        pixels = batch["pixel_values"].to(self.device, dtype=self.weight_dtype)
        b, f = pixels.shape[:2]
        with torch.no_grad():
            latents = self.vae.encode(pixels.flatten(0, 1)).latent_dist.sample() * self.vae.config.scaling_factor
            latents = latents.unflatten(0, (b, f)).transpose(1, 2).contiguous()  # (B, C, F, h, w)
            texts = [t if self._rng.random() >= cfg.caption_dropout else "" for t in batch["text"]]
            # UNetMotionModel takes one text embedding per frame: (B * F, 77, D), as AnimateDiffPipeline passes it
            text_states = self.encode_text(texts).repeat_interleave(f, dim=0)
        noise = sample_noise(latents, cfg.noise_offset)
        timesteps = sample_timesteps(b, self.noise_scheduler, device=latents.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        pred = self.unet(noisy, timesteps, encoder_hidden_states=text_states).sample
        target = get_target(self.noise_scheduler, latents, noise, timesteps)
        return diffusion_loss(pred, target, timesteps, self.noise_scheduler, cfg.snr_gamma)

    def save_adapter(self, output_dir) -> Path:
        out = Path(output_dir) / "motion_adapter"
        self.accelerator.unwrap_model(self.unet).save_motion_modules(str(out))
        return out


if __name__ == "__main__":
    main(MotionTrainer)
