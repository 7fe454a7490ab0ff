"""Seeds of the structure-aware fuzzer, made on the fly and parsed into trees.

Three kinds of input, each with the entry point that reads it (`fuzz/tree_target.py`):

- "slim": small .slim files from tiny models, one per codec and base kind: int8 (dynamic and static),
  rtn / affine, GPTQ (bit-packed), k-means palettes with Huffman and ANS coding, sparse masks and gap
  streams, N:M, HashedNets, low-rank and structural edits, deep k-means (vq), all as "graph" bases;
  a Hugging Face base (a tiny BERT config); and the committed seeds of `fuzz/corpus/seeds` for the
  "zoo", "user" and "weights" bases and the named and legacy layouts;
- "recipe": the shipped YAML recipes;
- "hf": tiny Hugging Face folders (BERT, Llama; config.json + model.safetensors).

A parsed seed is a `Seed`: its tree (the manifest and the safetensors header of a .slim file, the
recipe document, the config) and what it takes to write it back (`fuzz/tree_cases.py`).

    .venv/bin/python fuzz/tree_seeds.py OUT        # write the seeds to OUT (a cache folder)
"""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
COMMITTED = HERE / "corpus" / "seeds"
COMMITTED_USED = ("lenet-300-100-int8", "lenet-300-100-deep-compression-named", "lenet-300-100-kmeans-huffman-legacy",
                  "lenet5-int8-static", "user-bitpack", "user-graph", "weights-stream-int8", "lenet-300-100-structured")

# name -> [(method, options)], applied to `tiny_mlp` (the last two to `tiny_cnn`)
TINY: dict[str, list[tuple[str, dict]]] = {
    "int8": [("int8", {})],
    "int8-static": [("int8-static", {"samples": 16})],
    "rtn4-g16": [("rtn", {"bits": 4, "symmetric": False, "granularity": "group", "group_size": 16})],
    "gptq4": [("gptq", {"bits": 4, "granularity": "channel", "samples": 32})],
    "kmeans-huffman": [("kmeans", {"bits": 3, "coding": "huffman"})],
    "kmeans-ans": [("kmeans", {"bits": 3, "coding": "ans"})],
    "magnitude-f16": [("magnitude", {"sparsity": 0.5, "value_dtype": "float16"})],
    "magnitude-kmeans": [("magnitude", {"sparsity": 0.5}), ("kmeans", {"bits": 2, "coding": "auto"})],
    "nm-2-4": [("nm", {})],
    "hashed": [("hashed", {"ratio": 0.25, "finetune_epochs": 0})],
    "lowrank": [("lowrank", {"rank": 4})],
    "structured-int8": [("weight-norm", {"ratio": 0.5, "max_drop": 100.0}), ("int8", {})],
}
TINY_CNN: dict[str, list[tuple[str, dict]]] = {
    "cnn-deep-kmeans": [("deep-kmeans", {"clusters": 4, "finetune_epochs": 0})],
    "cnn-int8": [("int8", {})],
}
MLP_INPUT = (4, 16)       # the input shape of tiny_mlp's forward (batch, features)
CNN_INPUT = (2, 1, 8, 8)


@dataclass
class Seed:
    kind: str                 # "slim", "recipe" or "hf"
    name: str
    tree: Any                 # slim: {"manifest": ..., "header": ...}; recipe: the document; hf: the config
    extra: dict = field(default_factory=dict)   # what the writer needs besides the tree


def tiny_mlp():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8)).eval()


def tiny_cnn():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(256, 10)).eval()


def _tiny_slims(out: Path) -> None:
    import torch

    import slimkit as sk

    g = torch.Generator().manual_seed(0)
    for plans, build, shape in ((TINY, tiny_mlp, MLP_INPUT), (TINY_CNN, tiny_cnn, CNN_INPUT)):
        data = [torch.randn(16, *shape[1:], generator=g) for _ in range(4)]
        for name, stages in plans.items():
            model = build()
            for method, options in stages:
                model = sk.apply_(model, sk.make_config(method, **options), data=data)
            sk.save(model, out / f"slim-{name}")


def _hf_folder(folder: Path, arch: str) -> None:
    import torch
    import transformers

    torch.manual_seed(0)
    if arch == "bert":
        config = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=32, max_position_embeddings=16)
        model = transformers.BertModel(config, add_pooling_layer=False)
    else:
        config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                          num_key_value_heads=1, intermediate_size=32, max_position_embeddings=32,
                                          tie_word_embeddings=True)
        model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(folder, safe_serialization=True)
    for extra in folder.iterdir():   # config.json and model.safetensors are what a folder needs
        if extra.name not in ("config.json", "model.safetensors"):
            extra.unlink()


def build_seeds(out: Path) -> Path:
    """Write every seed to `out` (created); returns `out`. Takes a few seconds."""
    import torch

    import slimkit as sk

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    out.mkdir(parents=True, exist_ok=True)
    _tiny_slims(out)
    for arch in ("bert", "llama"):
        folder = out / f"hf-{arch}"
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir()
        _hf_folder(folder, arch)
    bert = sk.apply_(sk.resolve(str(out / "hf-bert")), sk.make_config("int8"))
    sk.save(bert, out / "slim-hf-bert-int8")
    for name in COMMITTED_USED:
        shutil.copy(COMMITTED / name, out / f"slim-{name}")
    from slimkit.pipeline.recipes import shipped

    for name, path in sorted(shipped().items()):
        shutil.copy(path, out / f"recipe-{name}.yaml")
    (out / "DONE").write_text("ok")
    return out


def parse_seeds(folder: Path) -> list[Seed]:
    """The seeds written by `build_seeds`, parsed into trees."""
    import yaml
    from fuzz.tree_cases import parse_slim

    seeds = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("slim-"):
            seeds.append(parse_slim(path.name, path.read_bytes()))
        elif path.name.startswith("recipe-"):
            seeds.append(Seed("recipe", path.name, yaml.safe_load(path.read_text())))
        elif path.name.startswith("hf-") and path.is_dir():
            config = json.loads((path / "config.json").read_text())
            seeds.append(Seed("hf", path.name, config, {"weights": (path / "model.safetensors").read_bytes()}))
    return seeds


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    target = build_seeds(Path(sys.argv[1]))
    print("\n".join(sorted(p.name for p in target.iterdir())))
