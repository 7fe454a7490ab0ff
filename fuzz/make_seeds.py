"""Write the seed corpus: small valid .slim artifacts, one per method / codec / layout.

Seeds come from the zoo models (LeNet-300-100, LeNet-5; trained and cached on first use) compressed
with quick settings (no retraining), so they cover every codec and edit a real artifact holds: int8
runtime modules, int4 (GPTQ, bit-packed), k-means palettes with Huffman / ANS coding, sparse masks and
gap streams, HashedNets, low-rank factorisation and structural shrinking (edits), the streaming
`affine` codec, and both file layouts (packed and named). Files have no `.slim` suffix (the repo
ignores `*.slim`); the loader does not care.

    .venv/bin/python fuzz/make_seeds.py            # -> fuzz/corpus/seeds/
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SEEDS = HERE / "corpus" / "seeds"

# (seed name, zoo model, [(method, options), ...]): quick settings, no fine-tuning
PLANS: list[tuple[str, str, list[tuple[str, dict]]]] = [
    ("lenet-300-100-int8", "lenet-300-100", [("int8", {})]),
    ("lenet-300-100-int4-gptq", "lenet-300-100", [("gptq", {"bits": 4, "granularity": "channel", "samples": 64})]),
    ("lenet-300-100-rtn3", "lenet-300-100",
     [("rtn", {"bits": 3, "symmetric": False, "granularity": "group", "group_size": 4})]),
    ("lenet-300-100-kmeans-huffman", "lenet-300-100", [("kmeans", {"bits": 4, "coding": "huffman"})]),
    ("lenet-300-100-kmeans-ans", "lenet-300-100", [("kmeans", {"bits": 3, "coding": "ans"})]),
    ("lenet-300-100-prune-magnitude", "lenet-300-100", [("magnitude", {"sparsity": 0.95, "value_dtype": "float16"})]),
    ("lenet-300-100-hashed", "lenet-300-100", [("hashed", {"ratio": 0.125, "finetune_epochs": 0})]),
    ("lenet-300-100-deep-compression", "lenet-300-100",
     [("magnitude", {"sparsity": 0.96}), ("kmeans", {"bits": 4, "coding": "auto"})]),
    ("lenet-300-100-nm-2-4-kmeans", "lenet-300-100", [("nm", {}), ("kmeans", {"bits": 4, "coding": "auto"})]),
    ("lenet-300-100-lowrank", "lenet-300-100", [("lowrank", {"rank": 8, "targets": ["fc1", "fc2"]})]),
    ("lenet-300-100-structured", "lenet-300-100", [("weight-norm", {"ratio": 0.8, "max_drop": 100.0})]),
    ("lenet5-int8-static", "lenet5", [("int8-static", {"samples": 64})]),
    ("lenet5-structured-int8", "lenet5", [("weight-norm", {"ratio": 0.5, "max_drop": 100.0}), ("int8", {})]),
]


def build(name: str, zoo_name: str, stages: list[tuple[str, dict]], out: Path) -> int:
    import slimkit as sk

    model = sk.zoo.load(zoo_name)
    task = sk.zoo.entry(zoo_name).task()
    for method, options in stages:
        model = sk.apply_(model, sk.make_config(method, **options), data=task)
    return sk.save(model, out / name)


def named_layout(src: Path, dst: Path) -> int:
    """The same artifact in the named layout (one safetensors tensor per array, plain JSON manifest)."""
    from slimkit.io.artifact import read_raw, write_raw

    arrays, manifest = read_raw(src)
    write_raw(dst, arrays, manifest)
    return dst.stat().st_size


def legacy_packed(src: Path, dst: Path) -> int | None:
    """The same packed artifact with its manifest zlib+base64 in `__metadata__["slimkit.z"]` (the
    layout before the tail manifest, still readable); None if `src` has no tail manifest."""
    sys.path.insert(0, str(HERE.parent))
    from fuzz.mutate import get_manifest, join_file, put_manifest, split_file

    header, body = split_file(src.read_bytes())
    manifest, key = get_manifest(header, body)
    if key != "slimkit.zb":
        return None
    start = header["payload"]["data_offsets"][1] - int(header["__metadata__"].pop(key))
    header["payload"]["data_offsets"][1] = start
    header["payload"]["shape"] = [start - header["payload"]["data_offsets"][0]]
    put_manifest(header, manifest, "slimkit.z")
    dst.write_bytes(join_file(header, body[:start]))
    return dst.stat().st_size


def streamed(out: Path) -> int:
    """A bare checkpoint compressed by the streaming path (`affine` codec, base kind "weights")."""
    from safetensors.torch import save_file

    import slimkit as sk
    from slimkit.stream import compress_checkpoint

    state = {k: v.contiguous() for k, v in sk.zoo.load("lenet-300-100").state_dict().items()}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "lenet.safetensors"
        save_file(state, str(ckpt))
        compress_checkpoint(str(ckpt), "int8", str(out / "weights-stream-int8"))
    return (out / "weights-stream-int8").stat().st_size


def hf_seed(out: Path) -> int:
    """A tiny random BERT from a Hugging Face folder, int8 (base kind "hf": rebuilt from its config)."""
    import transformers

    import slimkit as sk

    config = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        transformers.AutoModel.from_config(config).save_pretrained(tmp)
        model = sk.apply_(sk.resolve(tmp), sk.make_config("int8"))
        return sk.save(model, out / "hf-bert-tiny-int8")


def user_seed(out: Path) -> int:
    """A user model (base kind "user", the architecture of `fuzz.target.user_architecture`), 2-bit packed.

    `save` would capture this Sequential as a graph base; the seed keeps the "user" base (a file whose
    architecture was not captured: `load` takes `model=`), written by the same writer."""
    from torch import nn

    import slimkit as sk
    from slimkit.io.artifact import encode_model, set_codec
    from slimkit.io.layout import write_slim

    torch.manual_seed(0)
    model = sk.zoo.tag(nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)), {"kind": "user"})
    with torch.no_grad():
        model[0].weight.copy_(torch.randint(0, 4, (8, 16)).float())
    set_codec(model[0], "weight", [{"codec": "cast", "to": "uint8"}, {"codec": "bitpack", "bits": 2}])
    set_codec(model[2], "weight", [{"codec": "cast", "to": "float16"}])
    arrays, manifest = encode_model(model)
    return write_slim(out / "user-bitpack", arrays, manifest.model_copy(update={"base": {"kind": "user"}}))


def graph_seed(out: Path) -> int:
    """A user model saved with its architecture captured (base kind "graph": modules by spec, a
    parameter read directly, residual add, tensor methods, BatchNorm, GRU), int8 + k-means layers."""
    from torch import nn

    import slimkit as sk

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv1d(4, 4, 3, padding=1), nn.BatchNorm1d(4)
            self.gru = nn.GRU(4, 4, batch_first=True)
            self.fc, self.head = nn.Linear(16, 8), nn.Linear(8, 3)
            self.scale = nn.Parameter(torch.ones(3))

        def forward(self, x):
            y = torch.relu(self.bn(self.conv(x))) + x
            y, _ = self.gru(y.transpose(1, 2))
            return self.head(torch.relu(self.fc(y.reshape(y.shape[0], -1)))) * self.scale

    torch.manual_seed(0)
    model = Tiny().eval()
    sk.apply_(model, sk.make_config("int8", targets=["fc"]))
    sk.apply_(model, sk.make_config("kmeans", bits=2, targets=["head"]))
    return sk.save(model, out / "user-graph")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SEEDS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, zoo_name, stages in PLANS:
        print(f"{name}: {build(name, zoo_name, stages, args.out)} bytes", flush=True)
    for name in ("lenet-300-100-int8", "lenet-300-100-deep-compression"):
        print(f"{name}-named: {named_layout(args.out / name, args.out / f'{name}-named')} bytes")
    print(f"hf-bert-tiny-int8: {hf_seed(args.out)} bytes")
    print(f"user-bitpack: {user_seed(args.out)} bytes")
    print(f"user-graph: {graph_seed(args.out)} bytes")
    for name in ("lenet-300-100-kmeans-huffman", "user-bitpack"):
        print(f"{name}-legacy: {legacy_packed(args.out / name, args.out / f'{name}-legacy')} bytes")
    print(f"weights-stream-int8: {streamed(args.out)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
