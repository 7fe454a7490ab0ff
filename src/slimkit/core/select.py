"""Module selection the way the ecosystem does it: an exact dotted name, `"re:<regex>"`, or a
`filter_fn(module, name) -> bool`.

>>> select_modules(model, ["fc1", "re:fc[23]"], types=(nn.Linear,))
[('fc1', Linear(...)), ('fc2', Linear(...)), ('fc3', Linear(...))]
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from torch import nn

from slimkit.core.errors import SlimError

FilterFn = Callable[[nn.Module, str], bool]


def matches(name: str, pattern: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return name == pattern


def select_modules(model: nn.Module, targets: str | Sequence[str] | None = None,
                   types: tuple[type[nn.Module], ...] = (nn.Module,),
                   filter_fn: FilterFn | None = None, ignore: Sequence[str] = ()) -> list[tuple[str, nn.Module]]:
    """Modules of `types` chosen by `targets` (all when None) and `filter_fn`, minus `ignore`.

    Raises SlimError when an explicit target matches no module of the right type.
    """
    patterns = [targets] if isinstance(targets, str) else list(targets or [])
    for p in patterns:
        if p.startswith("re:"):
            try:
                re.compile(p[3:])
            except re.error as exc:
                raise SlimError(f"invalid module regex {p!r}: {exc}") from None
    chosen = []
    used = set()
    for name, module in model.named_modules():
        if not name or not isinstance(module, types):
            continue
        hit = [p for p in patterns if matches(name, p)]
        if patterns and not hit:
            continue
        if any(matches(name, p) for p in ignore):
            continue
        if filter_fn is not None and not filter_fn(module, name):
            continue
        used.update(hit)
        chosen.append((name, module))
    unused = [p for p in patterns if p not in used]
    if unused:
        kinds = "/".join(t.__name__ for t in types)
        raise SlimError(f"module selector {unused[0]!r} matches no {kinds} module in the model")
    return chosen
