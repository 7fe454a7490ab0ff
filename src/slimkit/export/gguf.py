"""`export_gguf(model, "out.gguf")`: a Llama-family causal LM as a GGUF file for llama.cpp / ollama.

The tensor names, the Q/K row permutation and the metadata keys are those of llama.cpp's
`convert_hf_to_gguf.py` (`LlamaModel`, architecture "llama"). Weights slimkit holds as integer codes
keep their codes where a GGML block type holds them (`slimkit.export.gguf_blocks`: symmetric 4-bit
-> Q4_0, int8 / symmetric 5-8-bit -> Q8_0, asymmetric 4-bit -> Q4_1, groups a multiple of 32);
every other weight (float, or codes no block holds) is decoded and written as `qtype` (F16 by
default, or re-quantized to Q8_0 / Q4_0 / Q4_1). The report lists each tensor: its GGML type, how it
got there (exact / codes kept / re-quantized / float) and the largest difference to slimkit's own
decoded weight, so nothing is re-quantized silently. Norm weights stay F32.

The tokenizer (and the general.* description: name, license): copied from the source GGUF where the
model came from one (builtin:smollm2); else written from the tokenizer files of the Hugging Face folder
the model was compressed from (`slimkit.export.gguf_vocab`: byte-level BPE or SentencePiece). Where
there is none (a user's module, the folder gone, a tokenizer GGUF cannot hold) the file carries no
vocabulary (`tokenizer.ggml.model = "none"`), llama.cpp runs it on token ids, and `vocab["note"]` says why.

>>> report = export_gguf(sk.load("smollm2-int8.slim"), "smollm2-q8_0.gguf")   # doctest: +SKIP
>>> report["types"]                                                            # doctest: +SKIP
{'Q8_0': 211, 'F32': 61}
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.optional import require
from slimkit.core.provenance import base_of
from slimkit.export import gguf_blocks as gb
from slimkit.export.gguf_vocab import add_vocab
from slimkit.io.safetensors_file import AtomicFile, check_writable
from slimkit.zoo import smollm2

TARGETS = ("f16", "f32", "q8_0", "q4_0", "q4_1")
ARCH = "llama"
LAYER = {  # HF name under model.layers.N -> GGUF name under blk.N
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}
FILE_TYPES = {"F32": "ALL_F32", "F16": "MOSTLY_F16", "Q8_0": "MOSTLY_Q8_0", "Q4_0": "MOSTLY_Q4_0",
              "Q4_1": "MOSTLY_Q4_1"}


def export_gguf(model: nn.Module, path: str | os.PathLike, qtype: str = "f16", overwrite: bool = True,
                tokenizer: str | os.PathLike | None = None) -> dict:
    """Write the Llama-family causal LM `model` (as `sk.load` returns it) to `path` as GGUF, atomically.

    `qtype` (f16, f32, q8_0, q4_0, q4_1) is the type of every 2-D weight that does not keep its slimkit
    codes. `tokenizer`: the Hugging Face folder whose tokenizer the file carries (default: the source GGUF
    of builtin:smollm2, or the folder a model loaded from a folder came from; a .slim file never points to
    a folder, docs/safety.md, so a .slim made from a folder needs it named here).

    Returns {"path", "bytes", "types": {GGML type: tensors}, "tensors": [{"name", "source", "type", "how",
    "max_abs_err"}], "exact", "requantized", "tokenizer": the GGUF or Hugging Face folder the vocabulary
    came from, or "none", "vocab": {"source", "model", "pre", "tokens", "merges", "note"}}.
    """
    require("gguf", "llm", "GGUF export")
    import gguf

    if qtype not in TARGETS:
        raise SlimError(f"--gguf-type must be one of {', '.join(TARGETS)}, got {qtype!r}")
    config = check_llama(model)
    path = Path(path)
    check_writable(path, overwrite=overwrite)
    if tokenizer is not None and not Path(tokenizer).is_dir():
        raise SlimError(f"the tokenizer folder {tokenizer} does not exist")
    target = gguf.GGMLQuantizationType[qtype.upper()]
    records, arrays = [], {}
    for name, source, kind, heads in tensor_plan(model, config):
        data, record = encode(model, source, kind, target, heads)
        arrays[name] = data
        records.append({"name": name, "source": source, **record})
    writer = gguf.GGUFWriter(None, ARCH)
    vocab = add_source_keys(writer, model, config, tokenizer)
    add_metadata(writer, config, records)
    for rec in records:
        data = arrays[rec["name"]]
        raw = gguf.GGMLQuantizationType[rec["type"]]
        writer.add_tensor(rec["name"], data, raw_dtype=raw if data.dtype == np.uint8 else None)
    with AtomicFile(path, overwrite) as out:
        writer.write_header_to_file(path=out.tmp)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        out.commit()
    kinds = Counter(r["how"] for r in records)
    return {"path": str(path), "bytes": path.stat().st_size, "types": dict(Counter(r["type"] for r in records)),
            "tensors": records, "exact": kinds["exact"], "codes_kept": kinds["codes kept"],
            "requantized": kinds["re-quantized"], "tokenizer": vocab["source"], "vocab": vocab}


def check_llama(model: nn.Module):
    """The model's Hugging Face config, or a one-line SlimError saying why it cannot be a llama GGUF."""
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    if kind != "llama" or not hasattr(model, "lm_head") or not hasattr(getattr(model, "model", None), "layers"):
        what = f"a {kind} model" if kind else f"a {type(model).__name__}"
        raise SlimError(f"GGUF export supports Llama-family causal LMs (LlamaForCausalLM); this is {what}")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise SlimError(f"GGUF export: hidden_act {config.hidden_act!r} is not llama's silu")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise SlimError("GGUF export: Llama models with attention or MLP biases are not supported")
    rope = rope_params(config)
    if rope.get("rope_type", "default") not in ("default", "linear"):
        raise SlimError(f"GGUF export: rope scaling {rope.get('rope_type')!r} is not supported "
                        "(only none and linear)")
    return config


