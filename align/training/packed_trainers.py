"""trl's preference trainers with their forwards on packed rows (align.training.packed_pairs) when `pack` is set, counting the
real tokens of their training forwards either way (metrics.json's `real_token_fraction`). Off, each is trl's
trainer unchanged but for the count."""

from __future__ import annotations

from trl import DPOTrainer, RewardTrainer

from align.models.attention import unwrapped
from align.training.packed_pairs import TokenCount, add_packed_log_probs, add_packed_scores


class PackedDPOTrainer(DPOTrainer):
    def __init__(self, *args, pack: bool, **kwargs):
        self.pack, self.tokens = pack, TokenCount()  # set before trl's __init__, which may precompute log-probs
        super().__init__(*args, **kwargs)

    def _pack_forwards(self) -> None:
        """Once trl has added its fused LM head (in __init__): wrap it, on the policy and on a separate reference."""
        if self.pack:
            add_packed_log_probs(unwrapped(self.accelerator.unwrap_model(self.model)))
            if self.ref_model is not None:
                add_packed_log_probs(unwrapped(self.accelerator.unwrap_model(self.ref_model)))

    def compute_ref_log_probs(self, model, inputs):
        self._pack_forwards()
        return super().compute_ref_log_probs(model, inputs)

    def _compute_loss(self, model, inputs, return_outputs):  # trl private hook: align.core.compat.TRL_OVERRIDDEN
        self._pack_forwards()
        if self.model.training:
            self.tokens.add(inputs["attention_mask"], self.pack)
        return super()._compute_loss(model, inputs, return_outputs)


class PackedRewardTrainer(RewardTrainer):
    def __init__(self, *args, pack: bool, **kwargs):
        self.pack, self.tokens = pack, TokenCount()
        super().__init__(*args, **kwargs)
        if pack:
            add_packed_scores(unwrapped(self.model))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.model.training:
            self.tokens.add(inputs["attention_mask"], self.pack)
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
