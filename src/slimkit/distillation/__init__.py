"""Knowledge distillation: losses (KD, hints, attention), students derived from the teacher, a
DDP-ready training loop, and the `distill` method.

>>> from slimkit.distillation import DistillConfig, distill, shrink_mlp
>>> student = distill(teacher, shrink_mlp(teacher, (32, 16)), task, DistillConfig(epochs=60))
>>> student = distill(teacher, pruned_student(teacher, ratio=0.9), task, DistillConfig(epochs=60))
"""

from slimkit.distillation import (
    estimate,  # noqa: F401  (registers the size estimate)
    recovery,  # noqa: F401  (registers recover)
    streaming,  # noqa: F401  (registers its streaming refusal)
)
from slimkit.distillation.api import DistillConfig, distill
from slimkit.distillation.students import keep_layers, pruned_student, shrink_mlp, zoo_student
from slimkit.train.loop import LoopSettings, fit

__all__ = ["DistillConfig", "LoopSettings", "distill", "fit", "keep_layers", "pruned_student", "shrink_mlp",
           "zoo_student"]
