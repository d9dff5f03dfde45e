"""The authors' I2V-Adapter release: one whole-UNet ``.pth`` split into diffusers / our parts.

The only released I2V-Adapter weights are ``animatediff_v15_v1_ipplus.pth`` (KwaiVGI/I2V-Adapter, weights on the hub
under ``space-xun/i2v_adapter``): the state dict of the authors' ``UNet3DConditionModel`` built from SD 1.5 with
``configs/inference/infer.yaml``. Every key falls in one of four groups, each converted here:

* **motion modules**, AnimateDiff v1 in the original naming (``{down,up}_blocks.<i>.motion_modules.<j>.
  temporal_transformer.{norm,proj_in,proj_out}``, ``...transformer_blocks.<k>.attention_blocks.{0,1}.{to_q,to_k,to_v,
  to_out.0}``, ``...attention_blocks.{0,1}.pos_encoder.pe`` (max length 24), ``norms.{0,1}``, ``ff``, ``ff_norm``; no
  mid-block module): renamed as diffusers' AnimateDiff converter does (``temporal_transformer.`` dropped,
  ``attention_blocks.N`` -> ``attnN+1``, ``norms.N`` -> ``normN+1``, ``ff_norm`` -> ``norm3``) into a diffusers
  ``MotionAdapter``. diffusers keeps one sinusoidal table per transformer block (``pos_embed.pe``, applied before
  both attentions) where AnimateDiff keeps one per attention, so ``attention_blocks.0.pos_encoder.pe`` becomes
  ``pos_embed.pe`` and ``attention_blocks.1.pos_encoder.pe`` must equal it (it does in every AnimateDiff file: both
  are the same fixed sinusoid); a file where they differ is refused by name.
* **first-frame attention** in every spatial ``attn1`` (``to_q_ff.weight``, ``to_out_ff.{weight,bias}``; the authors'
  ``MixedCausalAttention2D``: ``dropout(to_out(SA) + to_out_ff(Attn(x W_q_ff, x_1 W_k, x_1 W_v)))``) -> our
  I2V-Adapter keys ``to_q_i2v`` / ``to_out_i2v``. Note: the authors' loader (``UNet3DConditionModel.
  from_pretrained_ip``) overwrites every ``to_q_ff`` with the layer's own ``to_q`` before loading, so their published
  results use ``W_q' = W_q``; ``first_frame_query="to_q"`` (the default) reproduces that, ``"file"`` uses the file's
  ``to_q_ff`` (reported when the two differ).
* **IP-Adapter-Plus branches** in every spatial ``attn2`` (``to_k_ip.weight``, ``to_v_ip.weight``; 16 image tokens
  appended to the text tokens, added with weight 1) -> our content adapter (``content.ip_adapter.<id>.to_{k,v}_ip``,
  ids as diffusers numbers the UNet's cross-attention processors). The resampler itself is not in the file: it comes
  from ``h94/IP-Adapter`` ``models/ip-adapter-plus_sd15.bin`` (``image_proj``), as in the authors' ``inference.py``.
* **the SD 1.5 spatial UNet** under diffusers' ``UNet2DConditionModel`` names (everything else). It is compared with
  the base given by the caller; differences are reported, and ``use_release_unet=True`` uses the file's.

Reading validates every group completely (missing, unexpected and wrong-shape keys listed by name in one
:class:`~adapters.weights.AdapterWeightsError`) before any model is touched.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers.utils import logging
from torch import nn

from ..weights import AdapterWeightsError, load_weights
from .content import CONTENT_PREFIX, _cross_attention_layers

logger = logging.get_logger(__name__)

__all__ = [
    "AUTHORS_MOTION_CONFIG",
    "RELEASE_FILENAME",
    "I2VRelease",
    "ReleaseReport",
    "check_against",
    "motion_to_diffusers",
    "read_ip_adapter_file",
    "read_release",
    "split_release",
]

#: File name of the authors' release (``space-xun/i2v_adapter``).
RELEASE_FILENAME = "animatediff_v15_v1_ipplus.pth"

#: ``motion_module_kwargs`` of the authors' ``configs/inference/infer.yaml`` that the weights cannot tell: heads of the
#: temporal attention (8) and GroupNorm groups (32, AnimateDiff's default). The rest (channels, layers per block, max
#: length 24, no mid block) is read from the file.
AUTHORS_MOTION_CONFIG = {"motion_num_attention_heads": 8, "motion_norm_num_groups": 32}

_MOTION_RE = re.compile(
    r"^(?P<block>(?:down_blocks|up_blocks)\.\d+|mid_block)\.motion_modules\.(?P<j>\d+)\.temporal_transformer\."
    r"(?P<rest>.+)$"
)
_ATTN_RE = re.compile(r"^transformer_blocks\.(?P<k>\d+)\.attention_blocks\.(?P<a>\d+)\.(?P<rest>.+)$")
_FIRST_FRAME = {".attn1.to_q_ff.weight": ".to_q_i2v.weight", ".attn1.to_out_ff.weight": ".to_out_i2v.weight"}
_FIRST_FRAME[".attn1.to_out_ff.bias"] = ".to_out_i2v.bias"
_IP_BRANCH = (".attn2.to_k_ip.weight", ".attn2.to_v_ip.weight")


def motion_to_diffusers(motion: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename AnimateDiff motion-module keys to diffusers' ``MotionAdapter`` names.

    Args:
        motion: keys like ``down_blocks.0.motion_modules.1.temporal_transformer.transformer_blocks.0.
            attention_blocks.0.to_q.weight``.

    Returns:
        ``(state_dict, refused)``: the renamed tensors, and keys that cannot be represented (outside AnimateDiff's
        naming, or a later attention's ``pos_encoder.pe`` that differs from the first's).
    """
    out: dict[str, torch.Tensor] = {}
    refused: list[str] = []
    for key, value in motion.items():
        match = _MOTION_RE.match(key)
        if match is None:
            refused.append(key)
            continue
        prefix = f"{match['block']}.motion_modules.{match['j']}."
        rest = match["rest"]
        attn = _ATTN_RE.match(rest)
        if attn is None:  # norm / proj_in / proj_out of the temporal transformer
            out[prefix + rest] = value
            continue
        block = f"{prefix}transformer_blocks.{attn['k']}."
        a, tail = int(attn["a"]), attn["rest"]
        if tail == "pos_encoder.pe":
            if a == 0:
                out[block + "pos_embed.pe"] = value
                continue
            first = motion.get(key.replace(f".attention_blocks.{a}.", ".attention_blocks.0."))
            if first is None or first.shape != value.shape or not torch.equal(first, value):
                refused.append(key)  # diffusers has one table per block
            continue
        if tail.startswith(("norms.", "ff_norm.", "ff.")):
            refused.append(key)  # belongs to the block, not to an attention
            continue
        out[f"{block}attn{a + 1}.{tail}"] = value
    for key in list(out):
        renamed = key.replace(".norms.0.", ".norm1.").replace(".norms.1.", ".norm2.").replace(".ff_norm.", ".norm3.")
        if renamed != key:
            out[renamed] = out.pop(key)
    return out, sorted(refused)


