"""One decoding step's time: transformers' DynamicCache (grows by torch.cat) against align.kv_cache's preallocated one.

Same model, same random prompt caches, greedy, `--steps` forced new tokens; each shape runs both caches twice,
alternating, and the table keeps both figures (the first run of a shape also pays for fresh memory). The outputs of
the two caches are compared token for token.

    .venv/bin/python bench/decode_step.py [--model smollm2-135m] [--steps 32] [--shapes 1x300,14x1100,8x4100]
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
    parser.add_argument("--shapes", default="1x300,1x1100,16x200,14x1100,8x4100",
                        help="batch x cached tokens, comma-separated")
    opts = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    import torch
    import transformers
    from transformers import DynamicCache

    from align.kv_cache import unpack_to_batch
    from align.models import ModelArgs, load_model

    transformers.logging.set_verbosity_error()
    model = load_model(ModelArgs(model=opts.model)).eval()
    config = model.config
    heads, dim = config.num_key_value_heads, getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads

    def step_ms(batch: int, cached: int, preallocated: bool):
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(100, 1000, (batch, cached + 1), generator=generator)
        packed = DynamicCache(config=config)
        for index in range(config.num_hidden_layers):
            packed.update(torch.randn(1, heads, batch * cached, dim, generator=generator),
                          torch.randn(1, heads, batch * cached, dim, generator=generator), index)
        if preallocated:
            cache = unpack_to_batch(packed, [cached] * batch, cached, 1, opts.steps, config)
        else:
            cache = DynamicCache(config=config)
            for index, layer in enumerate(packed.layers):
                cache.update(layer.keys.reshape(heads, batch, cached, dim).transpose(0, 1).contiguous(),
                             layer.values.reshape(heads, batch, cached, dim).transpose(0, 1).contiguous(), index)
        with torch.no_grad():
            began = time.perf_counter()
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=cache,
                                 max_new_tokens=opts.steps, min_new_tokens=opts.steps, do_sample=False, pad_token_id=0)
        return (time.perf_counter() - began) / opts.steps * 1000, out

    print(f"## Decoding step: DynamicCache vs preallocated ({opts.model}, {model.dtype}, {opts.steps} steps, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, transformers {transformers.__version__})\n")
    print(f"- command: `.venv/bin/python bench/decode_step.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n")
    print("| batch | cached tokens | DynamicCache ms/step (run 1, run 2) | preallocated ms/step (run 1, run 2) | "
          "same tokens |")
    print("|---:|---:|---:|---:|:---:|")
    for shape in opts.shapes.split(","):
        batch, cached = (int(x) for x in shape.split("x"))
        times, outputs = {False: [], True: []}, {}
        for preallocated in (False, True, False, True):
            ms, outputs[preallocated] = step_ms(batch, cached, preallocated)
            times[preallocated].append(ms)
        same = torch.equal(outputs[False], outputs[True])
        print(f"| {batch} | {cached} | {', '.join(f'{t:.0f}' for t in times[False])} | "
              f"{', '.join(f'{t:.0f}' for t in times[True])} | {'yes' if same else 'NO'} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
