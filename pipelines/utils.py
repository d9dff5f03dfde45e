"""Small helpers written once and shared by the pipelines, the app, the CLI, training, tests and benchmarks.

* :func:`is_sdxl` / :func:`is_sdxl_config` -- whether a base is an SDXL-family model (from its configs only);
* :func:`size_multiple` / :func:`native_resolution` -- image sizes a base accepts and the size it was trained at;
* :func:`parse_preset_paths` -- ``PRESET=PATH`` command-line values (few-step LoRAs to compare with);
* :func:`clip_bpe` / :func:`write_clip_tokenizer_files` / :func:`clip_tokenizer` -- the byte-level CLIP BPE
  tokenizers of the tiny models (tests, the placeholder models, the embedded base).

Nothing here imports torch or diffusers at import time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "BOS_TOKEN",
    "EOS_TOKEN",
    "clip_bpe",
    "clip_tokenizer",
    "is_sdxl",
    "is_sdxl_config",
    "motion_adapter_config",
    "folder_geometry",
    "native_resolution",
    "parse_preset_paths",
    "size_multiple",
    "write_clip_tokenizer_files",
]

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"


# ----------------------------------------------------------------------------------------------------------------------
# SDXL detection
# ----------------------------------------------------------------------------------------------------------------------


def is_sdxl_config(config: Mapping[str, Any]) -> bool:
    """Whether a ``model_index.json`` dict (or a pipeline's ``components`` dict) describes an SDXL-family pipeline:
    it has a second text encoder (an entry that is not ``[null, null]`` / ``None``), or its class name says XL."""
    entry = config.get("text_encoder_2")
    if entry is not None and not (isinstance(entry, (list, tuple)) and (not entry or entry[0] is None)):
        return True
    return "XL" in str(config.get("_class_name", ""))


def is_sdxl(base: Any, **load_config_kwargs: Any) -> bool:
    """Whether ``base`` is an SDXL-family model, from its configs only (no weights are read).

    Args:
        base: a pipeline (its UNet's ``addition_embed_type == "text_time"``, SDXL's size and text-time embedding),
            a ``model_index.json`` / ``components`` dict, or a local folder or hub id (its ``model_index.json``,
            else its ``unet/config.json``; a hub id is looked up with ``DiffusionPipeline.load_config``, which takes
            ``load_config_kwargs``).
    """
    if isinstance(base, Mapping):
        return is_sdxl_config(base)
    unet = getattr(base, "unet", None)
    if unet is not None:
        return getattr(unet.config, "addition_embed_type", None) == "text_time"
    folder = Path(base)
    index = folder / "model_index.json"
    if index.is_file():
        return is_sdxl_config(json.loads(index.read_text(encoding="utf-8")))
    unet_config = folder / "unet" / "config.json"
    if unet_config.is_file():
        return json.loads(unet_config.read_text(encoding="utf-8")).get("addition_embed_type") == "text_time"
    if folder.exists():
        return False
    from diffusers import DiffusionPipeline

    return is_sdxl_config(DiffusionPipeline.load_config(os.fspath(base), **load_config_kwargs))


# ----------------------------------------------------------------------------------------------------------------------
# sizes
# ----------------------------------------------------------------------------------------------------------------------


def _levels_factor(block_out_channels: Sequence[int] | None) -> int:
    """``2 ** (levels - 1)``: the down-sampling of a VAE or UNet with these blocks (8 when unknown, SD's)."""
    return 2 ** (len(block_out_channels) - 1) if block_out_channels else 8


def size_multiple(pipe: Any = None, *, vae_config: Any = None, unet_config: Any = None) -> int:
    """Image sizes must be multiples of this: the VAE factor times the UNet's own down-sampling (64 on SD 1.5, 32
    on SDXL).

    Pass a pipeline (its ``vae_scale_factor`` and ``unet.config``), or the VAE and UNet configs (objects or dicts, e.g.
    read from a folder's ``config.json`` files, to size a model without loading it). A part that is unknown counts 8.
    """
    if pipe is not None:
        vae_factor = getattr(pipe, "vae_scale_factor", None)
        unet = getattr(pipe, "unet", None)
        unet_config = getattr(unet, "config", None)
    else:
        vae_factor = _levels_factor(_get(vae_config, "block_out_channels")) if vae_config is not None else None
    return int(vae_factor or 8) * _levels_factor(_get(unet_config, "block_out_channels"))


def native_resolution(pipe: Any = None, *, vae_config: Any = None, unet_config: Any = None) -> int:
    """The base's native side in pixels (``unet.config.sample_size`` times the VAE factor); same arguments as
    :func:`size_multiple` (``sample_size`` 64 when unknown)."""
    if pipe is not None:
        vae_factor = getattr(pipe, "vae_scale_factor", None)
        unet_config = getattr(getattr(pipe, "unet", None), "config", None)
    else:
        vae_factor = _levels_factor(_get(vae_config, "block_out_channels")) if vae_config is not None else None
    sample = _get(unet_config, "sample_size") or 64
    sample = sample[0] if isinstance(sample, (tuple, list)) else sample
    return int(sample) * int(vae_factor or 8)


def folder_geometry(folder: str | os.PathLike) -> tuple[int, int] | None:
    """``(native side, size multiple)`` of a local base folder from its ``unet`` / ``vae`` ``config.json`` only (no
    weights read), so sizes can be checked before a model loads; ``None`` when the folder has no readable configs."""
    folder = Path(folder)
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
        vae = json.loads((folder / "vae" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return native_resolution(vae_config=vae, unet_config=unet), size_multiple(vae_config=vae, unet_config=unet)


def _get(config: Any, key: str) -> Any:
    if config is None:
        return None
    return config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)


# ----------------------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------------------


def parse_preset_paths(values: Iterable[str], flag: str = "--few-step-lora") -> dict[str, str]:
    """``["lcm=path/a", "TCD = repo/b"]`` -> ``{"lcm": "path/a", "tcd": "repo/b"}`` (names lower-cased).

    Raises:
        ValueError: a value without ``=``, or with an empty name or path (the message names ``flag``).
    """
    out: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        name, path = name.strip().lower(), path.strip()
        if not sep or not name or not path:
            raise ValueError(
                f"{flag} must look like PRESET=PATH (e.g. lcm=latent-consistency/lcm-lora-sdv1-5), got {value!r}"
            )
        out[name] = path
    return out


# ----------------------------------------------------------------------------------------------------------------------
# tiny CLIP tokenizers
# ----------------------------------------------------------------------------------------------------------------------


def _byte_symbols(order: Literal["clip", "byte"]) -> list[str]:
    """The 256 symbols of GPT-2 / CLIP byte-level BPE (each byte's printable stand-in), in CLIP's vocabulary order
    (printable bytes first, as in the hub's ``vocab.json``) or in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return list(table.values()) if order == "clip" else [table[b] for b in range(256)]


def clip_bpe(
    words: Iterable[str], *, max_merges: int | None = None, byte_order: Literal["clip", "byte"] = "clip"
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """``(vocab, merges)`` of a CLIP byte-level BPE learned from ``words``.

    The vocabulary is laid out like CLIP's: the 256 byte symbols (``byte_order``: CLIP's order, or byte order as the
    embedded base's shipped tokenizer has it), the same with ``</w>``, one entry per merge, then ``<|startoftext|>``
    and ``<|endoftext|>``. Merges are learned greedily over ``words`` counted with their repeats (most frequent pair
    first, ties broken lexicographically) until ``max_merges`` or until every word is one symbol, so the result is
    deterministic. No words: a plain byte-level vocabulary of 514 entries.
    """
    by_byte = _byte_symbols("byte")
    symbols = _byte_symbols(byte_order)
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": len(symbols) + i for i, s in enumerate(symbols)})
    counts: dict[tuple[str, ...], int] = {}
    for word in words:
        chars = [by_byte[b] for b in word.encode("utf-8")]
        if not chars:
            continue
        chars[-1] += "</w>"
        counts[tuple(chars)] = counts.get(tuple(chars), 0) + 1
    merges: list[tuple[str, str]] = []
    while max_merges is None or len(merges) < max_merges:
        pairs: dict[tuple[str, str], int] = {}
        for piece, n in counts.items():
            for pair in zip(piece[:-1], piece[1:]):
                pairs[pair] = pairs.get(pair, 0) + n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged = best[0] + best[1]
        vocab.setdefault(merged, len(vocab))
        new_counts: dict[tuple[str, ...], int] = {}
        for piece, n in counts.items():
            out, i = [], 0
            while i < len(piece):
                if i + 1 < len(piece) and (piece[i], piece[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(piece[i])
                    i += 1
            new_counts[tuple(out)] = new_counts.get(tuple(out), 0) + n
        counts = new_counts
    vocab[BOS_TOKEN] = len(vocab)
    vocab[EOS_TOKEN] = len(vocab)
    return vocab, merges


def write_clip_tokenizer_files(
    directory: str | os.PathLike, vocab: Mapping[str, int], merges: Iterable[tuple[str, str]]
) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` (the files of a hub CLIP tokenizer folder) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(dict(vocab), ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


def clip_tokenizer(
    vocab: Mapping[str, int],
    merges: Iterable[tuple[str, str]],
    *,
    pad_token: str = EOS_TOKEN,
    model_max_length: int = 77,
):
    """A ``transformers.CLIPTokenizer`` over ``vocab`` / ``merges`` (built offline from files in a temporary folder).

    ``pad_token`` is ``<|endoftext|>`` for SD 1.5-like tokenizers and ``"!"`` for the OpenCLIP ones (SD 2.1, SDXL's
    ``tokenizer_2``), as on the hub; the unknown token is ``<|endoftext|>``.
    """
    import tempfile

    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory(prefix="clip-tokenizer-") as tmp:
        write_clip_tokenizer_files(tmp, vocab, merges)
        return CLIPTokenizer.from_pretrained(
            tmp,
            model_max_length=model_max_length,
            pad_token=pad_token,
            bos_token=BOS_TOKEN,
            eos_token=EOS_TOKEN,
            unk_token=EOS_TOKEN,
            local_files_only=True,
        )


def motion_adapter_config(unet_config: Mapping[str, Any], num_attention_heads: int = 2) -> dict[str, Any]:
    """The config of a small AnimateDiff ``MotionAdapter`` matching a 2D UNet config (its channels and layers per
    block): one temporal transformer layer per block and in the mid block, 32 frames of positional encoding. Used by
    the embedded placeholder and the tiny test models."""
    return {
        "block_out_channels": list(unet_config["block_out_channels"]),
        "motion_layers_per_block": unet_config["layers_per_block"],
        "motion_transformer_layers_per_block": 1,
        "motion_mid_block_layers_per_block": 1,
        "motion_transformer_layers_per_mid_block": 1,
        "motion_num_attention_heads": num_attention_heads,
        "motion_norm_num_groups": 8,
        "motion_max_seq_length": 32,
        "use_motion_mid_block": True,
    }
