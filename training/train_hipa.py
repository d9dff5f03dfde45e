"""Train a HiPA one-step LoRA (arXiv 2311.18158) against the multi-step teacher, on the shared training core.

1. Teacher pass (once, cached to disk and reused across epochs and resumes): for each prompt and seed, the frozen
   base samples ``teacher_steps`` DDIM / DPM-Solver steps with classifier-free guidance from seeded noise ``x_T``;
   the cache holds ``x_T``, the teacher's clean latents and the prompt embeddings.
2. Student: the base UNet + a peft LoRA (``adapters.hipa.HiPAConfig``) on the attention and feed-forward projections
   predicts x0 in one step from the same ``x_T`` at the last training timestep.
3. Loss: ``spatial MSE + lambda_hf * MSE(high_pass(student) - high_pass(teacher))`` (+ optional Sobel edge term), on
   latents, decoded images or both (``--loss_space``). Only the LoRA weights train (asserted).

Run::

    python -m training.train_hipa --pretrained_model_name_or_path <sd folder> --output_dir out/hipa \
        --resolution 512 --prompts_file prompts.txt --teacher_steps 25 --max_train_steps 2000

Without ``--prompts_file`` the prompts are mini-world captions. The result is
``output_dir/pytorch_lora_weights.safetensors`` in diffusers' LoRA format (``pipe.load_lora_weights(output_dir)``),
with our metadata; ``HiPAPipeline.from_pretrained(base, hipa_lora=output_dir)`` samples with it in one step.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers.utils import logging
from torch.utils.data import Dataset

from adapters.hipa import (
    ATTENTION_TARGETS,
    FEED_FORWARD_TARGETS,
    HiPAConfig,
    add_hipa_lora,
    hipa_lora_state_dict,
    hipa_loss,
    last_timestep,
    predict_x0,
    save_hipa_lora,
)
from adapters.hipa.loader import DEFAULT_ADAPTER_NAME, KIND
from adapters.hipa.teacher import TeacherSettings, teacher_pipeline
from adapters.weights import base_family, load_weights, save_weights, validate_state_dict
from pipelines.utils import is_sdxl_config
from training.core import AdapterTrainer, TrainConfig, main
from training.core.config import option_help as _h

logger = logging.get_logger(__name__)

CACHE_FILE = "teacher_cache.safetensors"

__all__ = ["HiPATrainConfig", "HiPATrainer", "TeacherCache", "load_prompts"]


@dataclass
class HiPATrainConfig(TrainConfig):
    """Options of HiPA training (plus the shared ones)."""

    rank: int = field(default=8, metadata=_h("LoRA rank."))
    lora_alpha: float | None = field(default=None, metadata=_h("LoRA alpha (none: equal to the rank)."))
    lora_targets: str = field(
        default="attention_ff",
        metadata=_h(
            "Which projections get LoRAs: attention (q/k/v/out) or attention + feed-forward.",
            ["attention", "attention_ff"],
        ),
    )
    lambda_hf: float = field(default=1.0, metadata=_h("Weight of the high-frequency loss."))
    hf_cutoff: float = field(default=0.25, metadata=_h("High-pass cutoff in cycles/pixel (0 < c < 0.707)."))
    hf_filter: str = field(default="ideal", metadata=_h("High-pass transfer function.", ["ideal", "gaussian"]))
    lambda_edge: float = field(default=0.0, metadata=_h("Weight of the Sobel edge-map loss (0: off)."))
    loss_space: str = field(
        default="latent",
        metadata=_h(
            "Where the losses are computed: latents, VAE-decoded images, or both.", ["latent", "image", "both"]
        ),
    )
    prompts_file: str | None = field(
        default=None, metadata=_h("Text file, one prompt per line (default: mini-world captions).")
    )
    num_prompts: int = field(default=64, metadata=_h("Mini-world captions to use when no prompts file is given."))
    seeds_per_prompt: int = field(default=1, metadata=_h("Teacher samples (noise seeds) per prompt."))
    teacher_steps: int = field(default=25, metadata=_h("Teacher sampling steps."))
    teacher_scheduler: str = field(default="ddim", metadata=_h("Teacher sampler.", ["ddim", "dpm"]))
    teacher_guidance_scale: float = field(default=7.5, metadata=_h("Teacher classifier-free guidance scale."))
    teacher_batch_size: int = field(default=8, metadata=_h("Prompts per teacher batch while building the cache."))
    teacher_cache_dir: str | None = field(
        default=None, metadata=_h("Folder of the teacher cache (default: output_dir/teacher_cache).")
    )
    num_validation_samples: int = field(default=4, metadata=_h("Cached samples shown in the validation grid."))

    def validate(self) -> None:
        super().validate()
        for name in ("rank", "num_prompts", "seeds_per_prompt", "teacher_steps", "teacher_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)!r}.")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise ValueError(f"`lora_alpha` must be > 0 (or unset), got {self.lora_alpha!r}.")
        for name in ("lambda_hf", "lambda_edge", "teacher_guidance_scale"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)!r}.")
        if not 0 < self.hf_cutoff < 0.7071:
            raise ValueError(f"`hf_cutoff` must be in (0, 0.707), got {self.hf_cutoff!r}.")
        if self.num_validation_samples < 1:
            raise ValueError(f"`num_validation_samples` must be >= 1, got {self.num_validation_samples!r}.")

    def hipa_config(self) -> HiPAConfig:
        targets = list(ATTENTION_TARGETS)
        if self.lora_targets == "attention_ff":
            targets += list(FEED_FORWARD_TARGETS)
        return HiPAConfig(rank=self.rank, alpha=self.lora_alpha, target_modules=targets)


def load_prompts(prompts_file: str | None, num_prompts: int, seed: int = 0) -> list[str]:
    """Prompts from a text file (one per line, blank lines and ``#`` comments skipped) or mini-world captions."""
    if prompts_file is not None:
        if not Path(prompts_file).is_file():
            raise FileNotFoundError(f"`--prompts_file` {prompts_file!r} does not exist.")
        lines = Path(prompts_file).read_text(encoding="utf-8").splitlines()
        prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not prompts:
            raise ValueError(f"`prompts_file` {prompts_file!r} holds no prompt.")
        return prompts
    from training.miniworld import Scene

    return [Scene.random(seed + i).caption() for i in range(num_prompts)]


class TeacherCache(Dataset):
    """The cached teacher pairs: item ``i`` is ``{"index", "noise", "target", "prompt_embeds", ...}``.

    Tensors: ``noise`` / ``target`` ``(N, 4, h, w)``; ``prompt_embeds`` ``(N, 77, D)``; SDXL adds
    ``pooled_prompt_embeds`` ``(N, D_pool)`` and ``add_time_ids`` ``(N, 6)``.
    """

    def __init__(self, tensors: dict[str, torch.Tensor], prompts: list[str]):
        self.tensors = tensors
        self.prompts = prompts

    def __len__(self) -> int:
        return self.tensors["noise"].shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = {k: v[index] for k, v in self.tensors.items()}
        item["index"] = torch.tensor(index)
        return item


class HiPATrainer(AdapterTrainer):
    """HiPA: one-step LoRA trained to reproduce the multi-step teacher (spatial + high-frequency loss)."""

    config_class = HiPATrainConfig
    adapter_kind = KIND

    # ------------------------------------------------------------------ models
    def build_models(self) -> None:
        cfg = self.config
        index = json.loads((Path(cfg.pretrained_model_name_or_path) / "model_index.json").read_text())
        self.is_sdxl = is_sdxl_config(index)
        names = ["unet", "vae", "text_encoder", "tokenizer", "noise_scheduler"]
        if self.is_sdxl:
            names += ["text_encoder_2", "tokenizer_2"]
        self.load_components(*names)
        if cfg.loss_space != "latent" and getattr(self.vae.config, "force_upcast", False):
            self.vae.to(dtype=torch.float32)  # e.g. the SDXL VAE overflows in fp16; the image loss decodes with it
        self.hipa_config = cfg.hipa_config()
        self.lora_names = add_hipa_lora(self.unet, self.hipa_config, adapter_name=DEFAULT_ADAPTER_NAME)
        # Only the LoRA may train: everything else of the UNet, the VAE and the text encoders is frozen.
        self.assert_only_trainable(lambda name: name.startswith("unet.") and ".lora_" in name)
        n_params = sum(p.numel() for n, p in self.unet.named_parameters() if p.requires_grad)
        logger.info(f"HiPA LoRA: rank {self.hipa_config.rank}, {n_params:,} trainable parameters.")

    def trainable_parameters(self):
        return [(f"unet.{n}", p) for n, p in self.unet.named_parameters() if p.requires_grad]

    def _lora_params(self) -> dict[str, torch.nn.Parameter]:
        """``<path>.lora_A.weight`` (saved key, adapter name removed) -> Parameter."""
        marker = f".{DEFAULT_ADAPTER_NAME}."
        return {n.replace(marker, "."): p for n, p in self.unet.named_parameters() if ".lora_" in n and marker in n}

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        return hipa_lora_state_dict(self.unet, DEFAULT_ADAPTER_NAME)

    def load_adapter_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        params = self._lora_params()
        validate_state_dict(state_dict, {k: p.shape for k, p in params.items()}, what="HiPA LoRA")
        with torch.no_grad():
            for key, param in params.items():
                param.copy_(state_dict[key].to(param.device, param.dtype))

    @property
    def teacher_settings(self) -> TeacherSettings:
        """The teacher's steps, guidance and sampler (written into the LoRA file's metadata)."""
        cfg = self.config
        return TeacherSettings(cfg.teacher_steps, cfg.teacher_guidance_scale, cfg.teacher_scheduler)

    def adapter_metadata(self) -> dict[str, str]:
        from adapters.weights import adapter_metadata

        return adapter_metadata(
            KIND, base_family(self.unet), trained_steps=self.global_step, rank=self.hipa_config.rank
        )

    def save_adapter(self, output_dir: str | os.PathLike) -> Path:
        cfg = self.config
        extra = {
            "trained_steps": self.global_step,
            "lambda_hf": cfg.lambda_hf,
            "hf_cutoff": cfg.hf_cutoff,
            "hf_filter": cfg.hf_filter,
            "loss_space": cfg.loss_space,
            **self.teacher_settings.metadata(),
            "resolution": cfg.resolution,
        }
        return save_hipa_lora(
            output_dir,
            self.adapter_state_dict(),
            self.hipa_config,
            family=base_family(self.unet),
            extra_metadata=extra,
        )

    # ------------------------------------------------------------------ teacher cache
    def _cache_settings(self, prompts: list[str]) -> dict[str, Any]:
        cfg = self.config
        return {
            "base": str(Path(cfg.pretrained_model_name_or_path).resolve()),
            "resolution": cfg.resolution,
            "teacher_steps": cfg.teacher_steps,
            "teacher_scheduler": cfg.teacher_scheduler,
            "teacher_guidance_scale": cfg.teacher_guidance_scale,
            "seeds_per_prompt": cfg.seeds_per_prompt,
            "seed": self.seed or 0,
            "prompts_sha1": hashlib.sha1("\n".join(prompts).encode()).hexdigest(),
        }

    def cache_path(self) -> Path:
        cfg = self.config
        folder = Path(cfg.teacher_cache_dir) if cfg.teacher_cache_dir else Path(cfg.output_dir) / "teacher_cache"
        return folder / CACHE_FILE

    def _teacher_pipeline(self):
        """The teacher (:func:`adapters.hipa.teacher.teacher_pipeline`) over the trainer's modules."""
        from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

        cfg = self.config
        # From the base's own scheduler config (the DDPM training scheduler fills in DDPM defaults).
        base_config = DDIMScheduler.load_config(cfg.pretrained_model_name_or_path, subfolder="scheduler")
        base_config = {**base_config, "prediction_type": self.noise_scheduler.config.prediction_type}
        common = {"vae": self.vae, "text_encoder": self.text_encoder, "tokenizer": self.tokenizer, "unet": self.unet}
        if self.is_sdxl:
            base = StableDiffusionXLPipeline(
                **common,
                text_encoder_2=self.text_encoder_2,
                tokenizer_2=self.tokenizer_2,
                scheduler=self.noise_scheduler,
            )
        else:
            base = StableDiffusionPipeline(
                **common,
                scheduler=self.noise_scheduler,
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
        pipe = teacher_pipeline(base, cfg.teacher_scheduler, base_scheduler_config=base_config)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @torch.no_grad()
    def build_teacher_cache(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Run the teacher over every (prompt, seed) pair; returns the cache tensors (on CPU)."""
        cfg = self.config
        pipe = self._teacher_pipeline()
        factor = pipe.vae_scale_factor
        size = cfg.resolution // factor
        channels = self.unet.config.in_channels
        pairs = [
            (prompt, (self.seed or 0) * 100_003 + i)
            for i, prompt in enumerate([p for p in prompts for _ in range(cfg.seeds_per_prompt)])
        ]
        out: dict[str, list[torch.Tensor]] = {}
        self.unet.disable_adapters()  # the teacher is the frozen base, whatever the LoRA holds
        from tqdm.auto import tqdm

        bar = tqdm(
            total=len(pairs), desc="Building the teacher cache", unit="sample", disable=not self.is_main_process
        )
        try:
            for start in range(0, len(pairs), cfg.teacher_batch_size):
                chunk = pairs[start : start + cfg.teacher_batch_size]
                texts = [p for p, _ in chunk]
                noise = torch.stack(
                    [torch.randn(channels, size, size, generator=torch.Generator().manual_seed(s)) for _, s in chunk]
                )
                kwargs = {"height": cfg.resolution, "width": cfg.resolution}
                if self.is_sdxl:
                    embeds, _, pooled, _ = pipe.encode_prompt(
                        texts, device=self.device, do_classifier_free_guidance=False
                    )
                    proj_dim = self.text_encoder_2.config.projection_dim
                    time_ids = pipe._get_add_time_ids(
                        (cfg.resolution, cfg.resolution),
                        (0, 0),
                        (cfg.resolution, cfg.resolution),
                        embeds.dtype,
                        proj_dim,
                    ).repeat(len(chunk), 1)
                    out.setdefault("pooled_prompt_embeds", []).append(pooled.float().cpu())
                    out.setdefault("add_time_ids", []).append(time_ids.float().cpu())
                else:
                    embeds, _ = pipe.encode_prompt(texts, self.device, 1, False)
                target = pipe(
                    texts,
                    latents=noise.to(self.device, self.weight_dtype),
                    num_inference_steps=cfg.teacher_steps,
                    guidance_scale=cfg.teacher_guidance_scale,
                    output_type="latent",
                    **kwargs,
                ).images
                out.setdefault("noise", []).append(noise)
                out.setdefault("target", []).append(target.float().cpu())
                out.setdefault("prompt_embeds", []).append(embeds.float().cpu())
                bar.update(len(chunk))
        finally:
            bar.close()
            self.unet.enable_adapters()
        return {k: torch.cat(v) for k, v in out.items()}

    def build_dataset(self) -> Dataset:
        cfg = self.config
        prompts = load_prompts(cfg.prompts_file, cfg.num_prompts, seed=self.seed or 0)
        settings = self._cache_settings(prompts)
        path = self.cache_path()
        acc = self.accelerator
        if acc is None or acc.is_main_process:
            tensors = self._read_cache(path, settings)
            if tensors is None:
                logger.info(f"Building the teacher cache at {path} ({len(prompts)} prompts).")
                tensors = self.build_teacher_cache(prompts)
                all_prompts = [p for p in prompts for _ in range(cfg.seeds_per_prompt)]
                meta = {"hipa.cache_settings": json.dumps(settings), "hipa.prompts": json.dumps(all_prompts)}
                save_weights(tensors, path, metadata=meta)
        if acc is not None:
            acc.wait_for_everyone()
        tensors = self._read_cache(path, settings)
        if tensors is None:
            raise RuntimeError(f"The teacher cache {path} is missing or stale after it was built.")
        _, meta = load_weights(path)
        self.cache_prompts = json.loads(meta["hipa.prompts"])
        self.cache = TeacherCache(tensors, self.cache_prompts)
        return self.cache

    @staticmethod
    def _read_cache(path: Path, settings: dict[str, Any]) -> dict[str, torch.Tensor] | None:
        if not path.is_file():
            return None
        tensors, meta = load_weights(path)
        if json.loads(meta.get("hipa.cache_settings", "{}")) != settings:
            logger.warning(f"Teacher cache {path} was made with other settings; rebuilding it.")
            return None
        logger.info(f"Reusing the teacher cache {path} ({tensors['noise'].shape[0]} samples).")
        return tensors

    # ------------------------------------------------------------------ loss
    def student_x0(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One-step x0 of the student (base + LoRA) from the cached noise, ``(B, 4, h, w)``."""
        noise = batch["noise"].to(self.device, self.weight_dtype)
        embeds = batch["prompt_embeds"].to(self.device, self.weight_dtype)
        t = last_timestep(self.noise_scheduler)
        timesteps = torch.full((noise.shape[0],), t, device=self.device, dtype=torch.long)
        added = None
        if self.is_sdxl:
            added = {
                "text_embeds": batch["pooled_prompt_embeds"].to(self.device, self.weight_dtype),
                "time_ids": batch["add_time_ids"].to(self.device, self.weight_dtype),
            }
        output = self.unet(noise, timesteps, encoder_hidden_states=embeds, added_cond_kwargs=added).sample
        return predict_x0(
            output.float(),
            noise.float(),
            timesteps,
            self.noise_scheduler.alphas_cumprod.to(self.device),
            self.noise_scheduler.config.prediction_type,
        )

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample.float()

    def hipa_loss_of(self, student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The HiPA loss in the configured space(s); ``student`` / ``target`` are latents ``(B, 4, h, w)``."""
        cfg = self.config
        kwargs = {
            "lambda_hf": cfg.lambda_hf,
            "cutoff": cfg.hf_cutoff,
            "kind": cfg.hf_filter,
            "lambda_edge": cfg.lambda_edge,
        }
        loss = torch.zeros((), device=student.device)
        if cfg.loss_space in ("latent", "both"):
            loss = loss + hipa_loss(student, target, **kwargs)
        if cfg.loss_space in ("image", "both"):
            with torch.no_grad():
                target_image = self._decode(target)
            loss = loss + hipa_loss(self._decode(student), target_image, **kwargs)
        return loss

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        target = batch["target"].to(self.device, torch.float32)
        return self.hipa_loss_of(self.student_x0(batch), target)

    # ------------------------------------------------------------------ validation
    def log_validation(self, step: int):
        """One grid: a row per cached sample, columns base one-step | HiPA one-step | teacher."""
        from PIL import Image

        n = min(self.config.num_validation_samples, len(self.cache))
        batch = {k: v[:n] for k, v in self.cache.tensors.items()}
        hipa = self.student_x0(batch)
        self.unet.disable_adapters()
        try:
            base = self.student_x0(batch)
        finally:
            self.unet.enable_adapters()
        target = batch["target"].to(self.device)
        columns = [self._decode(x).clamp(-1, 1) for x in (base, hipa, target)]
        grid = torch.stack(columns, dim=1)  # (n, 3, C, H, W)
        n_rows, n_cols, _, height, width = grid.shape
        grid = grid.permute(0, 3, 1, 4, 2).reshape(n_rows * height, n_cols * width, -1)
        array = ((grid + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        image = Image.fromarray(array)
        scale = max(1, 256 // max(height, 1))
        return [image.resize((image.width * scale, image.height * scale), Image.NEAREST)]


if __name__ == "__main__":
    main(HiPATrainer)
