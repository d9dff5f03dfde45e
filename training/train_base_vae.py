"""Stage 1 of the embedded base: train its ``AutoencoderKL`` on mini-world renders.

Run ``python -m training.train_base_vae --pretrained_model_name_or_path <init folder> --output_dir <dir>`` where the
init folder comes from ``python -m training.base_model --out <init folder>``. The output folder is a complete base in
the SD 1.5 layout (the other components copied unchanged), with the trained VAE and its latent ``scaling_factor``
measured on the training data (1 / std of the latents), ready for stage 2 (``training.train_base``).

``--sizes 16 32 48 64`` trains at several sizes ('HxW' or 'S'; one size per batch, drawn at random) instead of
``--resolution`` alone: the mini-world draws objects smaller at smaller sizes, so a decoder trained at the native size
only loses the small objects that ResAdapter generations at half the native size hold. With ``--decoder_only`` the
latent space stays the same, so a UNet and adapters trained on it stay valid.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from training.core import AdapterTrainer, TrainConfig, main


@dataclass
class BaseVAEConfig(TrainConfig):
    kl_weight: float = field(default=1e-6, metadata={"help": "Weight of the KL term of the VAE loss."})
    num_samples: int = field(default=4096, metadata={"help": "Distinct mini-world images (rendered once, cached)."})
    decoder_only: bool = field(
        default=False,
        metadata={"help": "Train only the decoder (the latent space, and a UNet trained on it, stay valid)."},
    )
    object_weight: float = field(
        default=0.0,
        metadata={"help": "Extra loss weight on pixels that differ from the image's border colour (the objects)."},
    )
    scaling_samples: int = field(
        default=256, metadata={"help": "Training images used to measure the latent scaling factor at the end."}
    )
    sizes: list[str] = field(
        default_factory=list,
        metadata={"help": "Train at these sizes ('HxW' or 'S'), one per batch, instead of --resolution alone."},
    )

    def validate(self) -> None:
        super().validate()
        from training.train_res_adapter import parse_size

        for size in self.sizes:
            parse_size(size, "sizes")


def _object_mask(pixels: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """``(B, 1, H, W)`` 1 where a pixel differs from the mean colour of its image's top row (the background)."""
    background = pixels[:, :, :1, :].mean(dim=3, keepdim=True)
    return ((pixels - background).abs().amax(dim=1, keepdim=True) > threshold).float()


class BaseVAETrainer(AdapterTrainer):
    """Reconstruction + KL training of the embedded base's VAE on mini-world images."""

    config_class = BaseVAEConfig
    adapter_kind = "base_vae"

    def build_models(self) -> None:
        self.load_components("vae")
        trained = self.vae.decoder if self.config.decoder_only else self.vae
        trained.requires_grad_(True).train()

    def trainable_parameters(self):
        return [(n, p) for n, p in self.vae.named_parameters() if p.requires_grad]

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        return self.vae.state_dict()

    def load_adapter_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.vae.load_state_dict(state_dict, strict=True)

    def build_dataset(self):
        from training.base_model import MINIWORLD_FRAMING, miniworld_images
        from training.train_res_adapter import MiniworldBucketDataset

        if not hasattr(self, "_dataset"):
            if self.config.sizes:  # items are (index, height, width), see build_dataloader
                max_objects = MINIWORLD_FRAMING["max_objects"]
                self._dataset = MiniworldBucketDataset(self.config.num_samples, self.seed or 0, max_objects)
            else:
                self._dataset = miniworld_images(self.config.resolution, self.config.num_samples, seed=self.seed or 0)
        return self._dataset

    def build_dataloader(self, dataset):
        """With ``--sizes``: batches of one size each (drawn per batch), else the shared shuffled loader."""
        from torch.utils.data import DataLoader

        from training.data import BucketBatchSampler
        from training.train_res_adapter import parse_size

        if not self.config.sizes:
            return super().build_dataloader(dataset)
        sizes = sorted({parse_size(s, "sizes") for s in self.config.sizes})
        sampler = BucketBatchSampler(len(dataset), sizes, self.config.train_batch_size, seed=self.seed or 0)
        workers = self.config.dataloader_num_workers
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=self.collate_fn, num_workers=workers)

    def _pixels(self, indices) -> torch.Tensor:
        """``(len(indices), 3, H, W)`` training images (at ``--resolution`` in every mode)."""
        data, res = self.build_dataset(), self.config.resolution
        keys = [(i, res, res) for i in indices] if self.config.sizes else list(indices)
        return torch.stack([data[k]["pixel_values"] for k in keys]).to(self.device)

    def compute_loss(self, batch) -> torch.Tensor:
        """``batch["pixel_values"]``: ``(B, 3, H, W)`` in [-1, 1]; weighted MSE + L1 reconstruction plus a small KL."""
        pixels = batch["pixel_values"].to(self.device).float()
        posterior = self.vae.encode(pixels).latent_dist
        recon = self.vae.decode(posterior.sample()).sample.float()
        weight = 1.0 + self.config.object_weight * _object_mask(pixels)
        err = weight * ((recon - pixels) ** 2 + 0.5 * (recon - pixels).abs())
        loss = err.sum() / (weight.sum() * pixels.shape[1])
        if not self.config.decoder_only:
            loss = loss + self.config.kl_weight * posterior.kl().mean()
        return loss

    def log_validation(self, step: int):
        from PIL import Image

        pixels = self._pixels(range(4))
        recon = self.vae.decode(self.vae.encode(pixels).latent_dist.mode()).sample.clamp(-1, 1)
        both = torch.cat([pixels, recon], dim=3)  # original | reconstruction
        arrays = ((both.permute(0, 2, 3, 1).cpu().numpy() + 1) * 127.5).round().astype("uint8")
        return [Image.fromarray(a) for a in arrays]

    @torch.no_grad()
    def save_adapter(self, output_dir) -> Path:
        out = Path(output_dir)
        source = Path(self.config.pretrained_model_name_or_path)
        vae = self.accelerator.unwrap_model(self.vae).eval()
        if not self.config.decoder_only:  # a decoder-only run keeps the latent space, so keeps its scaling too
            latents = []
            for start in range(0, self.config.scaling_samples, 32):
                pixels = self._pixels(range(start, min(start + 32, self.config.scaling_samples)))
                latents.append(vae.encode(pixels).latent_dist.mode().float())
            vae.register_to_config(scaling_factor=float(1.0 / torch.cat(latents).std()))
        for item in source.iterdir():
            if item.name == "vae" or item.name.startswith("checkpoint"):
                continue
            target = out / item.name
            if item.is_dir():
                shutil.copytree(item, target, dirs_exist_ok=True)
            else:
                shutil.copy2(item, target)
        vae.save_pretrained(out / "vae")
        return out


if __name__ == "__main__":
    main(BaseVAETrainer)
