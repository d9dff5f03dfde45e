"""Train MV-Adapter (arXiv 2412.03632) on the shared training core.

The base (SD 1.x/2.x or SDXL UNet, VAE, text encoders) is frozen. Only the new attention branches
(``to_{q,k,v}_{mv,ref}``, ``to_out_{mv,ref}`` of every ``attn1``) and the condition encoder train (asserted before
training starts). All views of an object are denoised together with one shared timestep; the loss is Min-SNR-gamma
weighted (``--snr_gamma 5`` by default) on the shifted-SNR schedule (``--noise_shift 8``, the official recipe).
Classifier-free guidance: 10% of the objects drop the text, 10% the reference image, 10% both. For image-conditioned
modes a random view of each object is its reference image (encoded clean, run through the UNet at t=0 and cached).

Data (``--dataset``):

``folder``     ``--train_data_dir`` holding one folder per object (the mini-world export writes it)::

                   obj_0000/view_00.png ... view_{V-1}.png   RGB views
                   obj_0000/cameras.json   {"convention": "opencv", "projection": "orthographic"|"perspective",
                                            "frames": [{"file_name": "view_00.png", "c2w": 4x4, "fov_deg": ...,
                                                        "ortho_scale": ...}, ...]}
                   obj_0000/caption.txt    one line (or ``metadata.jsonl`` rows {"file_name", "text"} at the root)
                   obj_0000/position_00.png, normal_00.png   geometry maps (RGB = pos + 0.5 / normal / 2 + 0.5),
                                                              needed by the geometry modes (tg2mv, ig2mv)
``miniworld``  procedural mini-world objects rendered on the fly (no files needed).

Run::

    accelerate launch -m training.train_mv_adapter --pretrained_model_name_or_path <sd21 folder> --mode i2mv \
        --train_data_dir data/mv --num_views 6 --resolution 512 --output_dir out/mv --learning_rate 5e-5 \
        --max_train_steps 20000 --validation_steps 1000 --validation_prompts "a red cube"
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.utils import logging
from PIL import Image
from torch.utils.data import Dataset

from adapters.mv_adapter import (
    KIND,
    Cameras,
    MVAdapter,
    MVAdapterConfig,
    camera_maps,
    encode_condition,
    geometry_maps,
    load_mv_adapter,
    shifted_snr_scheduler,
)
from adapters.mv_adapter.convert import OFFICIAL_VARIANTS, variant_defaults
from adapters.mv_adapter.loader import CONFIG_KEY
from pipelines.utils import is_sdxl_config
from training.core import AdapterTrainer, TrainConfig, diffusion_loss, get_target, main, sample_noise, sample_timesteps
from training.core.config import option_help as _h

logger = logging.get_logger(__name__)

__all__ = ["MVAdapterTrainConfig", "MVAdapterTrainer", "MultiViewFolderDataset", "collate", "drop_masks"]


@dataclass
class MVAdapterTrainConfig(TrainConfig):
    """Options of MV-Adapter training (on top of the shared ones)."""

    mode: str = field(
        default="t2mv",
        metadata=_h(
            "t2mv/i2mv: camera maps; tg2mv/ig2mv: geometry maps; i*: with a reference image.", OFFICIAL_VARIANTS
        ),
    )
    dataset: str = field(default="folder", metadata=_h("Training data.", ["folder", "miniworld"]))
    num_views: int = field(default=6, metadata=_h("Views per object (all denoised together)."))
    height: int | None = field(default=None, metadata=_h("View height in pixels (default: --resolution)."))
    width: int | None = field(default=None, metadata=_h("View width in pixels (default: --resolution)."))
    attention_mode: str | None = field(
        default=None,
        metadata=_h("Multi-view attention (default: row; row_col for geometry).", ["row", "full", "row_col"]),
    )
    camera_map: str = field(default="ray", metadata=_h("Camera condition.", ["ray", "plucker"]))
    camera_mode: str | None = field(
        default=None,
        metadata=_h(
            "Mini-world cameras (default: 'mvadapter', the official geometry ring, for tg2mv/ig2mv with 6 views; "
            "else 'ortho_ring').",
            ["ortho_ring", "persp_ring", "mvadapter", "random"],
        ),
    )
    normalize_scenes: bool | None = field(
        default=None,
        metadata=_h(
            "Scale each mini-world scene into the official unit box (largest |coordinate| 0.5, as load_mesh does to a "
            "user's mesh; default: on for tg2mv/ig2mv, off otherwise)."
        ),
    )
    num_samples: int = field(default=10000, metadata=_h("Objects per epoch of the mini-world dataset."))
    max_objects: int | None = field(
        default=None, metadata=_h("Objects per mini-world scene, 1..n (default: the embedded base's framing, 2).")
    )
    noise_shift: float = field(default=8.0, metadata=_h("Shifted-SNR training schedule factor (1: off)."))
    drop_text: float = field(default=0.1, metadata=_h("Probability of an empty prompt only."))
    drop_reference: float = field(default=0.1, metadata=_h("Probability of a zero reference only (image modes)."))
    drop_both: float = field(default=0.1, metadata=_h("Probability of dropping text and reference together."))
    init_adapter: str | None = field(default=None, metadata=_h("Start from this MV-Adapter file (official or ours)."))
    validation_inference_steps: int = field(default=20, metadata=_h("Denoising steps of validation grids."))
    validation_guidance_scale: float | None = field(default=None, metadata=_h("Guidance of validation grids."))

    def __post_init__(self) -> None:
        if self.snr_gamma is None:
            self.snr_gamma = 5.0
        geometry = self.mode in ("tg2mv", "ig2mv")
        if self.camera_mode is None:
            self.camera_mode = "mvadapter" if geometry and self.num_views == 6 else "ortho_ring"
        if self.normalize_scenes is None:
            self.normalize_scenes = geometry
        super().__post_init__()

    def validate(self) -> None:
        super().validate()
        if self.num_views < 1:
            raise ValueError(f"`num_views` must be >= 1, got {self.num_views}.")
        for name in ("drop_text", "drop_reference", "drop_both"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"`{name}` must be in [0, 1], got {getattr(self, name)}.")
        if self.drop_text + self.drop_reference + self.drop_both > 1.0:
            raise ValueError("`drop_text + drop_reference + drop_both` must be <= 1.")
        if self.max_objects is not None and self.max_objects < 1:
            raise ValueError(f"`max_objects` must be >= 1, got {self.max_objects}.")
        if self.noise_shift <= 0:
            raise ValueError(f"`noise_shift` must be > 0, got {self.noise_shift}.")
        if self.dataset == "folder" and not self.train_data_dir:
            raise ValueError("`--dataset folder` needs `train_data_dir` (a folder of object folders).")
        if self.mode in ("tg2mv", "ig2mv") and self.attention_mode in (None, "row_col") and self.num_views != 6:
            raise ValueError("Geometry modes use 'row_col' attention with 6 views; pass --attention_mode row/full.")
        row_col = self.attention_mode == "row_col" or (self.attention_mode is None and self.geometry)
        if self.dataset == "miniworld" and row_col and self.camera_mode != "mvadapter":
            raise ValueError(
                "`attention_mode` 'row_col' expects the official 6-view layout (front, right, back, left, top, "
                f"bottom): use `--camera_mode mvadapter`, got {self.camera_mode!r}."
            )

    @property
    def size(self) -> tuple[int, int]:
        return (self.height or self.resolution, self.width or self.resolution)

    @property
    def geometry(self) -> bool:
        return self.mode in ("tg2mv", "ig2mv")

    @property
    def use_ref(self) -> bool:
        return self.mode.startswith("i")


# ----------------------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------------------


def _load_rgb(path: Path, size: tuple[int, int]) -> np.ndarray:
    image = Image.open(path).convert("RGB")
    if image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.BICUBIC)
    return np.asarray(image, dtype=np.float32) / 255.0


class MultiViewFolderDataset(Dataset):
    """Objects in the multi-view folder format (see the module docstring).

    Items: ``pixel_values`` ``(V, 3, H, W)`` in [-1, 1]; ``condition`` ``(V, 6, H, W)`` in [0, 1] (camera maps, or
    geometry maps with ``geometry=True``); ``text``.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        num_views: int,
        size: tuple[int, int],
        geometry: bool = False,
        camera_map: str = "ray",
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"`train_data_dir` {str(root)!r} is not a folder.")
        self.num_views = num_views
        self.size = size
        self.geometry = geometry
        self.camera_map = camera_map
        captions: dict[str, str] = {}
        meta = self.root / "metadata.jsonl"
        if meta.is_file():
            for line in meta.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    row = json.loads(line)
                    captions[row["file_name"]] = row.get("text", row.get("caption", ""))
        self.objects = sorted(p for p in self.root.iterdir() if (p / "cameras.json").is_file())
        if not self.objects:
            raise ValueError(f"No object folder with a cameras.json in {str(root)!r}.")
        self.captions = captions

    def __len__(self) -> int:
        return len(self.objects)

    def __getitem__(self, index: int) -> dict[str, Any]:
        folder = self.objects[index]
        meta = json.loads((folder / "cameras.json").read_text(encoding="utf-8"))
        frames = meta["frames"] if isinstance(meta, dict) else meta
        if len(frames) < self.num_views:
            raise ValueError(f"{str(folder)!r} has {len(frames)} views; training needs {self.num_views}.")
        frames = frames[: self.num_views]
        names = [f.get("file_name", f"view_{i:02d}.png") for i, f in enumerate(frames)]
        views = np.stack([_load_rgb(folder / n, self.size) for n in names])
        pixels = torch.from_numpy(views).permute(0, 3, 1, 2) * 2.0 - 1.0
        if self.geometry:
            suffixes = [Path(n).stem.split("_")[-1] for n in names]
            pos = [Image.open(folder / f"position_{s}.png").convert("RGB") for s in suffixes]
            nrm = [Image.open(folder / f"normal_{s}.png").convert("RGB") for s in suffixes]
            condition = geometry_maps(pos, nrm, *self.size)
        else:
            top = meta if isinstance(meta, dict) else {}
            cams = Cameras.from_json({**top, "frames": frames})
            condition = camera_maps(cams, *self.size, kind=self.camera_map)
        caption_file = folder / "caption.txt"
        text = self.captions.get(folder.name)
        if text is None:
            text = caption_file.read_text(encoding="utf-8").strip() if caption_file.is_file() else ""
        return {"pixel_values": pixels, "condition": condition, "text": text}


class _MiniWorldMultiView(Dataset):
    """The mini-world :class:`MultiViewDataset` with the condition maps of this trainer."""

    def __init__(self, base: Dataset, geometry: bool, camera_map: str):
        self.base, self.geometry, self.camera_map = base, geometry, camera_map

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.base[index]
        h, w = item["pixel_values"].shape[-2:]
        if self.geometry:
            condition = geometry_maps(item["position_maps"], item["normal_maps"])
        else:
            ortho = bool(item["orthographic"])
            cams = Cameras.from_c2w(
                item["c2w"].double(), fov_deg=None if ortho else item["fov"].double(), ortho_scale=item["ortho_scale"]
            )
            condition = camera_maps(cams, h, w, kind=self.camera_map)
        return {"pixel_values": item["pixel_values"], "condition": condition, "text": item["text"]}


def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack objects: ``pixel_values`` ``(B, V, 3, H, W)``, ``condition`` ``(B, V, 6, H, W)``, ``text`` list."""
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "condition": torch.stack([e["condition"] for e in examples]),
        "text": [e["text"] for e in examples],
    }


def drop_masks(
    n: int, rng: random.Random, drop_text: float, drop_reference: float, drop_both: float
) -> tuple[list[bool], list[bool]]:
    """Per-object ``(keep_text, keep_reference)`` for classifier-free guidance: one draw per object decides whether
    it drops the text only, the reference only, both, or nothing."""
    keep_text, keep_ref = [], []
    for _ in range(n):
        u = rng.random()
        text_only = u < drop_text
        ref_only = drop_text <= u < drop_text + drop_reference
        both = drop_text + drop_reference <= u < drop_text + drop_reference + drop_both
        keep_text.append(not (text_only or both))
        keep_ref.append(not (ref_only or both))
    return keep_text, keep_ref


# ----------------------------------------------------------------------------------------------------------------------
# trainer
# ----------------------------------------------------------------------------------------------------------------------


class MVAdapterTrainer(AdapterTrainer):
    """MV-Adapter training: multi-view/reference attention branches and the condition encoder on a frozen base."""

    config_class = MVAdapterTrainConfig
    adapter_kind = KIND
    collate_fn = staticmethod(collate)

    # -- models --------------------------------------------------------------------------------------------------------
    def build_models(self) -> None:
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        cfg = self.config
        index = json.loads((Path(cfg.pretrained_model_name_or_path) / "model_index.json").read_text(encoding="utf-8"))
        self.is_xl = is_sdxl_config(index)
        names = ["vae", "text_encoder", "tokenizer", "unet", "noise_scheduler"]
        if self.is_xl:
            names += ["text_encoder_2", "tokenizer_2"]
        self.load_components(*names)
        self.base_scheduler_config = dict(self.noise_scheduler.config)
        if cfg.noise_shift != 1:
            self.noise_scheduler = shifted_snr_scheduler(self.noise_scheduler, cfg.noise_shift)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        # A diffusers pipeline object only to reuse its prompt encoding (frozen modules, no copies).
        if self.is_xl:
            self._text_pipe = StableDiffusionXLPipeline(
                vae=self.vae, text_encoder=self.text_encoder, text_encoder_2=self.text_encoder_2,
                tokenizer=self.tokenizer, tokenizer_2=self.tokenizer_2, unet=self.unet,
                scheduler=self.noise_scheduler,
            )  # fmt: skip
        else:
            self._text_pipe = StableDiffusionPipeline(
                vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet,
                scheduler=self.noise_scheduler, safety_checker=None, feature_extractor=None,
                requires_safety_checker=False,
            )  # fmt: skip
        overrides: dict[str, Any] = {"variant": cfg.mode, "num_views": cfg.num_views, "camera_map": cfg.camera_map}
        if cfg.attention_mode is not None:
            overrides["attention_mode"] = cfg.attention_mode
        if cfg.init_adapter:
            self.adapter = load_mv_adapter(self.unet, cfg.init_adapter, vae_scale_factor=self.vae_scale_factor,
                                           **overrides)  # fmt: skip
        else:
            config = MVAdapterConfig(**{**variant_defaults(cfg.mode), **overrides})
            self.adapter = MVAdapter.from_unet(self.unet, config, vae_scale_factor=self.vae_scale_factor)
        if self.adapter.config.use_ref != cfg.use_ref:
            raise ValueError(
                f"The adapter's reference branch ({self.adapter.config.use_ref}) does not fit --mode {cfg.mode}."
            )
        self.adapter.config.extra["noise_shift"] = cfg.noise_shift  # the pipeline samples with the same schedule
        self.cond_encoder = self.adapter.cond_encoder
        if self.cond_encoder is None:
            raise ValueError("MV-Adapter training needs a condition encoder.")
        for p in self.adapter.trainable_parameters():
            p.requires_grad_(True)
        self._rng = random.Random(self.seed or 0)

        def allowed(name: str) -> bool:
            if name.startswith("cond_encoder."):
                return True
            return name.startswith("unet.") and ".processor.to_" in name and ("_mv." in name or "_ref." in name)

        self.assert_only_trainable(allowed)

    def trainable_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return list(self.adapter_named_parameters())

    def adapter_named_parameters(self):
        for prefix, module in self.adapter.modules().items():
            for name, p in module.named_parameters():
                yield (f"{prefix}.{name}" if prefix else f"cond_encoder.{name}"), p

    # -- weights -------------------------------------------------------------------------------------------------------
    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        return self.adapter.state_dict()

    @torch.no_grad()
    def load_adapter_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.adapter.load_state_dict(state_dict)

    def adapter_metadata(self) -> dict[str, str]:
        meta = super().adapter_metadata()
        meta[CONFIG_KEY] = self.adapter.config.to_json()
        return meta

    # -- data ----------------------------------------------------------------------------------------------------------
    def build_dataset(self) -> Dataset:
        cfg = self.config
        if cfg.dataset == "miniworld":
            from training.base_model import MINIWORLD_FRAMING
            from training.miniworld import MultiViewDataset

            # the scenes' own backgrounds and object counts, as the embedded base was trained on
            base = MultiViewDataset(
                cfg.num_views, cfg.camera_mode, cfg.size, length=cfg.num_samples, seed=self.seed or 0,
                background=None, max_objects=cfg.max_objects or MINIWORLD_FRAMING["max_objects"],
                normalize=cfg.normalize_scenes,
            )  # fmt: skip
            return _MiniWorldMultiView(base, cfg.geometry, cfg.camera_map)
        return MultiViewFolderDataset(
            cfg.train_data_dir, num_views=cfg.num_views, size=cfg.size, geometry=cfg.geometry,
            camera_map=cfg.camera_map,
        )  # fmt: skip

    # -- loss ----------------------------------------------------------------------------------------------------------
    def _encode_text(self, texts: list[str], height: int, width: int) -> tuple[torch.Tensor, dict | None]:
        """``(B, L, D)`` states (+ SDXL ``added_cond_kwargs``) for ``B`` texts."""
        pipe = self._text_pipe
        if not self.is_xl:
            states, _ = pipe.encode_prompt(texts, self.device, 1, False)
            return states, None
        states, _, pooled, _ = pipe.encode_prompt(
            prompt=texts, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], device=self.device, dtype=states.dtype)
        return states, {"text_embeds": pooled, "time_ids": time_ids.repeat(len(texts), 1)}

    def compute_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Loss of objects ``pixel_values`` ``(B, V, 3, H, W)`` with conditions ``(B, V, 6, H, W)``."""
        cfg = self.config
        pixels = batch["pixel_values"].to(self.device, dtype=self.weight_dtype)
        bsz, views, _, height, width = pixels.shape
        keep_text, keep_ref = drop_masks(bsz, self._rng, cfg.drop_text, cfg.drop_reference, cfg.drop_both)
        with torch.no_grad():
            latents = self.vae.encode(pixels.flatten(0, 1)).latent_dist.sample() * self.vae.config.scaling_factor
            texts = [t if keep else "" for t, keep in zip(batch["text"], keep_text)]
            states, added = self._encode_text(texts, height, width)
        noise = sample_noise(latents, cfg.noise_offset)
        timesteps = sample_timesteps(bsz, self.noise_scheduler, device=latents.device).repeat_interleave(views)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)

        state = self.adapter.state
        ref_states = None
        if cfg.use_ref:
            picks = [self._rng.randrange(views) for _ in range(bsz)]
            ref_latents = latents[torch.tensor([b * views + r for b, r in enumerate(picks)], device=latents.device)]
            cache: dict[str, torch.Tensor] = {}
            with torch.no_grad(), state.override(caching=True, cache=cache, num_views=1):
                self.unet(ref_latents, torch.zeros((), dtype=torch.long, device=latents.device), states,
                          added_cond_kwargs=added)  # fmt: skip
            keep = torch.tensor(keep_ref, device=latents.device, dtype=latents.dtype).view(bsz, 1, 1)
            ref_states = {k: v * keep.to(v.dtype) for k, v in cache.items()}

        condition = batch["condition"].to(self.device).flatten(0, 1)
        features = encode_condition(self.cond_encoder, condition.to(self.weight_dtype))
        states = states.repeat_interleave(views, dim=0)
        if added is not None:
            added = {k: v.repeat_interleave(views, dim=0) for k, v in added.items()}
        with state.override(num_views=views, ref_states=ref_states, caching=False, enabled=True):
            pred = self.unet(
                noisy, timesteps, states, added_cond_kwargs=added, down_intrablock_additional_residuals=features
            ).sample
        target = get_target(self.noise_scheduler, latents, noise, timesteps)
        return diffusion_loss(pred.float(), target.float(), timesteps, self.noise_scheduler, cfg.snr_gamma)

    # -- validation ----------------------------------------------------------------------------------------------------
    def log_validation(self, step: int) -> list[Image.Image]:
        """One grid of views per validation prompt (cameras/geometry and reference from the first training object)."""
        from diffusers import DDIMScheduler

        from pipelines.pipeline_mv_adapter import make_multiview_grid

        cfg = self.config
        scheduler = DDIMScheduler.from_config(self.base_scheduler_config)
        if self.is_xl:
            from pipelines.pipeline_mv_adapter_sdxl import MVAdapterXLPipeline

            pipe = MVAdapterXLPipeline(
                vae=self.vae, text_encoder=self.text_encoder, text_encoder_2=self.text_encoder_2,
                tokenizer=self.tokenizer, tokenizer_2=self.tokenizer_2, unet=self.unet, scheduler=scheduler,
            )  # fmt: skip
        else:
            from pipelines.pipeline_mv_adapter_sd import MVAdapterSDPipeline

            pipe = MVAdapterSDPipeline(
                vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet,
                scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
            )  # fmt: skip
        pipe.mv_adapter = self.adapter
        pipe.set_progress_bar_config(disable=True)
        item = self.build_dataset()[0]
        height, width = item["pixel_values"].shape[-2:]
        kwargs: dict[str, Any] = {
            "num_views": cfg.num_views,
            "height": height,
            "width": width,
            "condition_maps": item["condition"],  # the first object's cameras / geometry
        }
        if cfg.use_ref:
            ref = ((item["pixel_values"][0].permute(1, 2, 0).numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)
            kwargs["image"] = Image.fromarray(ref)
        was_training = self.unet.training
        self.unet.eval()
        grids = []
        folder = Path(cfg.output_dir) / "validation" / f"step-{step}"
        folder.mkdir(parents=True, exist_ok=True)
        try:
            for i, prompt in enumerate(cfg.validation_prompts or [item["text"]]):
                generator = torch.Generator(self.device).manual_seed(self.seed or 0)
                views = pipe(
                    prompt,
                    num_inference_steps=cfg.validation_inference_steps,
                    guidance_scale=cfg.validation_guidance_scale,
                    noise_shift=cfg.noise_shift,
                    generator=generator,
                    **kwargs,
                ).images[0]
                grid = make_multiview_grid(views)
                grid.save(folder / f"grid-{i}.png")
                grids.append(grid)
        finally:
            self.unet.train(was_training)
        return grids


if __name__ == "__main__":
    main(MVAdapterTrainer)
