"""Preference batches fed to the model as one packed row: the chosen and rejected sequences of many pairs, no padding.

trl's preference collators pad a batch of pairs (its chosen rows, then its rejected rows) to the longest sequence,
and multilingual pairs are length-skewed (SmolLM2's tokenizer spends several times more tokens on Hindi than on
English), so much of what the model reads is padding. Here the padded batch stays the trainer's bookkeeping
(completion masks, the chosen/rejected halves, per-row lengths), but the model reads only its real tokens: one row,
position ids restarting at each sequence, no attention mask, so that each sequence attends to itself alone —
`per_example` on sdpa (align.models.attention), the varlen kernels on flash-attention. The outputs are put back in
the padded shape, so trl's loss code runs unchanged on them: every loss type, `ld_alpha`, `use_weighting`, and the
live, adapter-disabled or precomputed reference.

    add_packed_log_probs(policy)    # after trl's add_fused_lm_head: DPO's per-token log-probs
    add_packed_scores(reward_model) # a decoder's sequence classifier: its score at each sequence's last token
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass
from typing import NamedTuple

import torch

from align.core import compat
from align.core.errors import ConfigError
from align.models import attention as segment_attention
from align.training.packing import uses_flattened_packs

PADDING_FREE = (True, False, "auto")
# FusedCausalLMOutput's per-token fields (trl.trainer.utils): each is put back in the padded shape.
PER_TOKEN = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1", "label_mask")


class Flat(NamedTuple):
    keep: torch.Tensor  # [rows, width] bool: the real tokens of the padded batch
    position_ids: torch.Tensor  # [1, real tokens]: restarting at 0 at each sequence


def flatten(attention_mask: torch.Tensor) -> Flat:
    keep = attention_mask.bool()
    positions = attention_mask.long().cumsum(1) - 1
    return Flat(keep, positions[keep][None])


def unflatten(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """[real tokens, ...] → [rows, width, ...], zeros at the padding (differentiable in `values`)."""
    return values.new_zeros((*keep.shape, *values.shape[1:])).index_put((keep,), values)


@dataclass
class PaddingFreeArgs:
    """The recipe key of every stage that trains on padded pairs (DPO, the reward model)."""

    padding_free: bool | str = "auto"  # true | false | auto: pack each batch's sequences

    def __post_init__(self):
        if self.padding_free not in PADDING_FREE:
            raise ConfigError(None, "padding_free", f"expected true, false or auto, got {self.padding_free!r}")
        getattr(super(), "__post_init__", lambda: None)()


def backend(model) -> str | None:
    """The attention that keeps the packed sequences of this model apart: `varlen` (flash-attention), `per_example`
    (sdpa or eager, every layer full or windowed causal attention), or None (other backends and layer kinds)."""
    base = segment_attention.unwrapped(model)
    attention = base.config._attn_implementation
    if uses_flattened_packs(attention):
        return "varlen"
    if attention in ("sdpa", "eager", segment_attention.NAME) and segment_attention.can_use(model):
        return segment_attention.NAME
    return None


def choose(requested, models, *, scores: bool = False, source: str | None = None) -> tuple[bool, str]:
    """Whether to pack (`padding_free` true / false / "auto") for these models (the policy and a reference, or a
    reward model when `scores`), and the words that say how. True where a model cannot keep the sequences apart is a
    ConfigError (of the recipe `source`) that says why; "auto" then falls back to padding."""
    if requested is False:
        return False, "padded (padding_free: false)"
    kinds = [backend(model) for model in models]
    for model, kind in zip(models, kinds):
        base = segment_attention.unwrapped(model)
        why = None
        if kind is None:
            why = (
                f"{base.config.model_type} on {base.config._attn_implementation} cannot keep packed sequences "
                "apart (it needs flash-attention, or sdpa or eager with full or sliding-window causal attention in "
                "every layer)"
            )
        elif scores and not can_score_packed(model):
            why = f"{type(base).__name__} is not a decoder's sequence classifier"
        if why:
            if requested is True:
                raise ConfigError(source, "padding_free", why)
            return False, f"padded ({why})"
    for model, kind in zip(models, kinds):
        if kind == segment_attention.NAME:
            segment_attention.use_for(model)
    return True, f"packed ({kinds[0]})"


def add_packed_log_probs(model) -> None:
    """`model(input_ids, attention_mask, labels, fused_lm_head=True)` — how trl's DPOTrainer asks for per-token
    log-probs, through the fused LM head it adds first — runs the batch's real tokens as one packed row and returns
    the per-token fields in the padded shape. Every other call (generation, the logits forward) is unchanged."""
    if getattr(model, "_polyalign_packed", False):
        return
    fused = model.forward

    @functools.wraps(type(model).forward)
    def forward(self, *args, input_ids=None, attention_mask=None, labels=None, fused_lm_head=False, **kwargs):
        if (
            args
            or not fused_lm_head
            or input_ids is None
            or attention_mask is None
            or labels is None
            or kwargs.get("inputs_embeds") is not None
            or kwargs.get("position_ids") is not None
        ):
            return fused(
                *args,
                input_ids=input_ids,
                attention_mask=attention_mask,
                labels=labels,
                fused_lm_head=fused_lm_head,
                **kwargs,
            )
        kwargs.pop("inputs_embeds", None)
        flat = flatten(attention_mask)
        # Each token's label is its successor in its own row; a sequence's last token has none (-100).
        next_labels = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
        out = fused(
            input_ids=input_ids[flat.keep][None],
            position_ids=flat.position_ids,
            shift_labels=next_labels[flat.keep][None],
            fused_lm_head=True,
            **kwargs,
        )
        for name in PER_TOKEN:
            value = getattr(out, name, None)
            if value is not None:
                setattr(out, name, unflatten(value[0], flat.keep)[:, :-1])
        return out

    model.forward = types.MethodType(forward, model)
    model._polyalign_packed = True


def add_packed_scores(model) -> None:
    """A decoder's sequence classifier (transformers' GenericForSequenceClassification) given a padded batch runs its
    real tokens as one packed row and scores each sequence at the token the padded forward reads: the rightmost one
    that is not the pad token. Calls with a cache, embeddings or labels are unchanged."""
    if getattr(model, "_polyalign_packed", False):
        return
    original = model.forward

    @functools.wraps(type(model).forward)
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        **kwargs,
    ):
        pad = self.config.get_text_config().pad_token_id
        if (
            input_ids is None
            or attention_mask is None
            or pad is None
            or position_ids is not None
            or past_key_values is not None
            or inputs_embeds is not None
            or labels is not None
        ):
            return original(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                inputs_embeds=inputs_embeds,
                labels=labels,
                use_cache=use_cache,
                **kwargs,
            )
        from transformers.modeling_outputs import SequenceClassifierOutputWithPast

        flat = flatten(attention_mask)
        rows, width = input_ids.shape
        columns = torch.arange(width, device=input_ids.device)
        last = (columns * (input_ids != pad)).argmax(-1)  # GenericForSequenceClassification's rule
        index = (flat.keep.flatten().cumsum(0) - 1).view(rows, width)[torch.arange(rows), last]
        backbone = getattr(self, self.base_model_prefix)
        hidden = backbone(
            input_ids=input_ids[flat.keep][None], position_ids=flat.position_ids, use_cache=False, **kwargs
        ).last_hidden_state[0]
        return SequenceClassifierOutputWithPast(logits=self.score(hidden[index]))

    model.forward = types.MethodType(forward, model)
    model._polyalign_packed = True


def can_score_packed(model) -> bool:
    return isinstance(segment_attention.unwrapped(model), compat.generic_sequence_classifier())


def layout_rows(metrics: dict) -> list[tuple[str, object]]:
    """The summary's lines on the layout: how batches reached the model, and the share of real tokens in them."""
    fraction = metrics["real_token_fraction"]
    return [("batches", metrics["padding_free"]), ("real tokens", "-" if fraction is None else f"{fraction:.1%}")]


@dataclass
class TokenCount:
    """Tokens fed to the model in training forwards, and how many of them were real (not padding)."""

    real: int = 0
    fed: int = 0

    def add(self, attention_mask: torch.Tensor, packed: bool) -> None:
        real = int(attention_mask.sum())
        self.real += real
        self.fed += real if packed else attention_mask.numel()

    def fraction(self, accelerator=None) -> float | None:
        """real / fed over every process of the run."""
        real, fed = self.real, self.fed
        if accelerator is not None and accelerator.num_processes > 1:
            totals = accelerator.reduce(torch.tensor([real, fed], device=accelerator.device), reduction="sum")
            real, fed = (int(v) for v in totals.tolist())
        return round(real / fed, 4) if fed else None