def _motion_config(motion: Mapping[str, torch.Tensor], heads: int, groups: int) -> dict:
    """``MotionAdapter`` config read from the converted keys (channels, layers, max length, mid block)."""
    channels: dict[int, int] = {}
    layers: dict[int, set[int]] = {}
    blocks: set[int] = set()
    max_len = None
    for key, value in motion.items():
        parts = key.split(".")
        if parts[0] == "down_blocks" and parts[4:] == ["proj_in", "weight"]:
            channels[int(parts[1])] = int(value.shape[1])
            layers.setdefault(int(parts[1]), set()).add(int(parts[3]))
        if ".transformer_blocks." in key:
            blocks.add(int(key.split(".transformer_blocks.")[1].split(".")[0]))
        if key.endswith("pos_embed.pe"):
            max_len = int(value.shape[1])
    if not channels or max_len is None:
        raise AdapterWeightsError("The release holds no down-block motion modules with positional tables.")
    order = sorted(channels)
    return {
        "block_out_channels": tuple(channels[i] for i in order),
        "motion_layers_per_block": len(layers[order[0]]),
        "motion_transformer_layers_per_block": len(blocks) or 1,
        "motion_num_attention_heads": heads,
        "motion_norm_num_groups": groups,
        "motion_max_seq_length": max_len,
        "use_motion_mid_block": any(k.startswith("mid_block.motion_modules.") for k in motion),
    }