def rope_params(config) -> dict:
    """rope_theta / rope_type / factor from a config of any transformers version."""
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    if "type" in params and "rope_type" not in params:
        params["rope_type"] = params["type"]
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    return params


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def tensor_plan(model: nn.Module, config) -> list[tuple[str, str, str, int | None]]:
    """(GGUF name, module path, "matrix" / "norm", heads for the Q/K permutation or None), in
    llama.cpp's order."""
    plan = [("token_embd.weight", "model.embed_tokens", "matrix", None)]
    for i in range(config.num_hidden_layers):
        for hf, name in LAYER.items():
            heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}.get(name)
            kind = "norm" if name.endswith("norm") else "matrix"
            plan.append((f"blk.{i}.{name}.weight", f"model.layers.{i}.{hf}", kind, heads))
    plan.append(("output_norm.weight", "model.norm", "norm", None))
    if getattr(model.lm_head, "slim_type", None) != "TiedLMHead" and not is_tied(model):
        plan.append(("output.weight", "lm_head", "matrix", None))
    return plan


def is_tied(model: nn.Module) -> bool:
    head, emb = getattr(model.lm_head, "weight", None), getattr(model.model.embed_tokens, "weight", None)
    return isinstance(head, torch.Tensor) and head is emb


def permute_qk(rows: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's row order for q_proj / k_proj (`LlamaModel.permute`): within each head, the two
    rotary halves interleaved. Works on any array whose first axis is the weight's rows."""
    return rows.reshape(heads, 2, rows.shape[0] // heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


@torch.no_grad()
def decoded_weight(module: nn.Module, where: str) -> torch.Tensor:
    """The float weight a module computes with: decoded codes, a folded input scale, or `.weight`."""
    if isinstance(module, nn.Sequential) and set(module._modules) == {"scale", "linear"}:   # AWQ's InputScale
        return decoded_weight(module.linear, where) / module.scale.value.float()[None, :]
    for attr in ("dequantized_weight", "virtual_weight"):
        if callable(getattr(module, attr, None)):
            return getattr(module, attr)().detach().float()
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() not in (1, 2):
        raise SlimError(f"GGUF export: {where} is a {type(module).__name__} with no weight matrix llama.cpp can use")
    return weight.detach().float()


def codes_of(module: nn.Module) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int, int] | None:
    """(codes, scale, zero, bits, group size) of a slimkit integer layer, or None for other modules."""
    kind = getattr(module, "slim_type", None)
    if kind == "Int8Linear":
        scale = module.scale.detach().float().numpy().reshape(-1, 1)
        return module.qweight.numpy(), scale, None, 8, module.qweight.shape[1]
    if kind in ("QuantLinear", "QuantEmbedding"):
        rows, cols = module.qweight.shape
        group = rows * cols if module.granularity.value == "tensor" else module.group_size
        zero = None if module.zero is None else module.zero.numpy()
        return module.qweight.numpy(), module.scale.detach().float().numpy(), zero, module.bits, group
    return None


def encode(model: nn.Module, source: str, kind: str, target, heads: int | None) -> tuple[np.ndarray, dict]:
    """GGML data of one tensor and its report line {"type", "how", "max_abs_err"}."""
    try:
        module = model.get_submodule(source)
    except AttributeError:
        raise SlimError(f"GGUF export: the model has no {source}") from None
    ref = decoded_weight(module, source).numpy()
    qt = gb.qtypes()
    if kind == "norm":
        data, qtype, how = ref.astype(np.float32), qt.F32, "float"
    else:
        codes = codes_of(module)
        mapped = None if codes is None else gb.map_codes(*codes)
        if mapped is not None:
            data, qtype = mapped.blocks, mapped.qtype
            how = "exact" if mapped.exact else "codes kept"
        else:
            qtype = target if ref.shape[1] % gb.BLOCK == 0 else qt.F16   # GGML blocks need rows of 32s
            data = gb.requantize(ref, qtype)
            how = "float" if qtype in (qt.F32, qt.F16) else "re-quantized"
    back = gb.dequantize(data, qtype).reshape(ref.shape)
    err = float(np.abs(back - ref).max(initial=0.0))
    if how == "float" and err == 0.0:
        how = "exact"
    if heads is not None:
        data = permute_qk(data, heads)
    return np.ascontiguousarray(data), {"type": qtype.name, "how": how, "max_abs_err": err}


def add_metadata(writer, config, records: list[dict]) -> None:
    """llama.cpp's llama hyperparameters (`LlamaModel.set_gguf_parameters`) and the file type."""
    import gguf

    if not any("general.name" in kv for kv in writer.kv_data):
        writer.add_name(str(getattr(config, "_name_or_path", "") or "model").rstrip("/").rsplit("/", 1)[-1] or "model")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    rope = rope_params(config)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    if rope.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    dim = head_dim(config)
    writer.add_rope_dimension_count(dim)
    if dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(dim)
        writer.add_value_length(dim)
    weights = Counter()
    for rec in records:
        if rec["type"] != "F32" or not rec["name"].endswith("norm.weight"):
            weights[rec["type"]] += 1
    main = weights.most_common(1)[0][0] if weights else "F32"
    writer.add_file_type(int(gguf.LlamaFileType[FILE_TYPES[main]]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


OWN_KEYS = ("general.architecture", "general.file_type", "general.quantization_version")


def add_source_keys(writer, model: nn.Module, config, tokenizer: str | os.PathLike | None = None) -> dict:
    """Write the tokenizer of the folder `tokenizer`; without one, copy the tokenizer and the general.*
    description (name, license, ...) of the GGUF the model came from (builtin:smollm2), else write the
    tokenizer of the Hugging Face folder it was loaded from (`gguf_vocab.add_vocab`: an empty vocabulary,
    and a note why, where there is none). Returns {"source": the GGUF or folder read, or "none", "model",
    "pre", "tokens", "merges", "note"}."""
    if tokenizer is not None:
        return add_vocab(writer, Path(tokenizer).resolve(), config.vocab_size)
    source = source_gguf(model)
    if source is not None:
        import gguf

        reader = gguf.GGUFReader(source)
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        if tokens is not None and len(tokens.data) == config.vocab_size:
            for key, field in reader.fields.items():
                if key.startswith(("tokenizer.", "general.")) and key not in OWN_KEYS:
                    sub = field.types[1] if len(field.types) > 1 else None
                    writer.add_key_value(key, field.contents(), field.types[0], sub_type=sub)
            merges = reader.fields.get("tokenizer.ggml.merges")
            pre = reader.fields.get("tokenizer.ggml.pre")
            return {"source": str(source), "model": reader.fields["tokenizer.ggml.model"].contents(),
                    "pre": pre.contents() if pre else None, "tokens": len(tokens.data),
                    "merges": len(merges.data) if merges else 0, "note": None}
    base = base_of(model)
    if base.get("kind") == "hf" and "path" not in base:
        writer.add_tokenizer_model("none")
        return {"source": "none", "model": "none", "pre": None, "tokens": 0, "merges": 0,
                "note": "no tokenizer: a .slim file does not say where to read one (docs/safety.md); "
                        "name the model's Hugging Face folder with --tokenizer"}
    return add_vocab(writer, base.get("path") if base.get("kind") == "hf" else None, config.vocab_size)


def source_gguf(model: nn.Module) -> Path | None:
    """The GGUF file a zoo model was converted from (SmolLM2), or None."""
    base = base_of(model)
    if base.get("kind") == "zoo" and base.get("name") == "smollm2":
        try:
            return smollm2.gguf_path()
        except SlimError:
            return None
    return None
