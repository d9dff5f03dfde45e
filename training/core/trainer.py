"""`AdapterTrainer`: the one accelerate training loop every adapter shares.

Subclass contract (this is all a ``training/train_<adapter>.py`` declares)::

    class MyTrainer(AdapterTrainer):
        config_class = MyConfig                 # a TrainConfig subclass (optional; default TrainConfig)
        adapter_kind = "my_adapter"             # written into the saved files' metadata

        def build_models(self) -> None:         # load the base (self.load_components("unet", "vae", ...,
            ...                                 # "noise_scheduler")), attach the adapter; every model must be an
                                                # attribute of self (directly or in a list/dict attribute)
        def trainable_parameters(self):         # -> list[Parameter] or list[(name, Parameter)]: the adapter only
            ...
        def adapter_state_dict(self):           # -> dict[str, Tensor]: the adapter's weights, in our file format
            ...
        def load_adapter_state_dict(self, sd):  # copy sd into the adapter IN PLACE (keep the Parameter objects)
            ...
        def build_dataset(self):                # -> torch.utils.data.Dataset
            ...
        collate_fn = None                       # optional: callable(list_of_examples) -> batch
        def compute_loss(self, batch):          # -> scalar Tensor; self.global_step = optimizer steps done so far
            ...
        def log_validation(self, step):         # optional -> list[PIL.Image] (main process, no_grad, EMA weights)
            ...
        def save_adapter(self, output_dir):     # optional; default: adapter_model.safetensors + metadata
            ...

Optional, rarely needed: ``build_dataloader(dataset)`` (e.g. a :class:`training.data.BucketBatchSampler`; give the
DataLoader a ``generator``) and ``adapter_metadata()`` (extra metadata for the saved files). Helpers for subclasses:
``load_components``, ``freeze``, ``assert_only_trainable``, ``device``, ``weight_dtype``, ``accelerator``, ``seed``,
and :mod:`training.core.diffusion` (``sample_noise``, ``sample_timesteps``, ``get_target``, ``diffusion_loss``).

Exact resume (a resumed run ends with the same weights as an uninterrupted one) needs only that the dataset draws
no random numbers from the global RNGs: derive augmentations from ``(seed, epoch, index)`` as
:class:`training.data.ImageCaptionDataset` does (the trainer calls ``set_epoch(epoch)`` on datasets and samplers
that have it). ``compute_loss`` may use the global torch RNG freely: every rank's RNG state is checkpointed.

What the base does, in order (``train()``): build the ``Accelerator`` (mixed precision, gradient accumulation,
tracker, project dir) -> seed -> ``build_models()`` -> check that *every* parameter with ``requires_grad`` is in
``trainable_parameters()`` (and nothing else trains) -> everything to the device -> gradient checkpointing ->
trainable weights to fp32 (diffusers' ``cast_training_params``) -> ``build_dataset()`` / DataLoader -> AdamW (or
8-bit AdamW) over the trainable parameters only -> LR scheduler with warmup -> ``accelerator.prepare`` -> optional
EMA (diffusers' ``EMAModel``) -> resume (``latest`` or a path) -> the loop (accumulate, NaN/inf check on every micro-batch, backward, clip, step, EMA, log, checkpoint, validation) ->
final ``save_adapter(output_dir)``.

How the models are prepared: the attributes of the trainer that are modules holding trainable parameters (plus any
trainable parameter not inside such a module) are gathered into one container module whose ``forward(batch)`` calls
``compute_loss(batch)``. That container is what ``accelerator.prepare`` wraps, so DDP synchronises exactly the
adapter's gradients, autocast covers the whole loss, and the frozen base never leaves the subclass's attributes.

Checkpoints: ``output_dir/checkpoint-<step>/`` written atomically (temp folder + rename) holding
``adapter_model.safetensors`` (never the frozen base), ``ema_model.safetensors`` with ``--use_ema``, the optimizer,
LR scheduler, sampler and RNG states, and ``trainer_state.json`` (written last; a folder without it is never
resumed from).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.training_utils import EMAModel, cast_training_params
from diffusers.utils import logging
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .checkpoint import (
    TRAINER_STATE_NAME,
    checkpoint_name,
    latest_checkpoint,
    prune_checkpoints,
    read_trainer_state,
    remove_incomplete_checkpoints,
    temp_checkpoint_name,
    write_json_atomic,
)
from .config import TrainConfig
from .ema import ema_state_dict, load_ema_state_dict

logger = logging.get_logger(__name__)

__all__ = ["AdapterTrainer", "NonFiniteLossError", "main", "ADAPTER_WEIGHTS_NAME", "EMA_WEIGHTS_NAME"]

ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
EMA_WEIGHTS_NAME = "ema_model.safetensors"
_MAX_LISTED = 8


class NonFiniteLossError(RuntimeError):
    """The loss (or gradient norm) became NaN/inf; the run stopped without saving the bad state."""

    def __init__(self, message: str, *, step: int, last_checkpoint: Path | None):
        super().__init__(message)
        self.step = step
        self.last_checkpoint = last_checkpoint


class _TrainStep(nn.Module):
    """Holds the modules with trainable parameters so ``accelerator.prepare`` wraps them; forward = compute_loss."""

    def __init__(self, trainer: AdapterTrainer, modules: dict[str, nn.Module], loose: list[nn.Parameter]):
        super().__init__()
        object.__setattr__(self, "_trainer", trainer)  # not a submodule
        self.models = nn.ModuleDict(modules)
        self.loose = nn.ParameterList(loose)

    def forward(self, batch: Any) -> torch.Tensor:
        return self._trainer.compute_loss(batch)


def _listing(items: Sequence[str]) -> str:
    head = ", ".join(items[:_MAX_LISTED])
    more = f" (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return f"{head}{more}"


class AdapterTrainer:
    """Base class of every adapter trainer; see the module docstring for the subclass contract."""

    config_class: type[TrainConfig] = TrainConfig
    adapter_kind: str = "adapter"
    collate_fn: Callable[[list[Any]], Any] | None = None

    def __init__(self, config: TrainConfig):
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}."
            )
        self.config = config
        base = config.pretrained_model_name_or_path
        if config.resolution is None and base is not None and Path(str(base)).is_dir():
            config.resolve_resolution()  # the base's native size (read from its config files, nothing loaded)
        self.accelerator = None
        self.weight_dtype = torch.float32
        self.global_step = 0
        self.epoch = 0
        self.max_train_steps: int | None = None
        self.total_batch_size: int | None = None
        self.ema: EMAModel | None = None  # diffusers' EMAModel over the trainable parameters (--use_ema)
        self.last_loss: float | None = None
        self.seed: int | None = config.seed
        self._trainable: list[tuple[str, nn.Parameter]] = []
        self._train_module: nn.Module | None = None
        self._last_checkpoint: Path | None = None

    # ==================================================================================================================
    # subclass contract
    # ==================================================================================================================
    def build_models(self) -> None:
        """Load the base models and attach the adapter; store every model as an attribute of ``self``."""
        raise NotImplementedError

    def trainable_parameters(self) -> list[nn.Parameter] | list[tuple[str, nn.Parameter]]:
        """The adapter's parameters: the only ones the optimizer sees and the only ones allowed to require grad."""
        raise NotImplementedError

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The adapter's weights as saved to ``adapter_model.safetensors``."""
        raise NotImplementedError

    def load_adapter_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Copy ``state_dict`` (from :meth:`adapter_state_dict`) into the adapter in place."""
        raise NotImplementedError

    def build_dataset(self) -> Dataset:
        """The training dataset; items are collated by :attr:`collate_fn` (default: torch's default collate)."""
        raise NotImplementedError

    def compute_loss(self, batch: Any) -> torch.Tensor:
        """The scalar training loss of one (per-device) batch."""
        raise NotImplementedError

    def log_validation(self, step: int) -> list[Any] | None:
        """Optional: validation images (PIL) at ``step``; runs on the main process under ``torch.no_grad()``."""
        return None

    def save_adapter(self, output_dir: str | os.PathLike) -> Path:
        """Write the final adapter: ``output_dir/adapter_model.safetensors`` with our metadata."""
        from adapters.weights import save_weights

        path = Path(output_dir) / ADAPTER_WEIGHTS_NAME
        return save_weights(self.adapter_state_dict(), path, metadata=self.adapter_metadata())

    # optional hooks ------------------------------------------------------------------------------------------------
    def build_dataloader(self, dataset: Dataset) -> DataLoader:
        """The (unprepared) training DataLoader; override e.g. to use a bucketed batch sampler."""
        generator = torch.Generator().manual_seed(self.seed if self.seed is not None else 0)
        return DataLoader(
            dataset,
            batch_size=self.config.train_batch_size,
            shuffle=True,
            collate_fn=self.collate_fn,
            num_workers=self.config.dataloader_num_workers,
            generator=generator,  # keeps iterator creation off the global RNG (exact resume)
        )

    def adapter_metadata(self) -> dict[str, str]:
        """Metadata written into adapter files: kind, format version, base family (when a ``unet`` is known)."""
        from adapters.weights import adapter_metadata, base_family

        unet = getattr(self, "unet", None)
        family = base_family(unet) if unet is not None else None
        return adapter_metadata(self.adapter_kind, family, trained_steps=self.global_step)

    # ==================================================================================================================
    # helpers for subclasses
    # ==================================================================================================================
    @property
    def device(self) -> torch.device:
        return self.accelerator.device if self.accelerator is not None else torch.device("cpu")

    @property
    def is_main_process(self) -> bool:
        return self.accelerator is None or self.accelerator.is_main_process

    def load_components(
        self, *names: str, model_path: str | os.PathLike | None = None, **classes: type
    ) -> dict[str, Any]:
        """Load pipeline components from ``pretrained_model_name_or_path``, frozen and on the device.

        Each name is a subfolder of the base (``unet``, ``vae``, ``text_encoder``, ``tokenizer``, ...); its class is
        read from ``model_index.json`` unless given in ``classes`` (e.g. ``motion_adapter=MotionAdapter``). The name
        ``noise_scheduler`` loads the ``scheduler`` subfolder as a ``DDPMScheduler`` (with the ``prediction_type``
        override applied): the training noise scheduler. Modules are frozen (``requires_grad_(False)``, ``eval()``)
        and moved to the device in the weight dtype (fp16/bf16 under mixed precision). Every component is also set as
        an attribute of ``self``.
        """
        cfg = self.config
        path = model_path or cfg.pretrained_model_name_or_path
        if path is None:
            raise ValueError("`pretrained_model_name_or_path` is required to load the base model.")
        index: dict[str, Any] = {}
        index_file = Path(path) / "model_index.json"
        if index_file.is_file():
            index = json.loads(index_file.read_text(encoding="utf-8"))
        out: dict[str, Any] = {}
        for name in list(names) + [n for n in classes if n not in names]:
            common = {"revision": cfg.revision} if cfg.revision else {}
            if name == "noise_scheduler" and name not in classes:
                from diffusers import DDPMScheduler

                obj = DDPMScheduler.from_pretrained(path, subfolder="scheduler", **common)
                if cfg.prediction_type is not None:
                    obj.register_to_config(prediction_type=cfg.prediction_type)
            else:
                cls = classes.get(name)
                if cls is None:
                    entry = index.get(name)
                    if not entry or entry[0] is None:
                        raise ValueError(
                            f"Component {name!r} is not in {str(index_file)!r}; pass its class, e.g. "
                            f"load_components({name}=SomeClass)."
                        )
                    cls = getattr(importlib.import_module(entry[0]), entry[1])
                kwargs = dict(common)
                if cfg.variant and issubclass(cls, nn.Module):
                    kwargs["variant"] = cfg.variant
                obj = cls.from_pretrained(path, subfolder=name, **kwargs)
                if isinstance(obj, nn.Module):
                    self.freeze(obj)
            out[name] = obj
            setattr(self, name, obj)
        return out

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """``(B, 77, D)`` hidden states of ``self.text_encoder`` for ``B`` texts (padded to the tokenizer's length)."""
        ids = self.tokenizer(
            texts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)
        return self.text_encoder(ids)[0]

    def freeze(self, module: nn.Module) -> nn.Module:
        """``requires_grad_(False)``, ``eval()`` and move to the device in the weight dtype (floating tensors)."""
        module.requires_grad_(False)
        module.eval()
        return module.to(self.device, dtype=self.weight_dtype)

    def assert_only_trainable(self, names_predicate: Callable[[str], bool]) -> None:
        """Raise ``AssertionError`` listing every parameter that requires grad and fails ``names_predicate``.

        Names are qualified by the trainer attribute, e.g. ``unet.down_blocks.0.resnets.0.conv1.weight``.
        """
        bad = [name for name, p in self._named_module_parameters() if p.requires_grad and not names_predicate(name)]
        if bad:
            raise AssertionError(f"Only the adapter may train, but these parameters require grad: {_listing(bad)}.")

    # ==================================================================================================================
    # the loop
    # ==================================================================================================================
    def train(self) -> None:
        """Run the whole training; see the module docstring."""
        # Before any model loads: every input path exists, and `--resolution` defaults to the base's native size.
        self.config.check_paths()
        self.config.resolve_resolution()
        try:
            self._setup_accelerator()
            self._setup_models()
            dataloader = self._setup_data()
            self._setup_optimization(dataloader)
            self._resume()
            self._loop()
            self._finish()
        finally:
            if self.accelerator is not None:
                self.accelerator.end_training()

    # ------------------------------------------------------------------------------------------------------------------
    def _setup_accelerator(self) -> None:
        from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
        from accelerate.utils import ProjectConfiguration, broadcast_object_list, set_seed

        cfg = self.config
        output_dir = Path(cfg.output_dir)
        log_with = None if cfg.report_to == "none" else cfg.report_to
        if log_with == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
            raise ImportError(
                "report_to='tensorboard' needs tensorboard: `pip install tensorboard` (or the `train` extra), "
                "or pass --report_to none."
            )
        if cfg.use_ema and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
            raise ValueError("`use_ema` is not supported with FSDP (the parameters are sharded); use DDP or ZeRO-2.")
        accelerator = Accelerator(
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            mixed_precision=cfg.mixed_precision,
            log_with=log_with,
            project_config=ProjectConfiguration(
                project_dir=str(output_dir), logging_dir=str(output_dir / cfg.logging_dir)
            ),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=cfg.ddp_find_unused_parameters)],
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=None),
        )
        self.accelerator = accelerator
        if accelerator.is_local_main_process:
            logging.set_verbosity_info()
        else:
            logging.set_verbosity_error()
        if cfg.allow_tf32 and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        # one seed for every rank (a random one, broadcast, when none is given), recorded in trainer_state.json
        seed = [cfg.seed if cfg.seed is not None else int(np.random.SeedSequence().entropy % (2**31))]
        if accelerator.num_processes > 1:
            broadcast_object_list(seed)
        self.seed = int(seed[0])
        accelerator.dataloader_config.data_seed = self.seed
        set_seed(self.seed)  # identical on every rank for model/adapter initialisation

        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
            accelerator.mixed_precision, torch.float32
        )
        if accelerator.is_main_process:
            output_dir.mkdir(parents=True, exist_ok=True)
            remove_incomplete_checkpoints(output_dir)
            import yaml

            (output_dir / "train_config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        accelerator.wait_for_everyone()

    def _setup_models(self) -> None:
        cfg = self.config
        self.build_models()
        self._trainable = self._collect_trainable()
        self._check_only_trainable()
        module_attrs = dict(self._module_attributes())
        for module in module_attrs.values():
            module.to(self.device)
        if cfg.gradient_checkpointing:
            enabled = []
            for name, module in module_attrs.items():
                if hasattr(module, "enable_gradient_checkpointing") and getattr(
                    module, "_supports_gradient_checkpointing", True
                ):
                    module.enable_gradient_checkpointing()
                    enabled.append(name)
            if not enabled:
                logger.warning("--gradient_checkpointing: no model of this trainer supports it; ignored.")
            else:
                logger.info(f"Gradient checkpointing enabled in: {', '.join(enabled)}.")

        # the container that accelerate prepares: modules holding trainable params + loose trainable params
        trainable_ids = {id(p) for _, p in self._trainable}
        holders: dict[str, nn.Module] = {}
        covered: set[int] = set()
        for name, module in module_attrs.items():
            ids = {id(p) for p in module.parameters()}
            if ids & trainable_ids:
                holders[name.replace(".", "_")] = module
                covered |= ids
        loose = [p for _, p in self._trainable if id(p) not in covered]
        self._train_module = _TrainStep(self, holders, loose)
        # trainable weights in fp32 (GradScaler and AdamW need it): the container holds every trainable parameter
        # (loose ones too) and nothing else requires grad (checked above), so this casts exactly the adapter
        cast_training_params(self._train_module, dtype=torch.float32)
        for name, module in module_attrs.items():  # frozen-only models run in eval mode
            module.train(name.replace(".", "_") in holders)
        n_train = sum(p.numel() for _, p in self._trainable)
        logger.info(f"Trainable parameters: {n_train:,} in {len(self._trainable)} tensors ({self.adapter_kind}).")

    def _setup_data(self) -> DataLoader:
        dataset = self.build_dataset()
        try:
            n = len(dataset)
        except TypeError:
            n = None
        if n == 0:
            raise ValueError("The training dataset is empty.")
        dataloader = self.build_dataloader(dataset)
        if len(dataloader) == 0:
            raise ValueError(
                "The training DataLoader yields no batch (dataset smaller than one batch with drop_last?)."
            )
        self._num_examples = n
        return dataloader

    def _setup_optimization(self, dataloader: DataLoader) -> None:
        from diffusers.optimization import get_scheduler

        cfg = self.config
        acc = self.accelerator
        lr = cfg.learning_rate
        if cfg.scale_lr:
            lr = lr * cfg.gradient_accumulation_steps * cfg.train_batch_size * acc.num_processes
        params = [p for _, p in self._trainable]
        if cfg.use_8bit_adam:
            try:
                import bitsandbytes as bnb
            except ImportError as err:
                raise ImportError(
                    "--use_8bit_adam needs bitsandbytes: `pip install bitsandbytes` (CUDA only), or drop the flag."
                ) from err
            optimizer_cls = bnb.optim.AdamW8bit
        else:
            optimizer_cls = torch.optim.AdamW
        optimizer = optimizer_cls(
            params,
            lr=lr,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            weight_decay=cfg.adam_weight_decay,
            eps=cfg.adam_epsilon,
        )

        len_per_process = math.ceil(len(dataloader) / acc.num_processes)
        steps_per_epoch = math.ceil(len_per_process / cfg.gradient_accumulation_steps)
        max_steps = cfg.max_train_steps or cfg.num_train_epochs * steps_per_epoch
        lr_scheduler = get_scheduler(
            cfg.lr_scheduler,
            optimizer=optimizer,
            num_warmup_steps=cfg.lr_warmup_steps * acc.num_processes,
            num_training_steps=max_steps * acc.num_processes,
            num_cycles=cfg.lr_num_cycles,
            power=cfg.lr_power,
        )
        self._train_module, self.optimizer, self.train_dataloader, self.lr_scheduler = acc.prepare(
            self._train_module, optimizer, dataloader, lr_scheduler
        )
        if getattr(self.train_dataloader, "generator", True) is None:
            # without its own generator a DataLoader draws its base seed from the global RNG each time an iterator
            # is created, so a resumed run (new iterator after the RNG restore) would diverge from an
            # uninterrupted one
            self.train_dataloader.generator = torch.Generator().manual_seed(self.seed)
        self.steps_per_epoch = math.ceil(len(self.train_dataloader) / cfg.gradient_accumulation_steps)
        self.max_train_steps = max_steps
        self.num_train_epochs = math.ceil(max_steps / self.steps_per_epoch)
        self.total_batch_size = cfg.train_batch_size * acc.num_processes * cfg.gradient_accumulation_steps

        if cfg.use_ema:
            self.ema = EMAModel(params, decay=cfg.ema_decay, foreach=True)
        acc.register_save_state_pre_hook(self._save_state_hook)
        acc.register_load_state_pre_hook(self._load_state_hook)

        if acc.is_main_process:
            tracker_config = {
                k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in cfg.to_dict().items()
            }
            acc.init_trackers(cfg.tracker_project_name or self.adapter_kind, config=tracker_config)
        logger.info("***** Running training *****")
        logger.info(f"  Num examples = {self._num_examples}")
        logger.info(f"  Num epochs = {self.num_train_epochs}")
        logger.info(f"  Instantaneous batch size per device = {cfg.train_batch_size}")
        logger.info(f"  Total train batch size (w. parallel, distributed & accumulation) = {self.total_batch_size}")
        logger.info(f"  Gradient accumulation steps = {cfg.gradient_accumulation_steps}")
        logger.info(f"  Total optimization steps = {self.max_train_steps}")

    def _resume(self) -> None:
        cfg = self.config
        self.global_step = 0
        if not cfg.resume_from_checkpoint:
            return
        if cfg.resume_from_checkpoint == "latest":
            path = latest_checkpoint(cfg.output_dir)
            if path is None:
                logger.info(f"No complete checkpoint in {cfg.output_dir!r}; starting a new training run.")
                return
        else:
            path = Path(cfg.resume_from_checkpoint)
            if not path.is_dir() and (Path(cfg.output_dir) / path).is_dir():
                path = Path(cfg.output_dir) / path
            if not path.is_dir():
                raise FileNotFoundError(f"`resume_from_checkpoint` {cfg.resume_from_checkpoint!r} does not exist.")
        state = read_trainer_state(path)
        if state.get("adapter_kind", self.adapter_kind) != self.adapter_kind:
            raise ValueError(
                f"Checkpoint {str(path)!r} was written by a {state['adapter_kind']!r} trainer, not {self.adapter_kind!r}."
            )
        if state.get("seed") is not None and state["seed"] != self.seed:
            logger.warning(
                f"Resuming a run seeded {state['seed']} with seed {self.seed}: data order and noise will differ."
            )
        logger.info(f"Resuming from checkpoint {path}")
        from accelerate.utils import DistributedType

        kwargs = {}
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            kwargs["load_module_strict"] = False  # saved with exclude_frozen_parameters; the adapter via our hook
        self.accelerator.load_state(str(path), **kwargs)
        self.global_step = int(state["global_step"])
        self._last_checkpoint = path

    def _loop(self) -> None:
        from accelerate.utils import set_seed
        from tqdm.auto import tqdm

        cfg = self.config
        acc = self.accelerator
        if not cfg.resume_from_checkpoint or self._last_checkpoint is None:
            # noise differs across ranks; a resumed run restores every rank's RNG state instead
            set_seed(self.seed + acc.process_index)
        first_epoch = self.global_step // self.steps_per_epoch
        skip_batches = (self.global_step % self.steps_per_epoch) * cfg.gradient_accumulation_steps
        progress = tqdm(
            range(self.max_train_steps),
            initial=self.global_step,
            desc="Steps",
            disable=not acc.is_local_main_process,
        )
        params = [p for _, p in self._trainable]
        check_grad_norm = acc.mixed_precision != "fp16"  # fp16 overflow is handled by the grad scaler
        try:
            done = self.global_step >= self.max_train_steps
            for epoch in range(first_epoch, self.num_train_epochs):
                if done:
                    break
                self.epoch = epoch
                _set_epoch(self.train_dataloader, epoch)
                loader = self.train_dataloader
                if epoch == first_epoch and skip_batches:
                    loader = acc.skip_first_batches(self.train_dataloader, skip_batches)
                step_loss = 0.0
                for batch in loader:
                    with acc.accumulate(self._train_module):
                        loss = self._train_module(batch)
                        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                            raise TypeError("compute_loss(batch) must return a scalar tensor.")
                        losses = acc.gather(loss.detach().float().reshape(1))
                        if not bool(torch.isfinite(losses).all()):
                            self._raise_non_finite("Loss", losses)
                        step_loss += losses.mean().item() / cfg.gradient_accumulation_steps
                        acc.backward(loss)
                        grad_norm = None
                        if acc.sync_gradients and cfg.max_grad_norm:
                            grad_norm = acc.clip_grad_norm_(params, cfg.max_grad_norm)
                            if check_grad_norm and grad_norm is not None and not bool(torch.isfinite(grad_norm).all()):
                                self._raise_non_finite("Gradient norm", grad_norm.reshape(-1))
                        self.optimizer.step()
                        self.lr_scheduler.step()
                        self.optimizer.zero_grad(set_to_none=True)

                    if acc.sync_gradients:
                        self.global_step += 1
                        if self.ema is not None:
                            self.ema.step(params)
                        progress.update(1)
                        self.last_loss = step_loss
                        logs = {"loss": step_loss, "lr": self.lr_scheduler.get_last_lr()[0]}
                        if grad_norm is not None:
                            logs["grad_norm"] = float(grad_norm)
                        progress.set_postfix(loss=f"{step_loss:.4g}", lr=f"{logs['lr']:.3g}")
                        acc.log(logs, step=self.global_step)
                        step_loss = 0.0
                        if self.global_step % cfg.checkpointing_steps == 0:
                            self.save_checkpoint()
                        if cfg.validation_steps and self.global_step % cfg.validation_steps == 0:
                            self.run_validation()
                        if self.global_step >= self.max_train_steps:
                            done = True
                            break
        finally:
            progress.close()

    def _raise_non_finite(self, what: str, values: torch.Tensor) -> None:
        step = self.global_step + 1
        last = self._last_checkpoint
        where = f"the last good checkpoint {str(last)!r} is kept" if last else "no checkpoint had been saved yet"
        raise NonFiniteLossError(
            f"{what} is not finite at step {step} (values {values.tolist()}); stopping without saving this state: "
            f"{where}. Try a lower learning rate, --mixed_precision bf16 instead of fp16, or check the data.",
            step=step,
            last_checkpoint=last,
        )

    def _finish(self) -> None:
        cfg = self.config
        acc = self.accelerator
        acc.wait_for_everyone()
        if self.ema is not None:
            self.ema.copy_to(self._trainable_params())  # the EMA weights are the result
        if cfg.validation_steps and self.global_step % cfg.validation_steps != 0:
            self.run_validation()
        with self._full_params():
            if acc.is_main_process:
                path = self.save_adapter(cfg.output_dir)
                logger.info(f"Saved the trained {self.adapter_kind} adapter to {path}")
                write_json_atomic(self._trainer_state(), Path(cfg.output_dir) / TRAINER_STATE_NAME)
        acc.wait_for_everyone()

    # ==================================================================================================================
    # checkpoints
    # ==================================================================================================================
    def _trainer_state(self) -> dict[str, Any]:
        cfg = self.config
        acc = self.accelerator
        return {
            "adapter_kind": self.adapter_kind,
            "global_step": self.global_step,
            "max_train_steps": self.max_train_steps,
            "seed": self.seed,
            "num_processes": acc.num_processes,
            "train_batch_size": cfg.train_batch_size,
            "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
            "total_batch_size": self.total_batch_size,
            "mixed_precision": acc.mixed_precision,
            "last_loss": self.last_loss,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def save_checkpoint(self) -> Path:
        """Save a resumable checkpoint at the current step, atomically, then prune old ones."""
        from accelerate.utils import DistributedType

        cfg = self.config
        acc = self.accelerator
        out = Path(cfg.output_dir)
        final = out / checkpoint_name(self.global_step)
        tmp = out / temp_checkpoint_name(self.global_step)
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        kwargs = {"exclude_frozen_parameters": True} if acc.distributed_type == DistributedType.DEEPSPEED else {}
        acc.save_state(str(tmp), **kwargs)
        acc.wait_for_everyone()
        if acc.is_main_process:
            write_json_atomic(self._trainer_state(), tmp / TRAINER_STATE_NAME)  # the completion marker, last
            if final.exists():
                old = out / temp_checkpoint_name(self.global_step, "old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
            logger.info(f"Saved checkpoint {final}")
            prune_checkpoints(out, cfg.checkpoints_total_limit)
        acc.wait_for_everyone()
        self._last_checkpoint = final
        return final

    def _full_params(self, writeback: bool = False):
        """Under FSDP, a context in which the (sharded) parameters are whole on every rank; collective."""
        from accelerate.utils import DistributedType

        if self.accelerator is None or self.accelerator.distributed_type != DistributedType.FSDP:
            return contextlib.nullcontext()
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        return FSDP.summon_full_params(self._train_module, writeback=writeback)

    def _save_state_hook(self, models: list[nn.Module], weights: list[dict], output_dir: str) -> None:
        from adapters.weights import save_weights

        with self._full_params():
            state_dict = {k: v.detach().to("cpu", copy=True) for k, v in self.adapter_state_dict().items()}
        if self.accelerator.is_main_process:
            save_weights(state_dict, Path(output_dir) / ADAPTER_WEIGHTS_NAME, metadata=self.adapter_metadata())
            if self.ema is not None:
                save_weights(ema_state_dict(self.ema), Path(output_dir) / EMA_WEIGHTS_NAME)
        weights.clear()  # accelerate must not write the models: they hold the frozen base

    def _load_state_hook(self, models: list[nn.Module], input_dir: str) -> None:
        from adapters.weights import check_adapter_kind, load_weights

        path = Path(input_dir) / ADAPTER_WEIGHTS_NAME
        state_dict, metadata = load_weights(path)  # on CPU; load_adapter_state_dict copies into place
        check_adapter_kind(metadata, self.adapter_kind, source=str(path))
        with self._full_params(writeback=True):
            self.load_adapter_state_dict(state_dict)
        if self.ema is not None:
            ema_path = Path(input_dir) / EMA_WEIGHTS_NAME
            if ema_path.is_file():
                load_ema_state_dict(self.ema, load_weights(ema_path)[0])
            else:
                logger.warning(f"{ema_path} is missing: the EMA restarts from the current weights.")
                self.ema = EMAModel(self._trainable_params(), decay=self.config.ema_decay, foreach=True)
        models.clear()  # the adapter is restored; nothing else of the models is in the checkpoint

    # ==================================================================================================================
    # validation
    # ==================================================================================================================
    def run_validation(self) -> list[Any]:
        """Call :meth:`log_validation` (main process, EMA weights when enabled), save the images and log them."""
        from accelerate.utils import DistributedType

        if type(self).log_validation is AdapterTrainer.log_validation:
            return []
        acc = self.accelerator
        zero3 = acc.distributed_type == DistributedType.DEEPSPEED and acc.state.deepspeed_plugin.zero_stage == 3
        if acc.distributed_type == DistributedType.FSDP or zero3:
            if not getattr(self, "_warned_validation", False):
                logger.warning("Validation images are skipped with sharded parameters (FSDP / ZeRO-3).")
                self._warned_validation = True
            return []
        images: list[Any] = []
        if acc.is_main_process:
            modes = {name: m.training for name, m in self._module_attributes()}
            if self.ema is not None:
                self.ema.store(self._trainable_params())
                self.ema.copy_to(self._trainable_params())
            try:
                # validation must not perturb training: it runs on its own copy of the global RNG states (else a
                # resumed run, restored from the checkpoint saved just before validation, would diverge)
                with _forked_rng(self.device), torch.no_grad():
                    images = list(self.log_validation(self.global_step) or [])
            finally:
                if self.ema is not None:
                    self.ema.restore(self._trainable_params())
                for name, m in self._module_attributes():
                    m.train(modes.get(name, m.training))
            self._save_validation_images(images)
        acc.wait_for_everyone()
        return images

    def _save_validation_images(self, images: list[Any]) -> None:
        if not images:
            return
        folder = Path(self.config.output_dir) / "validation" / f"step-{self.global_step}"
        folder.mkdir(parents=True, exist_ok=True)
        arrays = []
        for i, image in enumerate(images):
            image.save(folder / f"{i:02d}.png")
            arrays.append(np.asarray(image.convert("RGB")))
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                if len({a.shape for a in arrays}) == 1:
                    tracker.writer.add_images("validation", np.stack(arrays), self.global_step, dataformats="NHWC")
                else:
                    for i, a in enumerate(arrays):
                        tracker.writer.add_image(f"validation/{i}", a, self.global_step, dataformats="HWC")
        logger.info(f"Saved {len(images)} validation image(s) to {folder}")

    # ==================================================================================================================
    # internals
    # ==================================================================================================================
    def _module_attributes(self) -> Iterable[tuple[str, nn.Module]]:
        """``(name, module)`` for every module attribute of the trainer (also inside lists/tuples/dicts)."""
        seen: set[int] = set()
        for name, value in list(vars(self).items()):
            if name.startswith("_") or name in ("accelerator", "optimizer", "lr_scheduler", "train_dataloader"):
                continue
            items: list[tuple[str, Any]]
            if isinstance(value, nn.Module):
                items = [(name, value)]
            elif isinstance(value, (list, tuple)):
                items = [(f"{name}.{i}", v) for i, v in enumerate(value)]
            elif isinstance(value, dict):
                items = [(f"{name}.{k}", v) for k, v in value.items()]
            else:
                continue
            for qual, module in items:
                if isinstance(module, nn.Module) and id(module) not in seen:
                    seen.add(id(module))
                    yield qual, module

    def _named_module_parameters(self) -> Iterable[tuple[str, nn.Parameter]]:
        seen: set[int] = set()
        for qual, module in self._module_attributes():
            for pname, p in module.named_parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield f"{qual}.{pname}", p

    def _trainable_params(self) -> list[nn.Parameter]:
        """The trainable parameters in ``trainable_parameters()`` order (the EMA's shadow order)."""
        return [p for _, p in self._trainable]

    def _collect_trainable(self) -> list[tuple[str, nn.Parameter]]:
        items = list(self.trainable_parameters())
        if not items:
            raise ValueError(f"{type(self).__name__}.trainable_parameters() returned no parameter.")
        named: list[tuple[str, nn.Parameter]] = []
        seen: set[int] = set()
        for i, item in enumerate(items):
            name, p = item if isinstance(item, tuple) else (f"param.{i}", item)
            if not isinstance(p, nn.Parameter):
                raise TypeError(f"trainable_parameters() item {name!r} is a {type(p).__name__}, not a Parameter.")
            if id(p) in seen:
                raise ValueError(f"trainable_parameters() lists {name!r} twice.")
            if not p.is_floating_point():
                raise TypeError(f"Trainable parameter {name!r} has non-floating dtype {p.dtype}.")
            seen.add(id(p))
            named.append((name, p))
        return named

    def _check_only_trainable(self) -> None:
        """Every parameter with ``requires_grad`` is in ``trainable_parameters()`` and vice versa."""
        not_grad = [name for name, p in self._trainable if not p.requires_grad]
        if not_grad:
            raise ValueError(
                f"trainable_parameters() returned parameters with requires_grad=False: {_listing(not_grad)}."
            )
        trainable_ids = {id(p) for _, p in self._trainable}
        stray = [name for name, p in self._named_module_parameters() if p.requires_grad and id(p) not in trainable_ids]
        if stray:
            raise AssertionError(
                "Only the adapter may train, but these parameters require grad and are not in "
                f"trainable_parameters(): {_listing(stray)}. Freeze them (requires_grad_(False)) or list them."
            )


@contextlib.contextmanager
def _forked_rng(device: torch.device):
    """Run a block without changing the torch (CPU and ``device``), numpy and Python global RNG states."""
    import random

    py_state, np_state = random.getstate(), np.random.get_state()
    devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def _set_epoch(loader: Any, epoch: int) -> None:
    """``set_epoch(epoch)`` on the loader and on every sampler / batch sampler / dataset inside it that has one.

    accelerate only reaches some of them (not a custom batch sampler under ``skip_first_batches`` or a dataset
    behind a sampler); each epoch's shuffling and random augmentation then depend only on ``(seed, epoch)``.
    """
    seen: set[int] = set()
    stack = [loader]
    while stack:
        obj = stack.pop()
        if obj is None or id(obj) in seen or isinstance(obj, (torch.Tensor, str, int, float)):
            continue
        seen.add(id(obj))
        set_epoch = getattr(obj, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
        for attr in ("batch_sampler", "sampler", "dataset", "base_dataloader"):
            stack.append(getattr(obj, attr, None))


def main(trainer_cls: type[AdapterTrainer], argv: Sequence[str] | None = None) -> AdapterTrainer:
    """Parse the command line into ``trainer_cls.config_class`` and train. Returns the trainer.

    Run a script as ``python -m training.train_x --flags`` or ``accelerate launch -m training.train_x --flags``.
    """
    import logging as std_logging

    std_logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=std_logging.INFO)
    silence_unactionable_warnings()
    try:  # a bad option, config file or input path: one line naming the option, before any model loads
        config = trainer_cls.config_class.from_args(argv, description=(trainer_cls.__doc__ or "").strip() or None)
        config.check_paths()
        config.resolve_resolution()
    except (ValueError, TypeError, FileNotFoundError) as err:
        logger.error(f"{trainer_cls.__name__}: {err}")
        raise SystemExit(2) from None
    trainer = trainer_cls(config)
    trainer.train()
    return trainer


def silence_unactionable_warnings() -> None:
    """Filter, at their source, the start-up notices a training user can do nothing about; every other warning stays.

    - transformers' "`CLIPImageProcessor` requires torchvision (not installed); falling back to ..." notice (the
      image processors are not used in training; it is logged by transformers' image-processing auto module).

    accelerate's notice that values "were not passed to `accelerate launch` and had defaults used instead" is printed
    by the launcher's own process, where no filter of ours runs: the README's commands pass the shipped
    ``--config_file training/configs/accelerate_single.yaml -q`` instead.
    """
    from adapters.log_filters import filter_unactionable_warnings

    filter_unactionable_warnings()
