"""Model surgery shared by all methods: replace modules, record edits, describe modules as JSON."""

from slimkit.surgery.edits import (
    compact_edits,
    edit_log,
    get_submodule,
    register_op,
    replace_module,
    replay_edits,
    set_attr,
)
from slimkit.surgery.specs import from_spec, register_module, to_spec

__all__ = [
    "compact_edits", "edit_log", "from_spec", "get_submodule", "register_module", "register_op",
    "replace_module", "replay_edits", "set_attr", "to_spec",
]
