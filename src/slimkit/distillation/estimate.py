"""Size estimate of `distill` for `slimkit inspect` (see `slimkit.io.sizing`): the student the
config would build, stored as float32."""

from __future__ import annotations

from slimkit.io.sizing import Note, Plan, estimates, note


@estimates("distill")
def _distill(plan: Plan, cfg, task) -> Note:
    student = cfg.make_student(plan.model, task)
    plan.replace_model(student)
    touched = {"(model)": f"student of {sum(p.numel() for p in student.parameters()):,} parameters"}
    return note(touched, {}, "exact: the student's float32 parameters")
