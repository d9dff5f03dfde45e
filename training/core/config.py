"""`TrainConfig`: the training options every adapter shares, filled from CLI flags and an optional YAML/TOML file.

The argparse parser is generated from the dataclass fields (type, default and the ``help`` in each field's
metadata), so an adapter adds options by subclassing::

    @dataclass
    class ResAdapterConfig(TrainConfig):
        rank: int = field(default=16, metadata={"help": "LoRA rank of the sampler layers."})

Precedence: dataclass default < ``--config file.yaml|.toml`` < command-line flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import sys
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "INPUT_PATHS",
    "LR_SCHEDULERS",
    "OPTION_RANGES",
    "TrainConfig",
    "check_option_values",
    "load_config_file",
    "native_resolution",
    "option_help",
]

LR_SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
)


class OneLineErrorParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose error is one line on stderr (exit status 2), without the usage block (the
    training scripts have ~60 flags)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        message = re.sub(r"^argument (\S+): (`\1`)", r"\2", message)  # the flag named once
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


def option_help(text: str, choices: Sequence[Any] | None = None) -> dict[str, Any]:
    """Dataclass field metadata for an option: its ``--help`` text and, optionally, its allowed values."""
    meta: dict[str, Any] = {"help": text}
    if choices is not None:
        meta["choices"] = tuple(choices)
    return meta


@dataclass
class TrainConfig:
    """Options shared by every adapter trainer (see each field's help, or run a train script with ``--help``)."""

    # model
    pretrained_model_name_or_path: str | None = field(
        default=None, metadata=option_help("Base model: a local diffusers folder (or hub id when online).")
    )
    revision: str | None = field(default=None, metadata=option_help("Revision of the base model (hub only)."))
    variant: str | None = field(default=None, metadata=option_help("Weight variant of the base model, e.g. 'fp16'."))
    prediction_type: str | None = field(
        default=None,
        metadata=option_help(
            "Override the noise scheduler's prediction type (default: the base scheduler's).",
            ["epsilon", "v_prediction", "sample"],
        ),
    )
    # data
    train_data_dir: str | None = field(
        default=None,
        metadata=option_help("Training data: an image folder with metadata.jsonl or sidecar .txt captions."),
    )
    resolution: int | None = field(
        default=None,
        metadata=option_help(
            "Training resolution in pixels (images are resized to it); default: the base's native size (its UNet's "
            "sample_size x the VAE factor, read from their config.json)."
        ),
    )
    center_crop: bool = field(default=True, metadata=option_help("Center crop (else random crop) after resizing."))
    random_flip: bool = field(default=False, metadata=option_help("Randomly flip training images horizontally."))
    on_missing_file: str = field(
        default="error",
        metadata=option_help(
            "What to do with a missing or unreadable data file: stop, or skip it.", ["error", "skip"]
        ),
    )
    dataloader_num_workers: int = field(
        default=0, metadata=option_help("DataLoader worker processes (0: main process).")
    )
    # output and logging
    output_dir: str = field(
        default="output", metadata=option_help("Where checkpoints, logs and the adapter are written.")
    )
    logging_dir: str = field(default="logs", metadata=option_help("Tracker folder, relative to output_dir."))
    report_to: str = field(default="tensorboard", metadata=option_help("Tracker.", ["tensorboard", "none"]))
    tracker_project_name: str | None = field(
        default=None, metadata=option_help("Tracker run name (default: the adapter kind).")
    )
    seed: int | None = field(default=None, metadata=option_help("Seed for reproducible training."))
    # optimisation
    train_batch_size: int = field(default=1, metadata=option_help("Batch size per device."))
    num_train_epochs: int = field(default=1, metadata=option_help("Epochs (ignored when max_train_steps is set)."))
    max_train_steps: int | None = field(
        default=None, metadata=option_help("Total optimizer steps; overrides num_train_epochs.")
    )
    gradient_accumulation_steps: int = field(default=1, metadata=option_help("Micro-batches per optimizer step."))
    gradient_checkpointing: bool = field(
        default=False, metadata=option_help("Trade compute for memory in the models.")
    )
    learning_rate: float = field(default=1e-4, metadata=option_help("Initial learning rate (after warmup)."))
    scale_lr: bool = field(
        default=False,
        metadata=option_help("Multiply the learning rate by batch size * accumulation steps * number of processes."),
    )
    lr_scheduler: str = field(default="constant", metadata=option_help("Learning-rate schedule.", LR_SCHEDULERS))
    lr_warmup_steps: int = field(default=0, metadata=option_help("Warmup steps of the learning-rate schedule."))
    lr_num_cycles: int = field(default=1, metadata=option_help("Hard restarts of the cosine_with_restarts schedule."))
    lr_power: float = field(default=1.0, metadata=option_help("Power of the polynomial schedule."))
    adam_beta1: float = field(default=0.9, metadata=option_help("AdamW beta1."))
    adam_beta2: float = field(default=0.999, metadata=option_help("AdamW beta2."))
    adam_weight_decay: float = field(default=1e-2, metadata=option_help("AdamW weight decay."))
    adam_epsilon: float = field(default=1e-8, metadata=option_help("AdamW epsilon."))
    use_8bit_adam: bool = field(
        default=False, metadata=option_help("8-bit AdamW from bitsandbytes (must be installed).")
    )
    max_grad_norm: float | None = field(
        default=1.0, metadata=option_help("Clip the gradient norm to this value (0 or none: no clipping).")
    )
    mixed_precision: str | None = field(
        default=None,
        metadata=option_help(
            "Mixed precision; default: the accelerate config's. Frozen weights are cast to this dtype, trainable "
            "ones stay fp32.",
            ["no", "fp16", "bf16"],
        ),
    )
    allow_tf32: bool = field(default=False, metadata=option_help("Allow TF32 matmuls on Ampere+ GPUs."))
    ddp_find_unused_parameters: bool = field(
        default=False, metadata=option_help("Set when some trainable parameters get no gradient in some steps (DDP).")
    )
    # diffusion loss
    snr_gamma: float | None = field(
        default=None, metadata=option_help("Min-SNR-gamma loss weighting (5.0 is the paper's value); none: plain MSE.")
    )
    noise_offset: float = field(
        default=0.0, metadata=option_help("Noise offset (0.05-0.1 helps very dark/bright images).")
    )
    # EMA
    use_ema: bool = field(
        default=False, metadata=option_help("Keep an EMA of the trainable weights; it is what is saved.")
    )
    ema_decay: float = field(default=0.9999, metadata=option_help("EMA decay (with the usual (1+n)/(10+n) warmup)."))
    # checkpoints
    checkpointing_steps: int = field(default=500, metadata=option_help("Save a resumable checkpoint every N steps."))
    checkpoints_total_limit: int | None = field(
        default=None, metadata=option_help("Keep at most this many checkpoints (oldest removed first).")
    )
    resume_from_checkpoint: str | None = field(
        default=None, metadata=option_help("Resume from a checkpoint folder, or 'latest' in output_dir.")
    )
    # validation
    validation_steps: int | None = field(
        default=None, metadata=option_help("Run validation every N steps (none: never; also run at the end when set).")
    )
    validation_prompts: list[str] = field(default_factory=list, metadata=option_help("Prompts for validation images."))
    num_validation_images: int = field(default=1, metadata=option_help("Images per validation prompt."))

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ``TypeError`` / ``ValueError`` naming the option when a value has the wrong type, is not finite or is
        out of range (:data:`OPTION_RANGES`). ``None`` is only accepted by options that default to "unset"."""
        check_option_values(self)
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices is not None and value is not None and value not in choices:
                raise ValueError(f"`{f.name}` must be one of {list(choices)}, got {value!r}.")
        positive = ("train_batch_size", "num_train_epochs", "gradient_accumulation_steps")
        positive += ("checkpointing_steps", "num_validation_images", "lr_num_cycles")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)!r}.")
        for name in ("max_train_steps", "checkpoints_total_limit", "validation_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"`{name}` must be >= 1 (or unset), got {value!r}.")
        for name in ("lr_warmup_steps", "dataloader_num_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)!r}.")
        if self.learning_rate <= 0:
            raise ValueError(f"`learning_rate` must be > 0, got {self.learning_rate!r}.")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"`ema_decay` must be in [0, 1), got {self.ema_decay!r}.")
        if self.snr_gamma is not None and self.snr_gamma <= 0:
            raise ValueError(f"`snr_gamma` must be > 0 (or unset), got {self.snr_gamma!r}.")
        if self.noise_offset < 0:
            raise ValueError(f"`noise_offset` must be >= 0, got {self.noise_offset!r}.")
        if self.max_grad_norm is not None and self.max_grad_norm < 0:
            raise ValueError(f"`max_grad_norm` must be >= 0 (or unset), got {self.max_grad_norm!r}.")

    def check_paths(self) -> None:
        """Check every input path option before any model loads (:data:`INPUT_PATHS`).

        Raises:
            ValueError: no base (``--pretrained_model_name_or_path``) was given.
            FileNotFoundError: a given input path does not exist (or is not the kind of path the option needs); the
                message names the option.
        """
        if self.pretrained_model_name_or_path is None:
            raise ValueError("`--pretrained_model_name_or_path` is required (a diffusers folder such as assets/base).")
        for name, kind in INPUT_PATHS.items():
            value = getattr(self, name, None)
            if value is None:
                continue
            path = Path(os.path.expanduser(str(value)))
            if kind == "model" and not path.exists() and _looks_like_hub_id(str(value)):
                continue  # a hub id: resolved (or refused) by huggingface_hub when the model loads
            if not path.exists():
                raise FileNotFoundError(f"`--{name}` {str(value)!r} does not exist.")
            if kind == "dir" and not path.is_dir():
                raise FileNotFoundError(f"`--{name}` {str(value)!r} is not a folder.")
            if kind == "file" and not path.is_file():
                raise FileNotFoundError(f"`--{name}` {str(value)!r} is not a file.")
        base = Path(str(self.pretrained_model_name_or_path))
        if base.is_dir() and not any((base / name).exists() for name in ("model_index.json", "unet", "config.json")):
            raise FileNotFoundError(
                f"`--pretrained_model_name_or_path` {str(base)!r} is not a diffusers model folder (no model_index.json "
                "or unet/)."
            )
        resume = self.resume_from_checkpoint
        found = (
            resume is None or resume == "latest" or Path(resume).is_dir() or (Path(self.output_dir) / resume).is_dir()
        )
        if not found:  # a folder, or a checkpoint name inside output_dir
            raise FileNotFoundError(f"`--resume_from_checkpoint` {resume!r} is not a checkpoint folder (or 'latest').")

    def resolve_resolution(self) -> int:
        """Fill ``resolution`` when unset: the base's native size, ``unet.sample_size x 2 ** (VAE levels - 1)``, read
        from ``<base>/unet/config.json`` and ``<base>/vae/config.json`` (nothing is loaded)."""
        if self.resolution is None:
            self.resolution = native_resolution(self.pretrained_model_name_or_path)
        return self.resolution

    def to_dict(self) -> dict[str, Any]:
        """Plain ``{field: value}`` (lists copied), e.g. to save next to the outputs."""
        return {f.name: _copy(getattr(self, f.name)) for f in dataclasses.fields(self)}

    # ------------------------------------------------------------------------------------------------------------
    @classmethod
    def build_parser(cls, description: str | None = None) -> argparse.ArgumentParser:
        """An ``argparse`` parser with one flag per field, plus ``--config``."""
        parser = OneLineErrorParser(
            description=description or cls.__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
        )
        parser.add_argument(
            "--config", type=str, default=None, help="YAML or TOML file of options (command-line flags override it)."
        )
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            base, is_list = _field_type(hints[f.name])
            kwargs: dict[str, Any] = {"help": f.metadata.get("help", ""), "dest": f.name}
            if "choices" in f.metadata:
                kwargs["choices"] = list(f.metadata["choices"])
            default = _default(f)
            flag = "--" + f.name
            optional = _is_optional(hints[f.name]) or f.default is None
            if base is bool and not is_list:
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, **kwargs)
            elif is_list:
                parser.add_argument(flag, nargs="*", type=_converter(base, f.name, False), default=default, **kwargs)
            else:
                parser.add_argument(flag, type=_converter(base, f.name, optional), default=default, **kwargs)
        return parser

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None, description: str | None = None) -> TrainConfig:
        """Parse ``argv`` (default ``sys.argv[1:]``): defaults < ``--config`` file < flags."""
        argv = list(sys.argv[1:] if argv is None else argv)
        parser = cls.build_parser(description)
        pre, _ = parser.parse_known_args(argv)
        if pre.config is not None:
            parser.set_defaults(**cls._coerce_file_values(load_config_file(pre.config), source=pre.config))
        namespace = vars(parser.parse_args(argv))
        namespace.pop("config", None)
        return cls(**namespace)

    @classmethod
    def from_file(cls, path: str | os.PathLike, **overrides: Any) -> TrainConfig:
        """Build from a YAML/TOML file, with keyword overrides."""
        values = cls._coerce_file_values(load_config_file(path), source=str(path))
        values.update(overrides)
        return cls(**values)

    @classmethod
    def _coerce_file_values(cls, raw: dict[str, Any], *, source: str) -> dict[str, Any]:
        names = {f.name: f for f in dataclasses.fields(cls) if f.init}
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        unknown = []
        for key, value in raw.items():
            name = key.replace("-", "_")
            if name not in names:
                unknown.append(key)
                continue
            base, is_list = _field_type(hints[name])
            optional = _is_optional(hints[name]) or names[name].default is None
            try:
                if value is None:
                    check_option_value(name, base, None, optional=optional)
                    values[name] = None
                elif is_list:
                    items = value if isinstance(value, list) else [value]
                    values[name] = [_convert(base, v, name, source) for v in items]
                    for item in values[name]:
                        check_option_value(name, base, item, optional=False)
                else:
                    values[name] = _convert(base, value, name, source)
                    check_option_value(name, base, values[name], optional=optional)
            except (TypeError, ValueError) as err:
                message = str(err)
                raise type(err)(message if source in message else f"{message.rstrip('.')} (in {source}).") from None
        if unknown:
            raise ValueError(
                f"Unknown option(s) {sorted(unknown)} in config file {source!r}; known options: {sorted(names)}."
            )
        return values


#: Input path options (any config class that has them) -> what they must be: ``"model"`` a local folder or a hub
#: id, ``"dir"`` a folder, ``"file"`` a file, ``"any"`` a file or a folder. Output folders (``output_dir``,
#: ``logging_dir``, ``teacher_cache_dir``) are created, so they are not checked.
INPUT_PATHS: dict[str, str] = {
    "pretrained_model_name_or_path": "model",
    "train_data_dir": "dir",
    "manifest": "file",
    "prompts_file": "file",
    "motion_adapter_path": "model",
    "image_encoder_path": "model",
    "init_adapter": "any",
    "validation_image": "file",
}

_GE1 = (1, None, False, False)
_GE0 = (0, None, False, False)
_GT0 = (0, None, True, False)
_UNIT = (0, 1, False, False)
_UNIT_OPEN = (0, 1, False, True)
#: The accepted range of every numeric option, by name: ``(minimum, maximum, minimum excluded, maximum excluded)``
#: (``None``: unbounded). Every int and float option of every training script has an entry (tested); scripts may
#: narrow a range further in their own ``validate`` (e.g. ``num_frames >= 2``).
OPTION_RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    # ints >= 1
    **dict.fromkeys(
        (
            "resolution",
            "train_batch_size",
            "num_train_epochs",
            "max_train_steps",
            "gradient_accumulation_steps",
            "checkpointing_steps",
            "checkpoints_total_limit",
            "validation_steps",
            "num_validation_images",
            "lr_num_cycles",
            "num_samples",
            "max_objects",
            "rank",
            "num_prompts",
            "seeds_per_prompt",
            "teacher_steps",
            "teacher_batch_size",
            "num_validation_samples",
            "num_frames",
            "frame_stride",
            "height",
            "width",
            "content_num_tokens",
            "validation_num_frames",
            "validation_inference_steps",
            "motion_num_attention_heads",
            "motion_max_seq_length",
            "num_views",
            "min_side",
            "max_side",
            "bucket_step",
            "scaling_samples",
        ),
        _GE1,
    ),  # fmt: skip
    # ints >= 0
    **dict.fromkeys(("lr_warmup_steps", "dataloader_num_workers", "seed"), _GE0),
    # floats
    "learning_rate": _GT0,
    "adam_beta1": _UNIT_OPEN,
    "adam_beta2": _UNIT_OPEN,
    "adam_weight_decay": _GE0,
    "adam_epsilon": _GT0,
    "max_grad_norm": _GE0,
    "lr_power": _GT0,
    "snr_gamma": _GT0,
    "noise_offset": _GE0,
    "ema_decay": _UNIT_OPEN,
    **dict.fromkeys(
        ("caption_dropout", "motion_caption", "image_dropout", "drop_text", "drop_reference", "drop_both"), _UNIT
    ),
    "noise_shift": _GT0,
    "kl_weight": _GE0,
    "object_weight": _GE0,
    "lora_alpha": _GT0,
    "alpha": _GT0,
    "lambda_hf": _GE0,
    "lambda_edge": _GE0,
    "hf_cutoff": (0, 0.7071, True, True),
    "teacher_guidance_scale": _GE0,
    "validation_guidance_scale": _GE0,
    "max_aspect_ratio": (1, None, False, False),
}


def describe_range(base: type, bounds: tuple[float | None, float | None, bool, bool] | None) -> str:
    """``"an int >= 1"``, ``"a finite number in [0, 1)"`` ... for an option's messages."""
    kind = "an int" if base is int else "a finite number"
    if bounds is None:
        return kind
    lo, hi, lo_open, hi_open = bounds
    if lo is not None and hi is not None:
        return f"{kind} in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{kind} {'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f"{kind} {'<' if hi_open else '<='} {hi:g}"
    return kind


def check_option_value(name: str, base: type, value: Any, *, optional: bool, label: str | None = None) -> None:
    """One option's value: its type (a bool is not a number, a float is not an int), finite, in its range.

    Raises:
        TypeError / ValueError: naming ``label`` (default ``name``; the command line passes ``--name``).
    """
    option, name = name, label or name
    if value is None:
        if optional:
            return
        raise ValueError(f"`{name}` needs a value (it has no 'unset' default), got None.")
    bounds = OPTION_RANGES.get(option)
    if base is bool:
        if not isinstance(value, bool):
            raise TypeError(f"`{name}` must be a bool, got {type(value).__name__} ({value!r}).")
        return
    if base is str:
        if not isinstance(value, str):
            raise TypeError(f"`{name}` must be a string, got {type(value).__name__} ({value!r}).")
        return
    allowed = describe_range(base, bounds)
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or (base is int and not isinstance(value, int)):
        raise TypeError(f"`{name}` must be {allowed}, got {type(value).__name__} ({value!r}).")
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be {allowed}, got {value!r}.")
    if bounds is not None:
        lo, hi, lo_open, hi_open = bounds
        if (lo is not None and (value < lo or (lo_open and value == lo))) or (
            hi is not None and (value > hi or (hi_open and value == hi))
        ):
            raise ValueError(f"`{name}` must be {allowed}, got {value!r}.")


def check_option_values(config: Any) -> None:
    """Type, finiteness and range of every option of a config dataclass (see :func:`check_option_value`)."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        if not f.init:
            continue
        base, is_list = _field_type(hints[f.name])
        optional = _is_optional(hints[f.name]) or f.default is None
        value = getattr(config, f.name)
        if is_list:
            if value is None and optional:
                continue
            if not isinstance(value, (list, tuple)):
                raise TypeError(f"`{f.name}` must be a list, got {type(value).__name__} ({value!r}).")
            for item in value:
                check_option_value(f.name, base, item, optional=False)
        else:
            check_option_value(f.name, base, value, optional=optional)


def native_resolution(base: str | os.PathLike | None) -> int:
    """The base's native image side: ``unet.config.sample_size x 2 ** (len(vae.config.block_out_channels) - 1)``
    read from the base's config files (a local folder, or a hub id through ``load_config``)."""
    if base is None:
        raise ValueError("`--pretrained_model_name_or_path` is required to find the native `resolution`.")
    from diffusers import AutoencoderKL, UNet2DConditionModel

    try:
        unet = UNet2DConditionModel.load_config(str(base), subfolder="unet")
        vae = AutoencoderKL.load_config(str(base), subfolder="vae")
    except OSError as err:
        raise FileNotFoundError(
            f"Cannot read the native size of `--pretrained_model_name_or_path` {str(base)!r} (unet/ and vae/ "
            f"config.json): {err}; pass `--resolution`."
        ) from None
    sample_size = unet.get("sample_size")
    if isinstance(sample_size, (list, tuple)):
        sample_size = sample_size[0]
    if not isinstance(sample_size, int):
        raise ValueError("The base's unet/config.json has no int `sample_size`; pass `--resolution`.")
    return int(sample_size) * 2 ** (len(vae.get("block_out_channels", [0])) - 1)


def _looks_like_hub_id(text: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text)) and not text.startswith((".", "/", "~"))


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``.yaml``/``.yml`` or ``.toml`` options file into a flat dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file {str(path)!r} does not exist.")
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    elif suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    else:
        raise ValueError(f"Config file {str(path)!r} must end in .yaml, .yml or .toml.")
    if not isinstance(data, dict):
        raise ValueError(f"Config file {str(path)!r} must hold a mapping of option names to values.")
    return data


# ------------------------------------------------------------------------------------------------------------------
def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _field_type(tp: Any) -> tuple[type, bool]:
    """``(scalar type, is_list)`` of an annotation like ``int``, ``float | None``, ``list[str]``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"Unsupported option type {tp!r}: use X | None.")
        return _field_type(args[0])
    if origin in (list, tuple, Sequence):
        (inner, *_) = typing.get_args(tp) or (str,)
        return _field_type(inner)[0], True
    if tp in (int, float, str, bool):
        return tp, False
    raise TypeError(f"Unsupported option type {tp!r}; use int, float, str, bool, X | None or list[X].")


def _parse_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"`{name}` expects a boolean, got {value!r}.")


def _convert(base: type, value: Any, name: str, source: str = "command line") -> Any:
    if isinstance(value, str) and value.strip().lower() in ("none", "null") and base is not str:
        return None
    try:
        if base is bool:
            return _parse_bool(value, name)
        if base is int and isinstance(value, float):  # 2.0 too: a float where an int is required
            raise ValueError
        if base in (int, float) and isinstance(value, bool):
            raise ValueError
        return base(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` expects {base.__name__}, got {value!r} (from {source}).") from None


def _converter(base: type, name: str, optional: bool):
    """argparse ``type=`` of option ``name``: converted and checked (type, finiteness, range) when parsed, so a bad
    flag is refused naming ``--name`` before anything else runs."""

    def convert(text: str) -> Any:
        try:
            value = _convert(base, text, f"--{name}")
            check_option_value(name, base, value, optional=optional, label=f"--{name}")
        except (TypeError, ValueError) as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        return value

    convert.__name__ = base.__name__
    return convert