@dataclass
class I2VRelease:
    """The authors' release split into parts, every key accounted for.

    Attributes:
        spatial: the spatial UNet under ``UNet2DConditionModel`` names.
        motion: motion modules under diffusers ``MotionAdapter`` names.
        motion_config: the ``MotionAdapter`` config they need.
        first_frame: ``<attn1 path>.to_q_i2v.weight`` (the file's ``to_q_ff``), ``.to_out_i2v.{weight,bias}``.
        ip_branches: ``<attn2 path>.to_{k,v}_ip.weight`` by module path (ids are assigned against a UNet).
        refused: keys that fit no group (listed in the error by :func:`split_release`).
        source: the file, for messages.
    """

    spatial: dict[str, torch.Tensor]
    motion: dict[str, torch.Tensor]
    motion_config: dict
    first_frame: dict[str, torch.Tensor]
    ip_branches: dict[str, torch.Tensor]
    refused: list[str] = field(default_factory=list)
    source: str | None = None

    def motion_adapter(self):
        """A diffusers ``MotionAdapter`` holding the release's motion modules (strict load)."""
        from diffusers import MotionAdapter

        adapter = MotionAdapter(**self.motion_config)
        missing, unexpected = adapter.load_state_dict(self.motion, strict=False)
        if missing or unexpected:
            raise AdapterWeightsError(
                f"The motion modules of {self.source!r} do not fit a MotionAdapter{self.motion_config}: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}; nothing was changed.",
                missing=list(missing),
                unexpected=list(unexpected),
            )
        return adapter.eval()

    def i2v_state_dict(
        self,
        unet: nn.Module,
        image_proj: Mapping[str, torch.Tensor] | None,
        *,
        first_frame_query: str = "to_q",
    ) -> dict[str, torch.Tensor]:
        """Our I2V-Adapter file content for ``unet`` (a ``UNetMotionModel``).

        Args:
            unet: the ``UNetMotionModel`` the adapter goes on (numbers the content adapter's cross-attention ids).
            image_proj: IP-Adapter-Plus resampler weights (official names, no prefix); ``None`` leaves the content
                adapter out (then the IP branches are refused by name by the validation).
            first_frame_query: ``"to_q"``: ``W_q'`` = the release's own ``attn1.to_q`` (what the authors' loader
                does, also when another spatial UNet is used); ``"file"``: the file's ``to_q_ff``.
        """
        if first_frame_query not in ("to_q", "file"):
            raise ValueError(f"`first_frame_query` must be 'to_q' or 'file', got {first_frame_query!r}.")
        sd = dict(self.first_frame)
        if first_frame_query == "to_q":
            for key in list(sd):
                if key.endswith(".to_q_i2v.weight"):
                    spatial_key = key.replace(".to_q_i2v.weight", ".to_q.weight")
                    sd[key] = self.spatial.get(spatial_key, sd[key])
        ids = {name[: -len(".processor")]: key_id for name, _, key_id in _cross_attention_layers(unet)}
        for key, value in self.ip_branches.items():
            path, _, tail = key.rpartition(".to_")
            key_id = ids.get(path)
            name = f"{CONTENT_PREFIX}ip_adapter.{key_id}.to_{tail}" if key_id is not None else f"{CONTENT_PREFIX}{key}"
            sd[name] = value
        if image_proj is not None:
            sd.update({f"{CONTENT_PREFIX}image_proj.{k}": v for k, v in image_proj.items()})
        return sd

    def query_differs(self) -> list[str]:
        """``attn1`` layers whose ``to_q_ff`` in the file differs from their ``to_q``."""
        out = []
        for key, value in self.first_frame.items():
            if key.endswith(".to_q_i2v.weight"):
                base = self.spatial.get(key.replace(".to_q_i2v.weight", ".to_q.weight"))
                if base is None or base.shape != value.shape or not torch.equal(base, value):
                    out.append(key.replace(".to_q_i2v.weight", ".to_q_ff.weight"))
        return out


