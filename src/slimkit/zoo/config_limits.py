"""Checks of a Hugging Face config (a folder's config.json, or a .slim file's base) before anything is built.

A config is data from a file, and transformers builds whatever it describes: 20,000 layers take minutes
to build even on the meta device, a `quantization_config` makes transformers import bitsandbytes (and
fail deep inside), a position table shorter than the task's inputs fails at the first forward. These
checks refuse such configs in one line (`SlimError`), from what the files really hold:

- a count of layers or experts may not exceed the tensors the weights hold (each layer has at least
  one): the number of tensors comes from the checkpoint's headers or the .slim manifest, whose size is
  bounded by the file's;
- a quantized checkpoint (`quantization_config`: bitsandbytes, GPTQ, AWQ, ...) is refused: slimkit
  compresses full-precision weights;
- `position_limit` gives the longest input the model takes (tasks cap their inputs there).

>>> check_config({"model_type": "bert", "num_hidden_layers": 20000}, tensors=40, where="x.slim")
Traceback (most recent call last):
SlimError: x.slim: the config asks for 20000 layers (num_hidden_layers) but the weights hold only 40 tensors
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from slimkit.core.errors import SlimError, SlimFormatError
from slimkit.io.safetensors_header import read_header

# config keys that count repeated modules (layers, experts); each one needs tensors of its own
COUNT_KEYS = re.compile(r"^(num_(hidden_|decoder_|encoder_)?layers|n_layers?|(encoder|decoder)_layers"
                        r"|num_(local_)?experts|n_routed_experts)$")
# sizes and counts transformers builds layers from: when set, each must be an int >= 1 (a 0 or negative
# head count builds, then fails at the first forward deep inside transformers)
SIZE_KEYS = frozenset({"hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                       "vocab_size", "num_hidden_layers", "n_embd", "n_head", "n_layer", "n_inner", "d_model",
                       "max_position_embeddings", "n_positions", "num_layers", "ffn_dim", "encoder_attention_heads",
                       "decoder_attention_heads"})
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")
MIN_POSITIONS = 8   # shorter inputs cannot measure a model's fidelity
MAX_DEPTH = 8       # nested sub-configs (text_config, vision_config, ...)


def check_config(config: dict, tensors: int, where: str = "", max_bytes: int | None = None) -> None:
    """Refuse a config that is quantized, counts more layers / experts than `tensors`, or (with
    `max_bytes`) whose fp32 embedding table alone takes more bytes (SlimError, starting with `where: `
    if given). The last is a cheap lower bound checked before transformers is even imported; the
    whole architecture is measured on the meta device afterwards (`slimkit.zoo.hf.build_from_base`)."""
    where = f"{where}: " if where else ""
    table = embedding_bytes(config)
    if max_bytes is not None and table > max_bytes:
        raise SlimError(f"{where}the config's embedding table alone takes {table} bytes, more than the {max_bytes} "
                        "bytes its file can hold")
    quant = config.get("quantization_config")
    if quant is not None:
        method = quant.get("quant_method") if isinstance(quant, dict) else None
        raise SlimError(f"{where}the checkpoint is already quantized ({str(method or 'quantization_config')[:40]}); "
                        "slimkit compresses full-precision weights: give the original fp32/fp16/bf16 checkpoint")
    for key, value in _sizes(config, 0):
        if type(value) is not int or value < 1:
            raise SlimError(f"{where}the config's {key} must be a positive integer, got {str(value)[:40]!r}")
    for key, value in _probabilities(config, 0):
        if not 0 <= value <= 1:   # NaN too: torch checks a dropout's p at every forward, even in eval mode
            raise SlimError(f"{where}the config's {key} must be a probability in [0, 1], got {value!r}")
    for key, value in _counts(config, 0):
        if value > tensors:
            raise SlimError(f"{where}the config asks for {value} {'experts' if 'expert' in key else 'layers'} "
                            f"({key}) but the weights hold only {tensors} tensors")


def _sizes(config: dict, depth: int):
    """(key, value) of every size or count the architecture is built from (`SIZE_KEYS`) that is set."""
    if depth > MAX_DEPTH:
        raise SlimFormatError("the config is nested too deeply")
    for key, value in config.items():
        if isinstance(value, dict):
            yield from _sizes(value, depth + 1)
        elif key in SIZE_KEYS and value is not None:
            yield key, value


def _probabilities(config: dict, depth: int):
    """(key, value) of every number set for a dropout probability ("...dropout...", "..._prob")."""
    if depth > MAX_DEPTH:
        raise SlimFormatError("the config is nested too deeply")
    for key, value in config.items():
        if isinstance(value, dict):
            yield from _probabilities(value, depth + 1)
        elif isinstance(key, str) and ("dropout" in key or key.endswith("_prob")) and \
                isinstance(value, int | float) and not isinstance(value, bool):
            yield key, value


def _counts(config: dict, depth: int):
    if depth > MAX_DEPTH:
        raise SlimFormatError("the config is nested too deeply")
    for key, value in config.items():
        if isinstance(value, dict):
            yield from _counts(value, depth + 1)
        elif isinstance(key, str) and COUNT_KEYS.match(key) and isinstance(value, int) and not isinstance(value, bool):
            yield key, value


def embedding_bytes(config: dict) -> int:
    """fp32 bytes of the input embedding a config describes (vocab_size x hidden size), 0 if it names none."""
    if isinstance(config.get("text_config"), dict) and "vocab_size" not in config:
        config = config["text_config"]
    vocab = config.get("vocab_size")
    hidden = next((config[k] for k in ("hidden_size", "n_embd", "d_model", "dim") if type(config.get(k)) is int), 0)
    return 4 * vocab * hidden if type(vocab) is int and vocab > 0 and hidden > 0 else 0


def position_limit(config: dict) -> int | None:
    """The longest input (in tokens) the config's position table takes, or None if it names none;
    SlimError if it is shorter than `MIN_POSITIONS`.

    >>> position_limit({"max_position_embeddings": 512})
    512
    """
    if isinstance(config.get("text_config"), dict) and not any(k in config for k in POSITION_KEYS):
        config = config["text_config"]
    found = [config[k] for k in POSITION_KEYS if type(config.get(k)) is int and config[k] > 0]
    if not found:
        return None
    if min(found) < MIN_POSITIONS:
        raise SlimError(f"the model takes inputs of at most {min(found)} tokens (its config's position limit); "
                        f"scoring it needs at least {MIN_POSITIONS}")
    return min(found)


def folder_tensor_count(folder: Path) -> int:
    """How many tensors the `*.safetensors` files of `folder` hold (from their validated headers)."""
    total = 0
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with open(path, "rb") as fh:
                header, _, _ = read_header(fh, path.stat().st_size, str(path))
        except OSError as exc:
            raise SlimError(f"cannot read {path}: {exc.strerror or exc.__class__.__name__}") from None
        total += len(header)
    return total


def check_folder_config(folder: Path, where: str) -> dict:
    """`check_config` on a Hugging Face folder's config.json against its safetensors' tensor count;
    returns the config (a dict)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:   # ValueError: bad UTF-8 or JSON, a 5,000-digit int
        raise SlimError(f"{where}: config.json is not readable JSON ({exc.__class__.__name__})") from None
    if not isinstance(config, dict):
        raise SlimError(f"{where}: config.json is not a JSON object")
    check_config(config, folder_tensor_count(folder), where)
    try:
        position_limit(config)
    except SlimError as exc:
        raise SlimError(f"{where}: {exc}") from None
    return config
