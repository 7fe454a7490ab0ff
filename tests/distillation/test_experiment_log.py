"""A long KD-vs-labels comparison keeps a log of finished runs and resumes from it."""

from __future__ import annotations

import json

from experiments.distill_kd_vs_labels import kd_vs_labels

COMMON = {"epochs": 1, "batch_size": 128, "weight_decay": 0.0, "epoch": "last"}
LABELS = ({"alpha": 0.0, "lr": 1e-2}, {"alpha": 0.0, "lr": 1e-2, "mixup": 0.4})
KD = ({"alpha": 0.5, "temperature": 1.0, "lr": 1e-2, "mixup": 0.4},)


def _compare(log):
    return kd_vs_labels(seeds=[0, 1], common=COMMON, labels_grid=LABELS, kd_grid=KD, log=str(log))


def test_runs_are_logged_seed_by_seed_and_an_interrupted_comparison_resumes(tmp_path):
    log = tmp_path / "runs.jsonl"
    first = _compare(log)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["seed"] for r in records] == [0, 0, 0, 1, 1, 1]  # every option of a seed before the next seed
    assert all(r["options"]["epochs"] == 1 and 0 <= r["test"] <= 1 for r in records)
    assert first["distilled"]["test"] == [r["test"] for r in records if r["options"].get("alpha") == 0.5]
    # interrupted after four runs: the rest is run again, with the same results
    log.write_text("".join(line + "\n" for line in log.read_text().splitlines()[:4]))
    resumed = _compare(log)
    assert len(log.read_text().splitlines()) == 6
    assert resumed["labels_only"]["grid_test"] == first["labels_only"]["grid_test"]
    assert resumed["distilled"]["test"] == first["distilled"]["test"]
    # logged runs are read, not redone
    edited = [json.loads(line) for line in log.read_text().splitlines()]
    for r in edited:
        r["test"] = 0.5
    log.write_text("".join(json.dumps(r) + "\n" for r in edited))
    assert _compare(log)["mean_distilled"] == 0.5


def test_a_validation_tie_goes_to_the_grid_entry_listed_last():
    from experiments.distill_kd_vs_labels import _arm

    grid = ({"mixup": 0.0}, {"mixup": 0.4})
    tied = [[{"val": 0.9, "test": 0.95}, {"val": 0.8, "test": 0.95}], [{"val": 0.85, "test": 0.97}] * 2]
    assert _arm(tied, grid)["options"] == {"mixup": 0.4}
    first_better = [[{"val": 0.9, "test": 0.95}] * 2, [{"val": 0.85, "test": 0.97}] * 2]
    chosen = _arm(first_better, grid)
    assert chosen["options"] == {"mixup": 0.0} and chosen["test"] == [0.95, 0.95]