def split_release(
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: str | None = None,
    motion_num_attention_heads: int = AUTHORS_MOTION_CONFIG["motion_num_attention_heads"],
    motion_norm_num_groups: int = AUTHORS_MOTION_CONFIG["motion_norm_num_groups"],
) -> I2VRelease:
    """Split the authors' whole-UNet state dict into its four groups (see the module doc).

    Raises:
        AdapterWeightsError: keys that fit no group (``.unexpected``): motion-module keys outside AnimateDiff's
            naming, ``attn1.to_{k,v}_ff`` (no such module in the authors' model), differing positional tables.
    """
    spatial, motion, first_frame, ip = {}, {}, {}, {}
    refused = []
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            refused.append(key)
        elif ".motion_modules." in key:
            motion[key] = value
        elif any(key.endswith(s) for s in _FIRST_FRAME):
            suffix = next(s for s in _FIRST_FRAME if key.endswith(s))
            first_frame[key[: -len(suffix)] + ".attn1" + _FIRST_FRAME[suffix]] = value
        elif key.endswith(_IP_BRANCH):
            ip[key] = value
        elif "_ff." in key or "_ip." in key:
            refused.append(key)
        else:
            spatial[key] = value
    converted, bad_motion = motion_to_diffusers(motion)
    refused += bad_motion
    if refused:
        raise AdapterWeightsError(
            f"{len(refused)} key(s) of the I2V-Adapter release {source or ''} fit none of its parts (spatial UNet, "
            f"AnimateDiff motion modules, attn1 first-frame projections, attn2 IP-Adapter branches): "
            f"{sorted(refused)[:5]}; nothing was changed.",
            unexpected=sorted(refused),
        )
    config = _motion_config(converted, motion_num_attention_heads, motion_norm_num_groups)
    return I2VRelease(spatial, converted, config, first_frame, ip, [], source)


def read_release(
    path: str | os.PathLike | Mapping[str, torch.Tensor], *, allow_pickle: bool = False, **kwargs
) -> I2VRelease:
    """Read and split the authors' release (``.pth`` needs ``allow_pickle=True``; read with ``weights_only=True``).

    Args:
        path: the ``.pth`` (or a ``.safetensors`` holding the same keys), or the state dict itself.
        allow_pickle: allow pickle files.
        **kwargs: :func:`split_release` options (motion heads / groups).
    """
    if isinstance(path, Mapping):
        return split_release(path, **kwargs)
    state_dict, _ = load_weights(path, allow_pickle=allow_pickle)
    return split_release(state_dict, source=str(path), **kwargs)


