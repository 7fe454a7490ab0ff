"""The structure-aware fuzzer's target: one input through the real entry point that reads it.

`run(kind, path)` returns "ok" (accepted) or "refused" (a one-line `SlimError`: the CLI's exit 2).
Anything else raises and is a finding: another exception, a message of more than one line, a file
that loads into more decoded bytes than its size allows, or a model left with uninitialised tensors.

- "slim": `read_manifest`, `load_state_dict`, `load(runtime="torch")`, then one forward: through the
  model's own task for a builtin or Hugging Face base (what `slimkit eval` runs), else on a small
  input sized from the first layer (an error there is counted as "forward", not a finding: the input
  was guessed, the file is not at fault);
- "recipe": `load_recipe`, `check_recipe` and `run_recipe` on a tiny model with labelled batches
  (what `slimkit compress` does; a recipe still running after the time limit is "slow", not a finding:
  `epochs: 100000` is slow by request);
- "hf": `resolve(folder)` then one forward of a few tokens, as long as the config's positions allow.

`tests/io/test_tree_corpus.py` replays `fuzz/corpus/tree/` through this function.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from slimkit.core.errors import SlimError

MAX_TOKENS = 8


class Finding(AssertionError):
    """The target's own complaint about an outcome (not an exception of slimkit's)."""


def run(kind: str, path: Path) -> str:
    """"ok", "forward" (loaded; the guessed input did not fit) or "refused"; findings raise."""
    try:
        if kind == "slim":
            return _slim(path)
        if kind == "recipe":
            return _recipe(path)
        if kind == "hf":
            return _hf(path)
        raise ValueError(f"unknown kind {kind!r}")
    except SlimError as exc:
        text = str(exc)
        if not text.strip() or "\n" in text.strip():
            raise Finding(f"{type(exc).__name__} message is not one line: {text[:200]!r}") from exc
        return "refused"


def _slim(path: Path) -> str:
    from fuzz.target import decoded_budget, user_architecture

    from slimkit.io.artifact import load, load_state_dict, read_manifest

    size = path.stat().st_size
    manifest = read_manifest(path)
    state = load_state_dict(path)
    total = sum(t.numel() * t.element_size() for t in {id(t): t for t in state.values()}.values())
    if total > decoded_budget(size):
        raise Finding(f"decoded {total} bytes from a file of {size} bytes")
    del state
    kind = manifest.base.get("kind")
    model = load(path, model=user_architecture() if kind == "user" else None, runtime="torch")
    if any(t.is_meta for t in model.state_dict().values()):
        raise Finding("load returned a model with uninitialised tensors")
    if kind in ("zoo", "hf"):
        _task_forward(model)
        return "ok"
    inputs = guess_inputs(model)
    if inputs is None:
        return "ok"
    try:
        with torch.inference_mode():
            model(inputs)
    except SlimError:
        raise
    except Exception:  # noqa: BLE001 - the input was guessed from the first layer
        return "forward"
    return "ok"


def _task_forward(model: nn.Module) -> None:
    from slimkit.core.provenance import task_for

    task = task_for(model)
    if task is None:
        return
    with torch.inference_mode():
        task.forward(model, task.example_inputs(2))


def guess_inputs(model: nn.Module) -> torch.Tensor | None:
    """A batch of 2 for a graph or user model, from its first layer (Linear or Conv, quantized or not)."""
    for module in model.modules():
        if hasattr(module, "in_features"):
            return torch.randn(2, int(module.in_features))
        if hasattr(module, "in_channels"):
            kernel = getattr(module, "kernel_size", (3, 3))
            spatial = (8,) * (len(kernel) if isinstance(kernel, tuple | list) else 2)
            return torch.randn(2, int(module.in_channels), *spatial)
    return None


PHASE = ""   # "apply" while a recipe runs: the worker counts running out of time there as "slow"


def _recipe(path: Path) -> str:
    """Parse, check before any work, then run the recipe on a tiny model with a few labelled batches
    (what `slimkit compress` does, on a model small enough that any sane recipe takes well under 10 s)."""
    global PHASE
    from fuzz.tree_seeds import MLP_INPUT, tiny_mlp

    from slimkit.core.user_task import task_from
    from slimkit.pipeline.preflight import check_recipe
    from slimkit.pipeline.recipes import load_recipe, run_recipe

    plan = load_recipe(str(path))
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(16, MLP_INPUT[1], generator=g), torch.randint(0, 8, (16,), generator=g)) for _ in range(4)]
    model = tiny_mlp()
    task = task_from(data, None, model)
    check_recipe(model, plan, task)
    PHASE = "apply"   # left set if the worker's CPU timer interrupts the run (it resets it per case)
    try:
        run_recipe(model, plan, task)
    except Exception:
        PHASE = ""
        raise
    PHASE = ""
    return "ok"


def _hf(folder: Path) -> str:
    from slimkit.zoo.config_limits import position_limit
    from slimkit.zoo.resolve import resolve

    model = resolve(str(folder))
    config = getattr(model, "config", None)
    limit = position_limit(config.to_dict()) if config is not None else None
    vocab = int(getattr(config, "vocab_size", 2) or 2)
    tokens = min(MAX_TOKENS, limit or MAX_TOKENS)
    ids = torch.arange(tokens).remainder(max(1, vocab)).unsqueeze(0)
    with torch.inference_mode():
        model(input_ids=ids)
    return "ok"


def setup() -> None:
    """Quiet and single-threaded; warnings from loaders are not findings."""
    import logging
    import warnings

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
    except ImportError:
        pass


def kind_of(path: Path) -> str:
    """The kind of a corpus entry, from its name ("slim-...", "recipe-...", "hf-...")."""
    return path.name.split("-", 1)[0]


if __name__ == "__main__":   # replay corpus entries in this process: outcome, CPU seconds, peak RSS
    import resource
    import sys

    setup()
    for arg in sys.argv[1:]:
        entry = Path(arg)
        try:
            outcome = run(kind_of(entry), entry)
        except Exception as exc:  # noqa: BLE001 - shown, with its traceback below
            import traceback

            traceback.print_exc()
            outcome = f"FINDING {type(exc).__name__}: {str(exc)[:200]}"
        usage = resource.getrusage(resource.RUSAGE_SELF)
        print(f"{entry.name}: {outcome} ({usage.ru_utime + usage.ru_stime:.1f} s CPU, "
              f"peak RSS {usage.ru_maxrss >> 10} MB)")
