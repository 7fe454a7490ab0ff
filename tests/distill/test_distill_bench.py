"""Issue 6's targets, run by `make bench` (slow): distilled vs labels-only students on digits over
20 seeds, and MiniLM 6 -> 3 layers on unlabelled text."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.xfail(strict=False, reason="issue 6 open: on fresh seeds 100-119 KD led by +0.56 pt at 1.2 SE "
                   "(seeds 0-19, used while choosing settings, gave 2.5 SE)")
def test_distilled_student_beats_labels_only_by_two_standard_errors():
    from slimkit.distill.experiment import kd_vs_labels

    # Seeds 0-19 were used while choosing T, alpha and the student; judge on seeds never looked at.
    result = kd_vs_labels(seeds=range(100, 120))
    print(result["table"])
    assert result["teacher_accuracy"] - result["mean_labels_only"] > 0.02  # the gap is measurable
    assert result["student_params"] * 10 <= result["teacher_params"]
    assert result["mean_difference"] > 2 * result["se_difference"], result["table"]


@pytest.mark.skipif(not os.environ.get("SLIMKIT_LONG"), reason="a 30-minute run: set SLIMKIT_LONG=1")
@pytest.mark.xfail(strict=False, reason="issue 6 open: see the latest measurement in the issue notes")
def test_minilm_three_layers_keeps_the_teachers_embeddings():
    """The shipped distill-l3 recipe's settings, judged on the other-domain text it never saw."""
    from slimkit.distill.experiment import minilm_l3
    from slimkit.recipes import load_recipe

    stage = load_recipe("distill-l3").stages[0]
    result = minilm_l3(keep=stage.keep, options=stage.model_dump(mode="json"))
    print({k: v for k, v in result.items() if k != "history"})
    assert result["train_seconds"] <= 1800
    assert result["speedup"] >= 1.9
    assert result["fidelity_after"] >= 0.90, result["fidelity_after"]