def read_ip_adapter_file(
    path: str | os.PathLike | Mapping, *, allow_pickle: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """An ``h94/IP-Adapter`` file as ``(image_proj, ip_adapter)`` (official names, no prefix).

    Accepts the pickled ``{"image_proj": {...}, "ip_adapter": {...}}`` (``.bin``, needs ``allow_pickle``) and the flat
    ``.safetensors`` (``image_proj.*`` / ``ip_adapter.*``); any other key is refused by name.
    """
    if isinstance(path, Mapping):
        obj, source = path, None
    else:
        source = str(path)
        if Path(path).suffix.lower() == ".safetensors":
            obj, _ = load_weights(path)
        else:
            if not allow_pickle:
                raise AdapterWeightsError(
                    f"Refusing to read pickle file {source!r}: pass allow_pickle=True if you trust its source (it is "
                    "read with torch.load(weights_only=True))."
                )
            if not Path(path).is_file():
                raise FileNotFoundError(f"No weight file at {source!r}.")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    groups: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    refused = []
    for key, value in obj.items():
        if key in groups and isinstance(value, Mapping):
            groups[key].update(value)
            continue
        group, _, rest = key.partition(".")
        if group in groups and rest and isinstance(value, torch.Tensor):
            groups[group][rest] = value
        else:
            refused.append(key)
    if refused or "latents" not in groups["image_proj"]:
        raise AdapterWeightsError(
            f"{source or 'The IP-Adapter state dict'} is not an IP-Adapter-Plus file (image_proj.latents, "
            f"image_proj.proj_in, ..., ip_adapter.<id>.to_{{k,v}}_ip); unexpected keys: {refused[:5]}.",
            unexpected=refused,
        )
    return groups["image_proj"], groups["ip_adapter"]


@dataclass
class ReleaseReport:
    """What loading the release found.

    Attributes:
        spatial_differs: spatial UNet keys whose tensor in the release differs from the base's.
        max_spatial_diff: largest absolute difference among them.
        used_release_unet: whether the release's spatial UNet was loaded.
        first_frame_query: ``"to_q"`` (the authors' loader) or ``"file"``.
        query_differs: ``attn1`` layers whose ``to_q_ff`` in the file differs from ``to_q``.
        ip_adapter_differs: content-adapter ids whose ``to_{k,v}_ip`` in the IP-Adapter file differ from the release's
            (the release's are used, as in the authors' code).
    """

    spatial_differs: list[str]
    max_spatial_diff: float
    used_release_unet: bool
    first_frame_query: str
    query_differs: list[str]
    ip_adapter_differs: list[str]


def check_against(
    release: I2VRelease, unet: nn.Module, ip_adapter: Mapping[str, torch.Tensor] | None = None
) -> tuple[list[str], float, list[str]]:
    """Validate the spatial and motion parts against ``unet`` (a ``UNetMotionModel``) and compare values.

    Args:
        release: the split release.
        unet: the pipeline's UNet (adapter processors and image projections in its state dict are ignored).
        ip_adapter: the IP-Adapter file's ``ip_adapter`` group, checked against the release's branches by shape.

    Returns:
        ``(spatial keys that differ, max abs difference, IP-Adapter ids that differ from the release's)``.

    Raises:
        AdapterWeightsError: missing / unexpected / wrong-shape keys in either part (all listed by name).
    """
    own = {
        k: v
        for k, v in unet.state_dict().items()
        if ".processor." not in k and not k.startswith("encoder_hid_proj.") and not k.startswith("image_proj.")
    }
    own_motion = {k: v for k, v in own.items() if ".motion_modules." in k}
    own_spatial = {k: v for k, v in own.items() if ".motion_modules." not in k}
    missing, unexpected, mismatched = [], [], []
    for part, theirs, ours in (("spatial", release.spatial, own_spatial), ("motion", release.motion, own_motion)):
        missing += [f"{part}: {k}" for k in sorted(set(ours) - set(theirs))]
        unexpected += [f"{part}: {k}" for k in sorted(set(theirs) - set(ours))]
        mismatched += [
            (f"{part}: {k}", tuple(theirs[k].shape), tuple(ours[k].shape))
            for k in sorted(set(ours) & set(theirs))
            if theirs[k].shape != ours[k].shape
        ]
    ids = {f"{key_id}": name for name, _, key_id in _cross_attention_layers(unet)}
    ip_differs = []
    if ip_adapter is not None:
        ours_ip = {}
        modules = dict(unet.named_modules())
        for key_id, name in ids.items():
            attn = modules[name[: -len(".processor")]]
            for kv in ("k", "v"):
                ours_ip[f"{key_id}.to_{kv}_ip.weight"] = (attn.to_q.out_features, unet.config.cross_attention_dim)
        missing += [f"ip_adapter: {k}" for k in sorted(set(ours_ip) - set(ip_adapter))]
        unexpected += [f"ip_adapter: {k}" for k in sorted(set(ip_adapter) - set(ours_ip))]
        for key in sorted(set(ours_ip) & set(ip_adapter)):
            if tuple(ip_adapter[key].shape) != ours_ip[key]:
                mismatched.append((f"ip_adapter: {key}", tuple(ip_adapter[key].shape), ours_ip[key]))
                continue
            key_id, _, tail = key.partition(".")
            path = ids[key_id][: -len(".processor")]
            mine = release.ip_branches.get(f"{path}.{tail}")
            if mine is None or mine.shape != ip_adapter[key].shape or not torch.equal(mine, ip_adapter[key]):
                ip_differs.append(key)
    if missing or unexpected or mismatched:
        listed = [
            *missing[:5],
            *unexpected[:5],
            *(f"{k} (file {list(a)}, model {list(b)})" for k, a, b in mismatched[:5]),
        ]
        raise AdapterWeightsError(
            f"The I2V-Adapter release {release.source or ''} does not fit this pipeline ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(mismatched)} wrong-shape keys): {'; '.join(listed)}; nothing was "
            "changed.",
            missing=missing,
            unexpected=unexpected,
            mismatched=mismatched,
        )
    differs, max_diff = [], 0.0
    for key, value in release.spatial.items():
        base = own_spatial[key]
        if not torch.equal(value.to(base.device, base.dtype), base):
            differs.append(key)
            max_diff = max(max_diff, float((value.to(base.device, torch.float32) - base.float()).abs().max()))
    return differs, max_diff, sorted(ip_differs, key=lambda k: (int(k.split(".")[0]), k))
