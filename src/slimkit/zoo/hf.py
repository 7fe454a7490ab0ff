"""Hugging Face model folders: load one offline, and rebuild its architecture from its config alone.

`transformers` is imported only inside these functions, with the Hub switched offline first, so
`import slimkit` stays light and nothing is ever downloaded. Weights load only from safetensors
(never a pickled `.bin`), and never with remote code. Attention is always the "eager"
implementation, in `load_hf_folder` and `build_from_base` alike, so a rebuilt model computes
exactly what the loaded one did (and can return attention maps, which distillation may use).
GPT-2-style `Conv1D` layers become the equivalent `nn.Linear` in both, so Linear methods apply.

A folder whose config names a causal-LM architecture (`LlamaForCausalLM`, `GPT2LMHeadModel`,
`Qwen2ForCausalLM`, ...) loads with `AutoModelForCausalLM`, head included, so `generate()` and the KV
cache work on the model and on every .slim made from it (the base records `"head": "causal-lm"`).
A head tied to the input embedding becomes a `TiedLMHead` (`slimkit.nn.tied_head`): the table is
compressed and stored once, and the head computes with whatever the embedding decodes to.

>>> from slimkit.zoo.hf import load_hf_folder, build_from_base
>>> model = load_hf_folder("path/to/bert-folder")                 # doctest: +SKIP
>>> twin = build_from_base(model.slimkit_base)                   # doctest: +SKIP
>>> twin.load_state_dict(model.state_dict())                     # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.methods import register_preparer
from slimkit.core.optional import require
from slimkit.core.provenance import base_of, tag
from slimkit.io.shards import read_state_dict
from slimkit.nn.tied_head import tied_head_for
from slimkit.surgery.edits import replace_module
from slimkit.zoo.config_limits import check_folder_config

ATTN_IMPLEMENTATION = "eager"
CAUSAL_LM = "causal-lm"   # base["head"]: built with AutoModelForCausalLM (absent: AutoModel, no head)
AUTO_CLASSES = {None: "AutoModel", CAUSAL_LM: "AutoModelForCausalLM"}


def transformers_offline() -> ModuleType:
    """Import `transformers` with the Hugging Face Hub switched offline (no download, ever)."""
    require("transformers", "hf", "loading a Hugging Face model")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import transformers

    return transformers


@contextlib.contextmanager
def quiet() -> Iterator[ModuleType]:
    """`transformers`, with its progress bars and warnings silenced for the block."""
    transformers = transformers_offline()
    log = transformers.utils.logging
    bars, verbosity = log.is_progress_bar_enabled(), log.get_verbosity()
    log.disable_progress_bar()
    log.set_verbosity_error()
    try:
        yield transformers
    finally:
        log.set_verbosity(verbosity)
        if bars:
            log.enable_progress_bar()


def first_line(exc: BaseException) -> str:
    """The message's first line (with the next one when the first ends in ":", as transformers'
    config validation writes "Validation error for field 'x':" then why)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]


def check_folder(path: str | Path) -> Path:
    """The absolute path of a Hugging Face model folder, or `SlimError` saying what is missing."""
    folder = Path(path).expanduser().resolve()
    if not folder.exists():
        raise SlimError(f"Hugging Face model folder {str(path)!r} does not exist")
    if not folder.is_dir():
        raise SlimError(f"{str(path)!r} is a file; expected a Hugging Face model folder")
    if not (folder / "config.json").is_file():
        raise SlimError(f"{str(path)!r} is not a Hugging Face model folder (it has no config.json)")
    if not any(folder.glob("*.safetensors")):
        raise SlimError(f"{str(path)!r} has no *.safetensors weights (pickled .bin weights are not loaded)")
    check_folder_config(folder, repr(str(path)))   # not quantized, no more layers than its tensors
    return folder


def head_of(config: dict) -> str | None:
    """"causal-lm" when `config` (a config.json as a dict) names a causal-LM architecture that
    transformers knows (`LlamaForCausalLM`, `GPT2LMHeadModel`, ...), else None (the base model).

    >>> head_of({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
    'causal-lm'
    >>> head_of({"model_type": "bert", "architectures": ["BertModel"]}) is None
    True
    """
    names = config.get("architectures") if isinstance(config, dict) else None
    if not isinstance(names, list) or not names:
        return None
    transformers_offline()
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as causal

    known = set(causal.values())
    return CAUSAL_LM if any(isinstance(n, str) and n in known for n in names) else None


