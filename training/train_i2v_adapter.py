"""Train I2V-Adapter (arXiv 2312.16693) on the shared training core.

The base (an SD 1.5-family UNet + an AnimateDiff ``MotionAdapter`` -> ``UNetMotionModel``), the VAE and the text
encoder are frozen. Only the new projections of the first-frame attention (``to_q_i2v``, ``to_out_i2v`` of every
spatial ``attn1``) train, plus the content adapter (image projection + ``to_k_ip`` / ``to_v_ip``) with
``--content_adapter`` (asserted before training starts).

Each training clip is ``num_frames`` frames sampled with ``--frame_stride``; its first frame stays clean (it is not
noised, exactly as at inference, where the input image is re-inserted at every step) and the loss is taken on the
other frames only.

Data (``--dataset``):

``folder``     ``--train_data_dir`` holding videos (``.mp4``, ``.gif``, ... read with imageio/PIL) or folders of
               frames (sorted image files), with captions in ``metadata.jsonl`` (``{"file_name": ..., "text": ...}``
               per line; ``video`` / ``caption`` also accepted), a ``--manifest`` JSONL (paths relative to it), or
               ``.txt`` sidecars (no caption: empty). Frames are resized to cover ``--height`` x ``--width`` and
               center- (or randomly) cropped.
``miniworld``  procedural mini-world clips of moving objects (no files needed), for the embedded model.

Run::

    accelerate launch -m training.train_i2v_adapter --pretrained_model_name_or_path <sd15 folder> \
        --motion_adapter_path <motion adapter folder> --train_data_dir <videos> --output_dir out/i2v \
        --num_frames 16 --frame_stride 4 --height 256 --width 256 --train_batch_size 2 --learning_rate 1e-5 \
        --max_train_steps 20000 --validation_steps 1000 --validation_prompts "a cat turning its head"
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.utils import logging
from PIL import Image
from torch.utils.data import Dataset

from adapters.i2v_adapter import KIND, I2VAdapter, load_i2v_adapter
from adapters.i2v_adapter.first_frame import add_noise_keep_first_frame, clip_latents, first_frame_loss_mask
from training.core import AdapterTrainer, TrainConfig, diffusion_loss, get_target, main, sample_noise, sample_timesteps
from training.core.config import option_help as _h

logger = logging.get_logger(__name__)

__all__ = [
    "I2VAdapterTrainConfig",
    "I2VAdapterTrainer",
    "VideoFolderDataset",
    "pick_captions",
    "sample_frame_indices",
]

VIDEO_SUFFIXES = (".mp4", ".gif", ".webm", ".mov", ".avi", ".mkv")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class I2VAdapterTrainConfig(TrainConfig):
    """Options of I2V-Adapter training (on top of the shared ones)."""

    motion_adapter_path: str | None = field(
        default=None, metadata=_h("MotionAdapter folder (default: <pretrained_model_name_or_path>/motion_adapter).")
    )
    dataset: str = field(default="folder", metadata=_h("Training data.", ["folder", "miniworld"]))
    manifest: str | None = field(default=None, metadata=_h("JSONL of {video|file_name, text|caption} rows."))
    num_frames: int = field(default=16, metadata=_h("Frames per training clip (>= 2; frame 0 is the clean image)."))
    frame_stride: int = field(default=4, metadata=_h("Take every n-th frame of the source video."))
    height: int | None = field(default=None, metadata=_h("Clip height in pixels (default: --resolution)."))
    width: int | None = field(default=None, metadata=_h("Clip width in pixels (default: --resolution)."))
    caption_dropout: float = field(default=0.05, metadata=_h("Probability of an empty caption (for CFG)."))
    motion_caption: float = field(
        default=0.0,
        metadata=_h(
            "Probability of captioning a mini-world clip with its motion word only (e.g. 'spinning'), so that the "
            "subject can only come from the first frame (miniworld dataset)."
        ),
    )
    num_samples: int = field(default=10000, metadata=_h("Clips per epoch of the mini-world dataset."))
    init_adapter: str | None = field(default=None, metadata=_h("Start from this I2V-Adapter file."))
    content_adapter: bool = field(default=False, metadata=_h("Also train the content adapter (IP-Adapter style)."))
    image_encoder_path: str | None = field(
        default=None, metadata=_h("CLIPVisionModelWithProjection folder for --content_adapter.")
    )
    content_num_tokens: int = field(default=4, metadata=_h("Image tokens of the content adapter."))
    image_dropout: float = field(default=0.05, metadata=_h("Probability of a zero image embedding (content adapter)."))
    validation_image: str | None = field(
        default=None, metadata=_h("First frame for validation videos (default: the first training clip's).")
    )
    validation_num_frames: int | None = field(default=None, metadata=_h("Frames of validation videos."))
    validation_inference_steps: int = field(default=25, metadata=_h("Denoising steps of validation videos."))

    def validate(self) -> None:
        super().validate()
        if self.num_frames < 2:
            raise ValueError(f"`num_frames` must be >= 2 (frame 0 is the clean image), got {self.num_frames}.")
        if self.frame_stride < 1:
            raise ValueError(f"`frame_stride` must be >= 1, got {self.frame_stride}.")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (value < 8 or value % 8):
                raise ValueError(f"`{name}` must be a multiple of 8, got {value}.")
        for name in ("caption_dropout", "image_dropout", "motion_caption"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"`{name}` must be in [0, 1], got {getattr(self, name)}.")
        if self.caption_dropout + self.motion_caption > 1.0:
            raise ValueError("`caption_dropout + motion_caption` must be <= 1.")
        if self.motion_caption and self.dataset != "miniworld":
            raise ValueError("`motion_caption` needs `--dataset miniworld` (folder captions have no motion word).")
        if self.dataset == "folder" and not (self.train_data_dir or self.manifest):
            raise ValueError("`--dataset folder` needs `train_data_dir` or `manifest`.")
        if self.content_adapter and not self.image_encoder_path:
            raise ValueError("`content_adapter` needs `image_encoder_path` (a CLIPVisionModelWithProjection folder).")

    @property
    def size(self) -> tuple[int, int]:
        return (self.height or self.resolution, self.width or self.resolution)


# ----------------------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------------------


def sample_frame_indices(
    num_available: int, num_frames: int, stride: int, rng: random.Random | None = None
) -> list[int]:
    """``num_frames`` indices into a video of ``num_available`` frames, ``stride`` apart, from a random start.

    A video too short for the stride uses the largest stride that fits; one shorter than ``num_frames`` repeats its
    last frame.
    """
    if num_available < 1:
        raise ValueError("The video has no frames.")
    stride = max(1, min(stride, (num_available - 1) // max(num_frames - 1, 1))) if num_frames > 1 else 1
    span = (num_frames - 1) * stride + 1
    start = rng.randint(0, num_available - span) if rng is not None and num_available > span else 0
    return [min(start + i * stride, num_available - 1) for i in range(num_frames)]


def _resize_cover_crop(image: Image.Image, height: int, width: int, box: tuple[float, float]) -> Image.Image:
    """Resize so ``image`` covers ``height x width``, then crop at the relative position ``box`` (0.5 = center)."""
    scale = max(height / image.height, width / image.width)
    new_w, new_h = max(width, round(image.width * scale)), max(height, round(image.height * scale))
    image = image.resize((new_w, new_h), Image.BICUBIC)
    left = int(round((new_w - width) * box[0]))
    top = int(round((new_h - height) * box[1]))
    return image.crop((left, top, left + width, top + height))


def _read_frames(path: Path) -> list[Image.Image]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        return [Image.open(p).convert("RGB") for p in files]
    if path.suffix.lower() == ".gif":
        frames = []
        with Image.open(path) as im:
            for index in range(getattr(im, "n_frames", 1)):
                im.seek(index)
                frames.append(im.convert("RGB"))
        return frames
    import imageio.v2 as imageio

    with imageio.get_reader(str(path)) as reader:
        return [Image.fromarray(np.asarray(frame)[..., :3]) for frame in reader]


class VideoFolderDataset(Dataset):
    """Video clips + captions from a folder (see the module docstring for the layouts).

    Items: ``{"pixel_values": (F, 3, H, W) float32 in [-1, 1], "text": str}``.
    """

    def __init__(
        self,
        root: str | Path | None,
        manifest: str | Path | None = None,
        *,
        num_frames: int = 16,
        frame_stride: int = 4,
        size: tuple[int, int] = (256, 256),
        center_crop: bool = True,
        random_flip: bool = False,
        seed: int = 0,
    ):
        self.num_frames = int(num_frames)
        self.frame_stride = int(frame_stride)
        self.height, self.width = size
        self.center_crop = center_crop
        self.random_flip = random_flip
        self.seed = seed
        self.entries = self._entries(Path(root) if root else None, Path(manifest) if manifest else None)
        if not self.entries:
            raise ValueError(
                f"No videos found in {root or manifest!r} (looked for {VIDEO_SUFFIXES} or frame folders)."
            )

    @staticmethod
    def _entries(root: Path | None, manifest: Path | None) -> list[tuple[Path, str]]:
        def read_jsonl(file: Path, base: Path) -> list[tuple[Path, str]]:
            rows = []
            for line_no, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                name = row.get("video") or row.get("file_name")
                if name is None:
                    raise ValueError(f"{file}:{line_no}: a row needs `video` or `file_name`.")
                rows.append((base / name, str(row.get("text", row.get("caption", "")))))
            return rows

        if manifest is not None:
            return read_jsonl(manifest, manifest.parent)
        if root is None:
            return []
        if (root / "metadata.jsonl").is_file():
            return read_jsonl(root / "metadata.jsonl", root)
        entries = []
        for path in sorted(root.iterdir()):
            is_video = path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES
            is_frames = path.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir())
            if is_video or is_frames:
                sidecar = path.with_suffix(".txt") if path.is_file() else path.parent / f"{path.name}.txt"
                entries.append((path, sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else ""))
        return entries

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, text = self.entries[index]
        if not path.exists():
            raise FileNotFoundError(f"Training video {str(path)!r} does not exist.")
        rng = random.Random(hash((self.seed, index, random.random())))
        frames = _read_frames(path)
        indices = sample_frame_indices(len(frames), self.num_frames, self.frame_stride, rng)
        box = (0.5, 0.5) if self.center_crop else (rng.random(), rng.random())
        flip = self.random_flip and rng.random() < 0.5
        out = []
        for i in indices:
            frame = _resize_cover_crop(frames[i], self.height, self.width, box)
            if flip:
                frame = frame.transpose(Image.FLIP_LEFT_RIGHT)
            out.append(torch.from_numpy(np.asarray(frame, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1))
        return {"pixel_values": torch.stack(out), "text": text}


def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack clips: ``pixel_values`` ``(B, F, 3, H, W)``, ``text`` list, and ``motion_text`` (the motion word alone)
    when the items name their motion (mini-world clips)."""
    batch = {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "text": [e["text"] for e in examples],
    }
    if all("motion" in e for e in examples):
        from training.miniworld.scene import MOTIONS

        batch["motion_text"] = [MOTIONS[e["motion"]] for e in examples]
    return batch


