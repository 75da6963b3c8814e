"""The two parts of CPU generation that align.generation.generate speeds up, each against what transformers does by itself.

Prefill: a batch's prompts in one forward pass, packed into one row on `per_example` (TransformersBackend's CPU
path), against one forward pass per prompt; tokens/s, best of 3. Decoding: one step's time with transformers'
DynamicCache (grows by torch.cat) against align.generation.kv_cache's preallocated cache; same model and random prompt caches,
greedy, `--steps` forced new tokens, each shape twice per cache, alternating (the first run of a shape also pays
for fresh memory); the two caches' outputs are compared token for token.

    .venv/bin/python bench/generate_parts.py [--model smollm2-135m] [--prefill 8x100,8x200,4x800] [--decode 14x1100]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--prefill", default="8x100,8x200,4x800,1x4000", help="prompts x tokens, comma-separated")
    parser.add_argument(
        "--decode", default="1x300,1x1100,16x200,14x1100,8x4100", help="batch x cached tokens, comma-separated"
    )
    opts = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    import torch
    import transformers
    from transformers import DynamicCache

    from align.generation.kv_cache import unpack_to_batch
    from align.models.attention import packed_attention
    from align.models.loading import ModelArgs, load_model

    transformers.logging.set_verbosity_error()
    model = load_model(ModelArgs(model=opts.model)).eval()
    config = model.config
    heads, dim = (
        config.num_key_value_heads,
        getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
    )

    def step_ms(batch: int, cached: int, preallocated: bool):
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(100, 1000, (batch, cached + 1), generator=generator)
        packed = DynamicCache(config=config)
        for index in range(config.num_hidden_layers):
            packed.update(
                torch.randn(1, heads, batch * cached, dim, generator=generator),
                torch.randn(1, heads, batch * cached, dim, generator=generator),
                index,
            )
        if preallocated:
            cache = unpack_to_batch(packed, [cached] * batch, cached, 1, opts.steps, config)
        else:
            cache = DynamicCache(config=config)
            for index, layer in enumerate(packed.layers):
                cache.update(
                    layer.keys.reshape(heads, batch, cached, dim).transpose(0, 1).contiguous(),
                    layer.values.reshape(heads, batch, cached, dim).transpose(0, 1).contiguous(),
                    index,
                )
        with torch.no_grad():
            began = time.perf_counter()
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                past_key_values=cache,
                max_new_tokens=opts.steps,
                min_new_tokens=opts.steps,
                do_sample=False,
                pad_token_id=0,
            )
        return (time.perf_counter() - began) / opts.steps * 1000, out

    def prefill_seconds(prompts: int, tokens: int, packed: bool) -> float:
        ids = torch.randint(100, 1000, (prompts, tokens), generator=torch.Generator().manual_seed(0))
        best = float("inf")
        for _ in range(3):
            began = time.perf_counter()
            with torch.no_grad():
                if packed:
                    with packed_attention(model):
                        model(
                            input_ids=ids.reshape(1, -1),
                            position_ids=torch.arange(tokens).repeat(prompts)[None],
                            past_key_values=DynamicCache(config=config),
                            use_cache=True,
                            logits_to_keep=1,
                        )
                else:
                    for row in ids:
                        model(
                            input_ids=row[None],
                            past_key_values=DynamicCache(config=config),
                            use_cache=True,
                            logits_to_keep=1,
                        )
            best = min(best, time.perf_counter() - began)
        return best

    command = " ".join(["bench/generate_parts.py"] + (argv if argv is not None else sys.argv[1:]))
    print(
        f"## Generation parts ({opts.model}, {model.dtype}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"transformers {transformers.__version__})\n"
    )
    print(f"- command: `.venv/bin/python {command}`\n")
    print("| prompts x tokens | one pass per prompt, tok/s | packed in one pass, tok/s | packed / per prompt |")
    print("|---|---:|---:|---:|")
    for shape in opts.prefill.split(","):
        prompts, tokens = (int(x) for x in shape.split("x"))
        alone, packed = (prompts * tokens / prefill_seconds(prompts, tokens, p) for p in (False, True))
        print(f"| {prompts} x {tokens} | {alone:.0f} | {packed:.0f} | {packed / alone:.2f}x |", flush=True)
    print(f"\nDecoding, {opts.steps} steps:\n")
    print(
        "| batch | cached tokens | DynamicCache ms/step (run 1, run 2) | preallocated ms/step (run 1, run 2) | "
        "same tokens |"
    )
    print("|---:|---:|---:|---:|:---:|")
    for shape in opts.decode.split(","):
        batch, cached = (int(x) for x in shape.split("x"))
        times, outputs = {False: [], True: []}, {}
        for preallocated in (False, True, False, True):
            ms, outputs[preallocated] = step_ms(batch, cached, preallocated)
            times[preallocated].append(ms)
        same = torch.equal(outputs[False], outputs[True])
        print(
            f"| {batch} | {cached} | {', '.join(f'{t:.0f}' for t in times[False])} | "
            f"{', '.join(f'{t:.0f}' for t in times[True])} | {'yes' if same else 'NO'} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
