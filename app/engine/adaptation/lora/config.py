"""What a LoRA adapter is made of: its name, the projections it may adapt, its shape."""

from dataclasses import dataclass

__all__ = ["ADAPTABLE", "ATTENTION_TARGETS", "FFN_TARGETS", "METHOD", "STACKS", "LoraConfig"]

METHOD = "lora"
"""The method's name in files, enrolment requests and the registry."""
ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
FFN_TARGETS = ("fc1", "fc2")
ADAPTABLE = ATTENTION_TARGETS + FFN_TARGETS
"""Every projection name a LoRA adapter may target (in every encoder and decoder layer)."""
STACKS = ("encoder", "decoder")


@dataclass(frozen=True, slots=True)
class LoraConfig:
    """One adapter's training shape (the tuned defaults are `TrainingConfig`'s)."""

    rank: int
    alpha: float
    dropout: float
    targets: tuple[str, ...]
    """Projection names (last component of the module path) to adapt."""
    stacks: tuple[str, ...] = STACKS
    """Where: the encoder's layers, the decoder's (self- and cross-attention), or both."""

    def adapts(self, module_name: str) -> bool:
        """Whether the projection at this module path is one this adapter trains."""
        parts = module_name.split(".")
        return parts[-1] in self.targets and any(stack in parts for stack in self.stacks)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank
