"""slimkit search on lenet-300-100 with a tiny budget: the folder, best.slim within the budget on
validation, a non-dominated pareto.json, a self-contained report, resume and interruption."""

from __future__ import annotations

import json

import pytest
import torch

import slimkit as sk
from slimkit.autosearch import search
from slimkit.autosearch.certify import Certification, certified
from slimkit.autosearch.pareto import dominated
from slimkit.zoo.digits_task import DigitsTask

# Cheap candidates: a tenth of the shipped epochs (they lose ~9-11 points on validation, ~18-37 on the
# two folds' baselines trained on half the images in 20 epochs), and a budget wide enough that they fit.
FAST = {"max_drop": 40.0, "budget": "10m", "effort": 0.1, "certification": Certification(folds=2, repeats=1)}
PLOTS = ("pareto.png", "bits.png", "histograms.png", "apoz.png")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Candidates train with one thread: on a shared 2-core machine two threads are ~4x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def searched(tmp_path_factory, lenet_trained, quick_folds):
    out = tmp_path_factory.mktemp("search") / "lenet"
    result = search("builtin:lenet-300-100", out=out, max_trials=2, **FAST)
    return out, result


def test_folder_holds_every_output(searched):
    out, result = searched
    for name in ("best.slim", "best.yaml", "pareto.json", "search.json", "report.html", *PLOTS):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert len(result.trials) == 2
    assert not list(out.glob("**/*.tmp"))


def test_best_is_the_smallest_within_the_budget_on_validation(searched):
    out, result = searched
    doc = json.loads((out / "pareto.json").read_text())
    model = sk.load(out / "best.slim")
    val = DigitsTask().validation_score(model)
    base = doc["baseline"]["val_score"]
    slack = 100 / len(DigitsTask().data.val)        # the screen allows one validation image more
    assert (base - val) * 100 <= FAST["max_drop"] + slack + 1e-6
    assert abs(val - doc["best"]["val_score"]) < 1e-6
    assert doc["best"]["bytes"] == (out / "best.slim").stat().st_size < doc["baseline"]["bytes"] / 5
    fits = [t for t in json.loads((out / "search.json").read_text())["trials"]
            if t["state"] == "complete" and t["drop_pts"] <= FAST["max_drop"] + slack
            and certified(t["certificate"], FAST["max_drop"])]
    assert doc["best"]["bytes"] == min(t["bytes"] for t in fits)
    assert doc["best"]["test_score"] == pytest.approx(DigitsTask().score(model), abs=1e-6)
    assert result.best["trial"] == doc["best"]["trial"] and doc["best"]["confirmed"]
    cert = next(t["certificate"] for t in json.loads((out / "search.json").read_text())["trials"]
                if t["number"] == result.best["trial"])
    assert cert["folds"] == 2 and cert["images"] == len(DigitsTask().data.train)
    assert doc["best"]["cv_ucb_pts"] == cert["ucb_pts"] <= FAST["max_drop"]
    assert "cross-validation" in doc["chosen_on"]


def test_pareto_points_are_non_dominated(searched):
    out, _ = searched
    doc = json.loads((out / "pareto.json").read_text())
    trials = json.loads((out / "search.json").read_text())["trials"]
    for key, cost in (("front", "bytes"), ("latency_front", "latency_ms")):
        pts = doc[key]
        assert pts
        assert all(not dominated(p, q, cost) for p in pts for q in pts if p is not q)
        assert [p[cost] for p in pts] == sorted(p[cost] for p in pts)
    measured = [t for t in trials if t["state"] == "complete"]
    for t in measured:   # every measured candidate is on the front or beaten by a point of it
        p = {"bytes": t["bytes"], "val_score": t["val_score"]}
        assert t["number"] in {q["trial"] for q in doc["front"]} or \
            any(dominated(p, q, "bytes") or (q["bytes"], q["val_score"]) == (p["bytes"], p["val_score"])
                for q in doc["front"])


def test_report_is_one_self_contained_file(searched):
    out, _ = searched
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert page.count('src="data:image/png;base64,') >= len(PLOTS)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "builtin:lenet-300-100" in page and "Pareto front" in page


def test_best_recipe_reruns(searched):
    out, _ = searched
    recipe = sk.load_recipe(str(out / "best.yaml"))
    assert [s.method for s in recipe.stages] == [s["method"] for s in
                                                json.loads((out / "pareto.json").read_text())["best"]["stages"]]


def test_interrupted_search_keeps_its_best_and_resumes(tmp_path, lenet_trained, quick_folds):
    out = tmp_path / "s"

    def stop(progress):
        raise KeyboardInterrupt

    first = search("builtin:lenet-300-100", out=out, max_trials=3, on_trial=stop, **FAST)
    assert first.interrupted and len(first.trials) == 1
    state = json.loads((out / "search.json").read_text())
    assert len(state["trials"]) == 1 and (out / "pareto.json").is_file()
    if first.best is not None:
        assert (out / "best.slim").stat().st_size == first.best["bytes"]
    second = search("builtin:lenet-300-100", out=out, max_trials=1, **FAST)
    assert not second.interrupted
    after = json.loads((out / "search.json").read_text())["trials"]
    assert [t.number for t in second.trials] == [t["number"] for t in after] == [0, 1]
    assert (after[0]["params"], after[0]["bytes"]) == (state["trials"][0]["params"], state["trials"][0]["bytes"])
    assert after[1]["params"] != after[0]["params"]
    assert json.loads((out / "pareto.json").read_text())["candidates"] == 2


def test_a_failed_first_call_leaves_a_folder_the_next_call_accepts(tmp_path, monkeypatch, lenet_trained,
                                                                  quick_folds):
    import importlib

    run = importlib.import_module("slimkit.autosearch.run")   # sk.search is the function, not the package

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    out = tmp_path / "s"
    monkeypatch.setattr(run, "_new_state", broken)
    with pytest.raises(RuntimeError):
        search("builtin:lenet-300-100", out=out, max_trials=1, **FAST)
    assert out.is_dir() and not (out / "search.json").exists()
    monkeypatch.undo()
    assert len(search("builtin:lenet-300-100", out=out, max_trials=1, **FAST).trials) == 1


def test_a_folder_of_another_model_is_refused(searched):
    out, _ = searched
    with pytest.raises(sk.SlimError, match="holds a search of builtin:lenet-300-100"):
        search("builtin:lenet5", out=out, max_trials=1, **FAST)


def test_every_front_candidate_has_its_file_recipe_and_command(searched, lenet_trained):
    import html
    from pathlib import Path

    from slimkit.autosearch.guide import fresh_copy

    out, result = searched
    doc = json.loads((out / "pareto.json").read_text())
    page = html.unescape((out / "report.html").read_text())
    assert doc["best"]["certified"] is result.certified is True and doc["best"]["reason"] is None
    for p in doc["front"] + doc["latency_front"]:
        recipe = Path(p["recipe"])
        assert Path(p["file"]).is_file() and recipe.read_text().startswith("description:")
        rerun = out / f"rerun-{p['trial']:04d}.slim"
        assert p["command"] == f"slimkit compress builtin:lenet-300-100 --recipe {recipe} --out {rerun}"
        assert p["command"] in page and recipe.read_text() in page
    first = doc["front"][0]       # the exact recipe reproduces the artifact
    task = DigitsTask()
    again = sk.run_recipe(fresh_copy(lenet_trained), sk.load_recipe(first["recipe"]), task).eval()
    with torch.no_grad():
        x = task.data.test.x
        assert torch.allclose(again(x), sk.load(first["file"], runtime="torch")(x), atol=1e-5)