def _auto_class(transformers: ModuleType, head: str | None) -> Any:
    if head is not None and head != CAUSAL_LM:
        raise SlimError(f"unknown Hugging Face head {str(head)[:40]!r} (known: {CAUSAL_LM})")
    return getattr(transformers, AUTO_CLASSES[head])


def read_config(folder: Path) -> dict:
    """config.json of a model folder as a dict; `SlimError` when it is not a readable JSON object."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:   # ValueError: bad UTF-8 or JSON, a 5,000-digit int
        raise SlimError(f"{str(folder)!r}: config.json is not readable JSON ({exc.__class__.__name__})") from None
    if not isinstance(config, dict):
        raise SlimError(f"{str(folder)!r}: config.json is not a JSON object")
    return config


def pretrained(folder: Path, head: str | None = None) -> nn.Module:
    """The pretrained model in `folder` (AutoModel, or AutoModelForCausalLM for `head="causal-lm"`):
    fp32, eval mode, eager attention, `Conv1D` as `nn.Linear`, a tied LM head as `TiedLMHead`.

    The weights are read by slimkit (`slimkit.io.shards.read_state_dict`: `model.safetensors` or the
    shards of `model.safetensors.index.json`, with pread, never a memory map) and handed to
    transformers as a state dict, which it maps onto the architecture as it maps a checkpoint (key
    renames, tied weights). A file truncated or rewritten while it is read is then a one-line
    SlimFormatError, where transformers' memory map killed the process with SIGBUS.

    Raises `SlimError` if the checkpoint lacks weights the architecture needs (a pooler aside):
    they would silently stay random. Extra tensors (a task head) are fine.
    """
    state = read_state_dict(folder)
    with quiet() as transformers:
        try:
            config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=False)
            model, info = _model_class(_auto_class(transformers, head), config).from_pretrained(
                None, config=config, state_dict=state, dtype=torch.float32,
                attn_implementation=ATTN_IMPLEMENTATION, trust_remote_code=False, output_loading_info=True)
        except (OSError, *BUILD_ERRORS, *_strict_errors()) as exc:   # a config transformers cannot build
            raise SlimError(f"cannot load the model in {str(folder)!r}: {first_line(exc)[:200]}") from None
    del state
    model.config.name_or_path = str(folder)   # as from_pretrained(folder) records it
    bad = sorted(str(k) for k in (*info.get("missing_keys", ()), *info.get("mismatched_keys", ()))
                 if not str(k).startswith("pooler."))
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise SlimError(f"the weights in {str(folder)!r} do not fit the architecture in its config.json: "
                        f"missing or mismatched {', '.join(bad[:3])}{more}")
    return prepare(model)


def _model_class(auto: Any, config: Any) -> Any:
    """The concrete class an Auto class builds for `config` (e.g. `LlamaForCausalLM`): only it takes
    a state dict without a folder name in `from_pretrained`."""
    from transformers.models.auto.auto_factory import _get_model_class

    if type(config) not in auto._model_mapping:
        raise ValueError(f"{auto.__name__} has no model for config {type(config).__name__}")
    return _get_model_class(config, auto._model_mapping)


def prepare(model: nn.Module) -> nn.Module:
    """What slimkit runs of a `transformers` model: `Conv1D` as `nn.Linear` (`linears_for_conv1d`), an
    output projection tied to the input embedding as a `TiedLMHead` (`tie_head`), eval mode."""
    return tie_head(linears_for_conv1d(model)).eval()


def _place(model: nn.Module, name: str, module: nn.Module, record: bool) -> None:
    if record:
        replace_module(model, name, module)   # an edit in the model's log: `load(path, model=...)` replays it
    else:
        model.set_submodule(name, module)     # part of how slimkit builds the architecture


def tie_head(model: nn.Module, record: bool = False) -> nn.Module:
    """Replace a `transformers` model's output embedding (`lm_head`) by a `TiedLMHead` when its weight
    is the input embedding's (tied weights: stored and compressed once); in place, returns `model`.
    `record` logs the replacement as an edit (a user's own module).

    >>> type(tie_head(gpt2_lm_model).lm_head).__name__                  # doctest: +SKIP
    'TiedLMHead'
    """
    get_in, get_out = getattr(model, "get_input_embeddings", None), getattr(model, "get_output_embeddings", None)
    if not callable(get_in) or not callable(get_out):
        return model
    try:
        emb, head = get_in(), get_out()
    except (NotImplementedError, AttributeError):
        return model
    if emb is None or head is None:
        return model
    names = {id(m): n for n, m in model.named_modules()}
    if id(emb) in names and id(head) in names:
        tied = tied_head_for(model, names[id(head)], names[id(emb)])
        if tied is not None:
            _place(model, names[id(head)], tied, record)
    return model


def linears_for_conv1d(model: nn.Module, record: bool = False) -> nn.Module:
    """Replace every `transformers` `Conv1D` (GPT-2 family: a Linear with a transposed weight) by the
    equivalent `nn.Linear`, in place, so that every Linear method (int8, GPTQ, pruning, k-means)
    applies. Outputs are unchanged; the stored weight is the transpose of the checkpoint's. `record`
    logs each replacement as an edit (a user's own module).

    >>> model = load_hf_folder("path/to/gpt2-folder")                # calls it  # doctest: +SKIP
    >>> type(model.h[0].attn.c_attn).__name__                        # doctest: +SKIP
    'Linear'
    """
    from transformers.pytorch_utils import Conv1D

    for name, module in list(model.named_modules()):
        if type(module) is not Conv1D:
            continue
        weight, bias = module.weight, module.bias
        linear = nn.Linear(weight.shape[0], weight.shape[1], bias=bias is not None,
                           device=weight.device, dtype=weight.dtype)
        linear.weight = nn.Parameter(weight.detach().t().contiguous(), requires_grad=weight.requires_grad)
        if bias is not None:
            linear.bias = bias
        linear.train(module.training)
        _place(model, name, linear, record)
    return model


@register_preparer
def prepare_users_transformers(model: nn.Module) -> nn.Module:
    """Before a method applies to a `transformers` model slimkit did not load (the user's own module,
    e.g. a `GPT2LMHeadModel` built in Python): `Conv1D` as `nn.Linear` and a tied head as `TiedLMHead`,
    as for a folder, but recorded as edits, so that `load(path, model=...)` replays them. A model
    slimkit loaded is already prepared; without `transformers` imported there is nothing to do."""
    if base_of(model).get("kind") != "user" or "transformers.pytorch_utils" not in sys.modules:
        return model
    return tie_head(linears_for_conv1d(model, record=True), record=True)


def from_config(config: Any, head: str | None = None) -> nn.Module:
    """A randomly initialised model for a `transformers` config (AutoModel, or AutoModelForCausalLM
    for `head="causal-lm"`): fp32, eval mode, eager attention, prepared as `pretrained` does."""
    with quiet() as transformers:
        model = _auto_class(transformers, head).from_config(
            config, dtype=torch.float32, attn_implementation=ATTN_IMPLEMENTATION, trust_remote_code=False)
    return prepare(model)


def json_safe(value: Any) -> Any:
    """`value` with every dtype, tuple, set or other object turned into JSON types.

    >>> json_safe({"dtype": torch.float16, "ids": (1, 2), 3: None})
    {'dtype': 'float16', 'ids': [1, 2], '3': None}
    """
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [json_safe(v) for v in items]
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def load_hf_folder(path: str | Path) -> nn.Module:
    """The pretrained model in a Hugging Face folder (config.json + *.safetensors), offline.

    `AutoModel` gives the base model (a task head in the checkpoint is dropped), except for a causal
    LM (`head_of`): `AutoModelForCausalLM`, with its head. The result is tagged with base
    `{"kind": "hf", "path": <abs path>, "config": <config as JSON types>}` (plus `"head": "causal-lm"`),
    from which `build_from_base` rebuilds the architecture without the folder.

    >>> model = load_hf_folder("path/to/bert-folder")                 # doctest: +SKIP
    >>> model.slimkit_base["config"]["model_type"]                    # doctest: +SKIP
    'bert'
    """
    folder = check_folder(path)
    config = read_config(folder)
    head = head_of(config)
    weights = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    check_size(config, head, 2 * weights + FOLDER_SLACK, f"{str(path)!r}")   # before anything is allocated
    model = pretrained(folder, head)
    config = json_safe(model.config.to_dict())
    base = {"kind": "hf", "path": str(folder), "config": config}
    return tag(model, {**base, "head": head} if head else base)


BUILD_ERRORS = (TypeError, ValueError, KeyError, IndexError, AttributeError, ArithmeticError, RuntimeError,
                AssertionError)  # what transformers raises for configs it cannot build


def _strict_errors() -> tuple[type[Exception], ...]:
    """huggingface_hub's config validation error (a bare Exception subclass), where it exists."""
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:
        return ()
    return (StrictDataclassError,)


FOLDER_SLACK = 64 << 20   # bytes a folder's model may take beyond 2x its weights (fp16 -> fp32): a pooler, buffers


def _config_object(config_dict: dict, where: str) -> Any:
    """The transformers config for `config_dict` (SlimError if transformers refuses it)."""
    model_type = config_dict.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise SlimError(f"{where}Hugging Face config has no model_type; cannot rebuild the architecture")
    with quiet() as transformers:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING as mapping

        if model_type not in mapping:
            raise SlimError(f"{where}Hugging Face model_type {model_type[:80]!r} is unknown to transformers "
                            f"{transformers.__version__}")
        try:
            return mapping[model_type].from_dict(config_dict)
        except (*BUILD_ERRORS, *_strict_errors()) as exc:
            raise SlimError(f"{where}invalid Hugging Face config for {model_type[:80]!r}: "
                            f"{first_line(exc)[:200]}") from None


def check_size(config_dict: dict, head: str | None, max_bytes: int, where: str) -> None:
    """Refuse (SlimError) a config whose architecture, built on the meta device (no memory), holds
    more than `max_bytes` bytes of weights: a config read from a file cannot make slimkit allocate
    more than the file's own size allows. `where` starts the message."""
    config = _config_object(config_dict, f"{where}: ")
    model_type = config_dict.get("model_type")
    try:
        with torch.device("meta"):
            probe = from_config(config, head)
    except (*BUILD_ERRORS, *_strict_errors()) as exc:
        raise SlimError(f"{where}: cannot build the {str(model_type)[:80]!r} architecture: {type(exc).__name__}: "
                        f"{first_line(exc)[:200]}") from None
    nbytes = sum(t.numel() * t.element_size() for t in (*probe.parameters(), *probe.buffers()))
    if nbytes > max_bytes:
        raise SlimError(f"{where}: the {str(model_type)[:80]!r} config describes {nbytes} bytes of weights, more "
                        f"than the {max_bytes} bytes its files can hold")


def build_from_base(base: dict, max_bytes: int | None = None) -> nn.Module:
    """The architecture described by a `{"kind": "hf", "config": {...}}` base, randomly initialised.

    Only the config dict is used (the folder need not exist any more); the model is fp32, in eval
    mode, with eager attention, tagged with the same base. With `max_bytes`, the architecture is
    first built on the meta device (no memory) and refused if its tensors would take more bytes:
    a config read from a file cannot make slimkit allocate without bound.

    >>> model = build_from_base({"kind": "hf", "path": "x", "config": {"model_type": "bert",
    ...     "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
    ...     "intermediate_size": 64, "vocab_size": 100}})
    >>> sum(p.numel() for p in model.parameters()) > 0
    True
    """
    config_dict = base.get("config") if isinstance(base, dict) else None
    if not isinstance(config_dict, dict) or base.get("kind") != "hf":
        raise SlimError("base model reference is not a Hugging Face config (expected kind 'hf' and a config)")
    head = base.get("head")
    if head is not None and head != CAUSAL_LM:
        raise SlimError(f"unknown Hugging Face head {str(head)[:40]!r} in the base (known: {CAUSAL_LM})")
    config = _config_object(config_dict, "")
    model_type = config_dict["model_type"]
    try:
        if max_bytes is not None:
            with torch.device("meta"):
                probe = from_config(config, head)
            nbytes = sum(t.numel() * t.element_size() for t in (*probe.parameters(), *probe.buffers()))
            if nbytes > max_bytes:
                raise SlimError(f"the {model_type!r} config describes {nbytes} bytes of weights, more than "
                                f"the {max_bytes} bytes its file can hold")
        return tag(from_config(config, head), dict(base))
    except (*BUILD_ERRORS, *_strict_errors()) as exc:
        raise SlimError(f"cannot build the {model_type!r} architecture: {type(exc).__name__}: "
                        f"{first_line(exc)[:200]}") from None
