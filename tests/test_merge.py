"""Checkpoint soups: polyalign's streamed linear merge against mergekit's, LoRA and bf16 inputs, tied and untied
embeddings, sharded output that transformers loads, and a mergekit-backed method through `polyalign merge`.

Validation and kill-safety live in test_merge_cli.py. Inputs are tiny random Llamas (hidden 64, 2 layers) with the
embedded tokenizer, built once per session with different seeds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import build_tiny_llama
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from align.cli import main
from align.core.errors import ConfigError
from merge import MergeError, soup

TOL = 1e-6


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(Path(directory).glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def rewrite(directory: Path, tensors: dict, **config) -> Path:
    """Replace a checkpoint's weights (one file) and update keys of its config.json."""
    for file in directory.glob("model*.safetensors*"):
        file.unlink()
    save_file(
        {k: v.contiguous() for k, v in tensors.items()}, directory / "model.safetensors", metadata={"format": "pt"}
    )
    cfg = json.loads((directory / "config.json").read_text())
    cfg.update(config)
    (directory / "config.json").write_text(json.dumps(cfg, indent=2))
    return directory


@pytest.fixture(scope="session")
def zoo(tmp_path_factory, tokenizer) -> dict[str, Path]:
    """Three tied tiny Llamas, their bf16 copies, an untied one, and a LoRA adapter on the first."""
    root = tmp_path_factory.mktemp("zoo")
    models = {f"m{i}": build_tiny_llama(root / f"m{i}", tokenizer, seed=i) for i in (1, 2, 3)}
    for i in (1, 2, 3):
        target = shutil.copytree(models[f"m{i}"], root / f"bf16_{i}")
        rewrite(target, {k: v.to(torch.bfloat16) for k, v in read_weights(target).items()}, dtype="bfloat16")
        models[f"bf16_{i}"] = target
    untied = build_tiny_llama(root / "untied", tokenizer, seed=4)
    weights = read_weights(untied)
    torch.manual_seed(40)
    weights["lm_head.weight"] = torch.randn_like(weights["model.embed_tokens.weight"]) * 0.02
    models["untied"] = rewrite(untied, weights, tie_word_embeddings=False)

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(5)
    base = AutoModelForCausalLM.from_pretrained(models["m1"])
    # init_lora_weights=False: random A and B, so merging the adapter really changes q and v.
    lora = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM"
    )
    get_peft_model(base, lora).save_pretrained(root / "adapter")
    assert json.loads((root / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        models["m1"]
    )
    models["adapter"] = root / "adapter"
    return models


def linear_config(models: list, weights: list, **extra) -> dict:
    return {
        "merge_method": "linear",
        "models": [{"model": str(m), "parameters": {"weight": w}} for m, w in zip(models, weights)],
        **extra,
    }


def mergekit_merge(config: dict, out: Path) -> dict[str, torch.Tensor]:
    """The reference: mergekit's own run_merge on the same config, in this process."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    run_merge(
        MergeConfiguration.model_validate(config),
        str(out),
        MergeOptions(quiet=True, lora_merge_cache=str(out.parent / f"{out.name}-lora"), write_model_card=False),
    )
    return read_weights(out)


def assert_same_weights(ours: dict, theirs: dict) -> None:
    assert set(ours) == set(theirs)
    for name in ours:
        assert ours[name].dtype == theirs[name].dtype, name
        diff = (ours[name].double() - theirs[name].double()).abs().max().item()
        assert diff <= TOL, f"{name}: max abs diff {diff}"


@pytest.mark.parametrize(
    "weights, extra",
    [
        ([0.5, 0.3, 0.2], {}),  # weighted; already sums to 1
        ([3.0, 1.0, 1.0], {"dtype": "float32"}),  # normalised to 0.6 / 0.2 / 0.2
        ([0.5, 0.7, 0.1], {"parameters": {"normalize": False}}),  # used as given: sums to 1.3
    ],
    ids=["weighted", "normalised", "no-normalize"],
)
def test_linear_equals_mergekit(zoo, tmp_path, weights, extra):
    models = [zoo["m1"], zoo["m2"], zoo["m3"]]
    config = linear_config(models, weights, **extra)
    out = soup(config, tmp_path / "ours", progress=False, max_shard_size="4MB")
    ours = read_weights(out)
    assert_same_weights(ours, mergekit_merge(config, tmp_path / "mergekit"))
    # And against the definition, independently of mergekit.
    inputs = [read_weights(m) for m in models]
    scale = sum(weights) if extra.get("parameters", {}).get("normalize", True) else 1.0
    name = "model.layers.1.mlp.down_proj.weight"
    expected = sum(w * t[name] for w, t in zip(weights, inputs)) / scale
    torch.testing.assert_close(ours[name], expected, atol=TOL, rtol=0)
    # 4MB shards: the 12.6MB embedding alone in one, the rest in another, with transformers' index.
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    assert set(index["weight_map"]) == set(ours) and "lm_head.weight" not in ours  # tied: no output embedding
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in ours.values())


def test_python_api_pairs_match_yaml(zoo, tmp_path):
    pairs = [(zoo["m1"], 2.0), (zoo["m2"], 1.0)]
    from_pairs = read_weights(soup(pairs, tmp_path / "pairs", progress=False))
    from_yaml = read_weights(soup(linear_config([zoo["m1"], zoo["m2"]], [2.0, 1.0]), tmp_path / "yaml", progress=False))
    assert set(from_pairs) == set(from_yaml) and all(torch.equal(from_pairs[k], from_yaml[k]) for k in from_pairs)
    assert (tmp_path / "pairs" / "model.safetensors").is_file()  # one shard under 5GB: no index
    assert not (tmp_path / "pairs" / "model.safetensors.index.json").exists()
    with pytest.raises(MergeError, match="set it in the config"):
        soup(linear_config([zoo["m1"]], [1.0]), tmp_path / "x", dtype="bfloat16")


@pytest.mark.parametrize("dtype", [None, "float32"], ids=["bf16-out", "fp32-out"])
def test_bf16_inputs_equal_mergekit(zoo, tmp_path, dtype):
    config = linear_config(
        [zoo["bf16_1"], zoo["bf16_2"], zoo["bf16_3"]], [0.2, 0.5, 0.3], **({"dtype": dtype} if dtype else {})
    )
    out = soup(config, tmp_path / "ours", progress=False)
    ours = read_weights(out)
    assert_same_weights(ours, mergekit_merge(config, tmp_path / "mergekit"))
    want = torch.float32 if dtype else torch.bfloat16
    assert {t.dtype for t in ours.values()} == {want}
    assert json.loads((out / "config.json").read_text())["dtype"] == str(want).removeprefix("torch.")


def test_lora_adapter_is_merged_into_its_base_first(zoo, tmp_path):
    ours_config = linear_config([zoo["adapter"], zoo["m2"]], [0.5, 0.5])
    out = soup(ours_config, tmp_path / "ours", progress=False)
    ours = read_weights(out)
    # mergekit spells the same input `base+adapter` and merges it with peft itself.
    theirs = mergekit_merge(
        linear_config([f"{zoo['m1']}+{zoo['adapter']}", zoo["m2"]], [0.5, 0.5]), tmp_path / "mergekit"
    )
    assert_same_weights(ours, theirs)
    # The adapter made a difference (only where LoRA reached), so the base alone was not what got averaged.
    plain = read_weights(soup(linear_config([zoo["m1"], zoo["m2"]], [0.5, 0.5]), tmp_path / "plain", progress=False))
    changed = {k for k in ours if not torch.equal(ours[k], plain[k])}
    assert changed and all("q_proj" in k or "v_proj" in k for k in changed)
    card = (out / "README.md").read_text()
    assert "LoRA adapter merged into its base" in card and str(zoo["m1"]) in card
    assert not (tmp_path / ".ours.partial").exists()  # the temporary merged base went with the workspace


def test_tied_and_untied_inputs(zoo, tmp_path):
    """A tied checkpoint's output embedding is its input embedding: averaged with an untied one's lm_head, and the
    merged model is untied so that transformers does not throw the averaged lm_head away."""
    config = linear_config([zoo["m1"], zoo["untied"]], [0.25, 0.75])
    out = soup(config, tmp_path / "ours", progress=False)
    ours = read_weights(out)
    assert_same_weights(ours, mergekit_merge(config, tmp_path / "mergekit"))
    m1, untied = read_weights(zoo["m1"]), read_weights(zoo["untied"])
    expected_head = 0.25 * m1["model.embed_tokens.weight"] + 0.75 * untied["lm_head.weight"]
    torch.testing.assert_close(ours["lm_head.weight"], expected_head, atol=TOL, rtol=0)
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(model.lm_head.weight.detach(), expected_head, atol=TOL, rtol=0)


def greedy(model_dir: Path, prompt: str = "Bonjour", tokens: int = 6) -> torch.Tensor:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    return out[0, ids["input_ids"].shape[1] :]


def test_cli_linear_output_loads_and_generates(zoo, tmp_path, capsys):
    config = linear_config([zoo["m1"], zoo["m2"]], [1, 1], chat_template="chatml")
    path = tmp_path / "soup.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "merged"
    assert main(["merge", str(path), str(out), "--max-shard-size", "5MB", "--quiet"]) == 0
    assert f"into {out}" in capsys.readouterr().out
    assert len(greedy(out)) == 6
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(out).state_dict()
    a, b = read_weights(zoo["m1"]), read_weights(zoo["m2"])
    torch.testing.assert_close(merged["model.norm.weight"], (a["model.norm.weight"] + b["model.norm.weight"]) / 2)
    from importlib.resources import files

    chatml = files("mergekit._data").joinpath("chat_templates", "chatml.jinja").read_text()
    assert (out / "chat_template.jinja").read_text() == chatml
    card = (out / "README.md").read_text()
    assert "**linear**" in card and f"`polyalign merge {path} {out} --max-shard-size 5MB --quiet`" in card
    assert "| 0.5 |" in card  # each input's normalised share
    assert (out / "generation_config.json").is_file() and (out / "merge_config.yaml").is_file()


def test_ties_through_polyalign_merge(zoo, tmp_path):
    """A mergekit method from the same YAML: mergekit's numbers, polyalign's output handling."""
    config = {
        "merge_method": "ties",
        "base_model": str(zoo["m1"]),
        "models": [
            {"model": str(zoo["m2"]), "parameters": {"weight": 0.6, "density": 0.5}},
            {"model": str(zoo["m3"]), "parameters": {"weight": 0.4, "density": 0.5}},
        ],
        "parameters": {"normalize": True},
        "dtype": "float32",
    }
    path = tmp_path / "ties.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "ties"
    assert main(["merge", str(path), str(out), "--quiet"]) == 0
    ours = read_weights(out)
    assert_same_weights(ours, mergekit_merge(config, tmp_path / "mergekit"))
    base = read_weights(zoo["m1"])
    assert not torch.equal(ours["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])
    assert "mergekit" in (out / "README.md").read_text()
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    assert len(greedy(out)) == 6
    assert not (tmp_path / ".ties.partial").exists()


def test_writer_output_reads_back_with_safe_open(zoo, tmp_path):
    """polyalign writes safetensors itself (streamed): headers and bytes must be what safetensors expects."""
    from merge.writer import Entry, ShardWriter

    tensors = {
        "a": torch.randn(3, 5),
        "b": torch.arange(7, dtype=torch.int64),
        "c": torch.randn(2, 2).bfloat16(),
        "d": torch.tensor(1.5),
        "e": torch.zeros(0, 4),
    }
    writer = ShardWriter(tmp_path, [Entry(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()], 60)
    for name, tensor in tensors.items():
        writer.write(name, tensor)
    weight_map = writer.finish()
    assert len(set(weight_map.values())) == 3  # 60-byte shards: a (60 B) | b (56 B) | c, d, e (8 + 4 + 0 B)
    back = read_weights(tmp_path)
    assert set(back) == set(tensors) and all(torch.equal(back[k], tensors[k]) for k in tensors)
    with safe_open(str(tmp_path / weight_map["a"]), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
    with pytest.raises(RuntimeError, match="does not match the planned"):
        ShardWriter(tmp_path / "x", [Entry("a", torch.float32, (3, 5))], 60).write("a", torch.zeros(5, 3))


@pytest.mark.parametrize(
    "config, vocab, engine",
    [
        ({}, (100, 100), "StreamedLinear"),
        (
            {"tokenizer_source": "base", "base_model": "a"},
            (100, 100),
            "StreamedLinear",
        ),  # one vocabulary: nothing to map
        ({"tokenizer_source": "base", "base_model": "a"}, (100, 120), "Mergekit"),  # re-mapped onto a's tokenizer
        (
            {},
            (100, 120),
            "StreamedLinear",
        ),  # (refused by the compatibility check: nothing to map the vocabularies onto)
        ({"tokenizer_source": "union"}, (100, 100), "Mergekit"),
        ({"merge_method": "ties", "base_model": "a"}, (100, 100), "Mergekit"),
        ({"parameters": {"weight": [0.2, 0.8]}}, (100, 100), "Mergekit"),  # a per-layer gradient
    ],
    ids=[
        "plain",
        "base-tokenizer-same-vocab",
        "base-tokenizer-other-vocab",
        "no-tokenizer-other-vocab",
        "union",
        "ties",
        "gradient",
    ],
)
def test_one_rule_chooses_the_engine(config, vocab, engine):
    from merge.config import parse_config
    from merge.engines import choose_engine
    from merge.inputs import Checkpoint

    models = [{"model": "a", "parameters": {"weight": 1}}, {"model": "b", "parameters": {"weight": 1}}]
    if "weight" in config.get("parameters", {}):
        models = [{"model": m["model"]} for m in models]
    spec = parse_config({"merge_method": "linear", "models": models, **config})
    inputs = [Checkpoint(ref, Path(ref), {"vocab_size": size}) for ref, size in zip("ab", vocab)]
    assert type(choose_engine(spec, inputs)).__name__ == engine


def test_every_reference_is_found_once_and_swapped_for_mergekit():
    """One walk over a layer-wise recipe: slice sources, a slice's base_model and a module's models are inputs, their
    weights are checked, and mergekit gets the resolved directory wherever a reference is written."""
    from merge.config import check_weights, parse_config
    from merge.methods import mergekit_config

    recipe = {
        "merge_method": "slerp",
        "parameters": {"t": 0.5},
        "modules": {
            "text": {
                "slices": [
                    {
                        "base_model": "c",
                        "sources": [
                            {"model": "a", "layer_range": [0, 2], "parameters": {"weight": 0.5}},
                            {"model": "b", "layer_range": [0, 2]},
                        ],
                    }
                ]
            },
            "vision": {"models": ["d"]},
        },
    }
    spec = parse_config(recipe, "recipe.yaml")
    assert [m.ref for m in spec.models] == ["c", "a", "b", "d"] and spec.layered
    assert spec.layered_weights == [("modules.text.slices[0].sources[0].parameters.weight", "a", 0.5)]
    config = mergekit_config(spec, {ref: f"/resolved/{ref}" for ref in "abcd"})
    text = config.modules["text"].slices[0]
    assert str(text.base_model) == "/resolved/c" and [str(s.model) for s in text.sources] == [
        "/resolved/a",
        "/resolved/b",
    ]
    assert str(config.modules["vision"].models[0].model) == "/resolved/d"
    assert recipe["modules"]["vision"]["models"] == ["d"]  # the caller's dict is left as it was
    recipe["modules"]["text"]["slices"][0]["sources"][1]["parameters"] = {"weight": -1}
    with pytest.raises(
        ConfigError,
        match=r"recipe.yaml: 'modules.text.slices\[0\].sources\[1\].parameters.weight': "
        r"weight of 'b' is negative",
    ):
        check_weights(parse_config(recipe, "recipe.yaml"))
    with pytest.raises(
        ConfigError,
        match=r"recipe.yaml: 'modules.text.slices\[0\].sources\[0\].layer_range': "
        "not a valid mergekit config",
    ):
        recipe["modules"]["text"]["slices"][0]["sources"][0]["layer_range"] = "all"
        mergekit_config(parse_config(recipe, "recipe.yaml"), {})
