"""The resident adapter pool's size when the settings leave it open: on CUDA, what fits in the
device memory left free once the model is loaded; on the CPU, a fixed default."""

import logging

import torch

from app.engine.adaptation.saml.config import SamlConfig
from app.engine.loading import LoadedModel
from app.engine.memory_plan import FLOAT32, SlotCosts, SlotSizing, WhisperShape, size_resident_slots

__all__ = ["KV_BYTES", "resident_slots_for", "slot_costs"]

logger = logging.getLogger(__name__)

KV_BYTES = FLOAT32
"""The decoder pass keeps keys and values in float32 (its projections return float32)."""


def slot_costs(shape: WhisperShape, compute: torch.dtype) -> SlotCosts:
    """Costs of adapters of the default training shapes (a bank grows to the largest rank it
    holds, so imported adapters of a higher rank take more than planned: see `headroom`)."""
    from app.engine.training.config import TrainingConfig  # the training package imports us

    training, saml = TrainingConfig(), SamlConfig()
    return SlotCosts.of(
        shape,
        compute_bytes=torch.empty(0, dtype=compute).element_size(),
        kv_bytes=KV_BYTES,
        lora_rank=training.rank,
        saml_experts=saml.experts,
        saml_rank=saml.rank,
    )


def resident_slots_for(loaded: LoadedModel, compute: torch.dtype, sizing: SlotSizing) -> int:
    if loaded.device.type != "cuda":
        return max(sizing.host_slots, sizing.minimum)
    free, total = torch.cuda.mem_get_info(loaded.device)
    shape = WhisperShape.from_config("served", loaded.model.config.to_dict())
    costs = slot_costs(shape, compute)
    slots = size_resident_slots(free, costs, sizing)
    logger.info(
        "adapter slots sized from device memory",
        extra={
            "slots": slots,
            "free_bytes": free,
            "total_bytes": total,
            "slot_bytes": costs.per_slot,
            "kv_bytes": sizing.rows * costs.per_row,
        },
    )
    return slots