def pick_captions(
    texts: list[str], motion_texts: list[str] | None, rng: random.Random, dropout: float, motion_only: float
) -> list[str]:
    """Per clip: the empty caption with probability ``dropout``, the motion word alone with ``motion_only`` (when
    ``motion_texts`` is given), the full caption otherwise."""
    out = []
    for i, text in enumerate(texts):
        u = rng.random()
        if u < dropout:
            out.append("")
        elif motion_texts is not None and u < dropout + motion_only:
            out.append(motion_texts[i])
        else:
            out.append(text)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# trainer
# ----------------------------------------------------------------------------------------------------------------------


class I2VAdapterTrainer(AdapterTrainer):
    """I2V-Adapter training: first-frame attention projections (+ content adapter) on a frozen AnimateDiff UNet."""

    config_class = I2VAdapterTrainConfig
    adapter_kind = KIND
    collate_fn = staticmethod(collate)

    # -- models --------------------------------------------------------------------------------------------------------
    def build_models(self) -> None:
        from diffusers import MotionAdapter, UNetMotionModel

        cfg = self.config
        self.load_components("vae", "text_encoder", "tokenizer", "noise_scheduler")
        base_unet = self.load_components("unet")["unet"]
        motion_path = cfg.motion_adapter_path or str(Path(cfg.pretrained_model_name_or_path) / "motion_adapter")
        motion = MotionAdapter.from_pretrained(motion_path)
        self.unet = self.freeze(UNetMotionModel.from_unet2d(base_unet, motion))
        del base_unet, motion
        self.image_encoder = None
        embed_dim = None
        if cfg.content_adapter:
            from transformers import CLIPVisionModelWithProjection

            self.image_encoder = self.freeze(CLIPVisionModelWithProjection.from_pretrained(cfg.image_encoder_path))
            embed_dim = self.image_encoder.config.projection_dim
        if cfg.init_adapter:
            self.adapter = load_i2v_adapter(self.unet, cfg.init_adapter)
            if cfg.content_adapter and self.adapter.content is None:
                raise ValueError("`init_adapter` has no content adapter but `content_adapter` is set.")
        else:
            self.adapter = I2VAdapter.attach(
                self.unet, content_image_embed_dim=embed_dim, content_num_tokens=cfg.content_num_tokens
            )
        for param in self.adapter.parameters(include_content=cfg.content_adapter):
            param.requires_grad_(True)
        self._rng = random.Random(self.seed or 0)
        self._clip_mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
        self._clip_std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)

        def allowed(name: str) -> bool:
            if ".to_q_i2v." in name or ".to_out_i2v." in name:
                return True
            content = ".to_k_ip." in name or ".to_v_ip." in name or name.startswith("unet.encoder_hid_proj.")
            return cfg.content_adapter and content

        self.assert_only_trainable(allowed)

    def trainable_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [("unet." + n, p) for n, p in self.unet.named_parameters() if p.requires_grad]

    # -- weights -------------------------------------------------------------------------------------------------------
    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        return self.adapter.state_dict()

    @torch.no_grad()
    def load_adapter_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.adapter.load_state_dict(state_dict)

    def adapter_metadata(self) -> dict[str, str]:
        meta = self.adapter.metadata()
        meta["diffusion_adapters.trained_steps"] = str(self.global_step)
        meta["diffusion_adapters.num_frames"] = str(self.config.num_frames)
        return meta

    # -- data ----------------------------------------------------------------------------------------------------------
    def build_dataset(self) -> Dataset:
        cfg = self.config
        if cfg.dataset == "miniworld":
            from training.base_model import MINIWORLD_FRAMING
            from training.miniworld import VideoDataset

            return VideoDataset(
                cfg.num_frames, cfg.size, length=cfg.num_samples, seed=self.seed or 0, **MINIWORLD_FRAMING
            )
        return VideoFolderDataset(
            cfg.train_data_dir,
            cfg.manifest,
            num_frames=cfg.num_frames,
            frame_stride=cfg.frame_stride,
            size=cfg.size,
            center_crop=cfg.center_crop,
            random_flip=cfg.random_flip,
            seed=self.seed or 0,
        )

    # -- loss ----------------------------------------------------------------------------------------------------------
    def _image_embeds(self, first_pixels: torch.Tensor) -> torch.Tensor:
        """CLIP image embeddings ``(B, D)`` of ``(B, 3, H, W)`` frames in [-1, 1] (zeroed with ``image_dropout``)."""
        size = self.image_encoder.config.image_size
        x = (first_pixels.float() + 1) / 2
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
        x = (x - self._clip_mean.to(x.device)) / self._clip_std.to(x.device)
        embeds = self.image_encoder(x.to(self.weight_dtype)).image_embeds
        keep = torch.tensor(
            [self._rng.random() >= self.config.image_dropout for _ in range(embeds.shape[0])], device=embeds.device
        )
        return embeds * keep[:, None].to(embeds.dtype)

    def compute_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Loss on frames 1.. of clips ``pixel_values`` ``(B, F, 3, H, W)``; frame 0 enters the UNet clean."""
        cfg = self.config
        pixels = batch["pixel_values"].to(self.device, dtype=self.weight_dtype)
        bsz, frames = pixels.shape[:2]
        with torch.no_grad():
            posterior = self.vae.encode(pixels.flatten(0, 1)).latent_dist
            # frame 0 as the pipeline encodes the input image (posterior mode), the others sampled: (B, C, F, h, w)
            latents = clip_latents(posterior, bsz, self.vae.config.scaling_factor)
            texts = pick_captions(
                batch["text"], batch.get("motion_text"), self._rng, cfg.caption_dropout, cfg.motion_caption
            )
            states = self.encode_text(texts).repeat_interleave(frames, dim=0)
            added = None
            if self.adapter.content is not None:
                added = {"image_embeds": [self._image_embeds(pixels[:, 0])[:, None]]}
        noise = sample_noise(latents, cfg.noise_offset)
        timesteps = sample_timesteps(bsz, self.noise_scheduler, device=latents.device)
        noisy = add_noise_keep_first_frame(self.noise_scheduler, latents, noise, timesteps)
        pred = self.unet(noisy, timesteps, encoder_hidden_states=states, added_cond_kwargs=added).sample
        target = get_target(self.noise_scheduler, latents, noise, timesteps)
        mask = first_frame_loss_mask(frames, latents.device)
        return diffusion_loss(pred.float(), target.float(), timesteps, self.noise_scheduler, cfg.snr_gamma, mask)

    # -- validation ----------------------------------------------------------------------------------------------------
    def _validation_image(self) -> Image.Image:
        cfg = self.config
        if cfg.validation_image:
            return Image.open(cfg.validation_image).convert("RGB")
        first = self.build_dataset()[0]["pixel_values"][0]
        array = ((first.permute(1, 2, 0).numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)
        return Image.fromarray(array)

    def log_validation(self, step: int) -> list[Image.Image]:
        """One video per validation prompt from the validation image; saved as GIFs and returned as frame strips."""
        from diffusers import DDIMScheduler

        from pipelines.pipeline_i2v_adapter import I2VAdapterPipeline, export_to_gif

        cfg = self.config
        feature_extractor = None
        if self.image_encoder is not None:
            from transformers import CLIPImageProcessor

            side = self.image_encoder.config.image_size
            feature_extractor = CLIPImageProcessor(
                size={"shortest_edge": side}, crop_size={"height": side, "width": side}
            )
        pipe = I2VAdapterPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            motion_adapter=None,
            scheduler=DDIMScheduler.from_config(self.noise_scheduler.config),
            image_encoder=self.image_encoder,
            feature_extractor=feature_extractor,
        )
        pipe.set_progress_bar_config(disable=True)
        was_training = self.unet.training
        self.unet.eval()
        height, width = cfg.size
        image = self._validation_image()
        folder = Path(cfg.output_dir) / "validation" / f"step-{step}"
        folder.mkdir(parents=True, exist_ok=True)
        strips = []
        try:
            for i, prompt in enumerate(cfg.validation_prompts or [""]):
                generator = torch.Generator(self.device).manual_seed(self.seed or 0)
                frames = pipe(
                    image=image,
                    prompt=prompt,
                    num_frames=cfg.validation_num_frames or cfg.num_frames,
                    height=height,
                    width=width,
                    num_inference_steps=cfg.validation_inference_steps,
                    generator=generator,
                ).frames[0]
                export_to_gif(frames, folder / f"video-{i}.gif")
                strip = Image.new("RGB", (width * len(frames), height))
                for j, frame in enumerate(frames):
                    strip.paste(frame, (j * width, 0))
                strips.append(strip)
        finally:
            self.unet.train(was_training)
        return strips


if __name__ == "__main__":
    main(I2VAdapterTrainer)
