"""HiPA LoRA configuration: which UNet projections get low-rank adaptors, rank and alpha.

HiPA trains standard LoRA adaptors (``W + (alpha / r) * B @ A``, ``B`` zero-initialised) on the UNet's attention
projections (``to_q``, ``to_k``, ``to_v``, ``to_out.0`` of self- and cross-attention) and, by default, its
feed-forward projections (``ff.net.0.proj``, the GEGLU input, and ``ff.net.2``). The result is a plain peft /
diffusers LoRA, so it is saved with ``StableDiffusionPipeline.save_lora_weights`` and loads with stock
``load_lora_weights``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

ATTENTION_TARGETS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
FEED_FORWARD_TARGETS: tuple[str, ...] = ("ff.net.0.proj", "ff.net.2")

__all__ = ["ATTENTION_TARGETS", "FEED_FORWARD_TARGETS", "HiPAConfig"]


@dataclass
class HiPAConfig:
    """Settings of a HiPA LoRA.

    Args:
        rank: LoRA rank ``r`` (``>= 1``).
        alpha: LoRA alpha; the update is scaled by ``alpha / rank``. ``None`` means ``alpha = rank`` (scale 1).
        target_modules: module-name suffixes (peft ``target_modules``) that receive a LoRA.
        init_lora_weights: peft initialisation of ``A`` (``B`` is always zero, so a fresh LoRA leaves the base
            output unchanged): ``"gaussian"`` (diffusers' training scripts) or ``True`` (Kaiming-uniform).
    """

    rank: int = 8
    alpha: float | None = None
    target_modules: list[str] = field(default_factory=lambda: [*ATTENTION_TARGETS, *FEED_FORWARD_TARGETS])
    init_lora_weights: bool | str = "gaussian"

    def __post_init__(self) -> None:
        if int(self.rank) < 1:
            raise ValueError(f"`rank` must be >= 1, got {self.rank}.")
        if self.alpha is not None and self.alpha <= 0:
            raise ValueError(f"`alpha` must be > 0 (or None for alpha = rank), got {self.alpha}.")
        if not self.target_modules:
            raise ValueError("`target_modules` must name at least one module (e.g. 'to_q').")
        self.rank = int(self.rank)
        self.target_modules = list(self.target_modules)

    @property
    def lora_alpha(self) -> float:
        """The effective alpha (``rank`` when unset)."""
        return float(self.rank if self.alpha is None else self.alpha)

    @classmethod
    def attention_only(cls, rank: int = 8, alpha: float | None = None) -> HiPAConfig:
        """A config with LoRAs on the attention projections only."""
        return cls(rank=rank, alpha=alpha, target_modules=list(ATTENTION_TARGETS))

    def to_lora_config(self):
        """The equivalent ``peft.LoraConfig`` (for ``unet.add_adapter(config, adapter_name="hipa")``)."""
        from peft import LoraConfig

        return LoraConfig(
            r=self.rank,
            lora_alpha=self.lora_alpha,
            target_modules=list(self.target_modules),
            init_lora_weights=self.init_lora_weights,
            lora_dropout=0.0,
            bias="none",
        )

    def to_dict(self) -> dict:
        """A JSON-serialisable dict of the fields."""
        return asdict(self)
