"""The LoRA config polyalign trains with: peft's, saved naming its base where that base will be once published.

A stage nested in another's partial (the online loop's DPO on the previous iteration's merged model) trains on a base
inside that partial: adapter_config.json must name where the base will be after the rename, while peft itself, which
reads the base's config when it saves, still finds it where it is now. Imports peft: load it only to build one.
"""

from __future__ import annotations

from peft import LoraConfig

from align.core.lifecycle import published


class PublishedLoraConfig(LoraConfig):
    """peft's LoraConfig; what it saves (to_dict) names the base as `published` maps it."""

    def to_dict(self) -> dict:
        return {**super().to_dict(), "base_model_name_or_path": published(self.base_model_name_or_path)}
