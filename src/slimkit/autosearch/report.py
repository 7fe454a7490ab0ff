"""report.html of a search, with its PNG plots next to it (and embedded in it).

>>> path, notes = write_report(folder, original, best_model, task, state, points, final)
"""

from __future__ import annotations

from pathlib import Path

import yaml
from torch import nn

from slimkit.autosearch.pareto import front
from slimkit.autosearch.plots import bits_per_layer, plot_apoz, plot_bits, plot_histograms, plot_pareto
from slimkit.eval.report import Report
from slimkit.pruning.report import apoz_report

KEY_OPTIONS = ("sparsity", "bits", "bias_bits", "ratio", "budget", "rank", "student", "head_ratio", "group_size",
               "embedding_bits", "finetune_epochs", "epochs", "targets", "ignore")


def recipe_line(stages: list[dict]) -> str:
    """`magnitude(sparsity=0.95, epochs=60) -> kmeans(bits=4, bias_bits=4)`."""
    if not stages:
        return "(no stage: the original, stored as .slim)"
    parts = []
    for s in stages:
        opts = ", ".join(f"{k}={s[k]}" for k in KEY_OPTIONS if k in s)
        parts.append(f"{s['method']}({opts})")
    return " -> ".join(parts)


def write_report(folder: Path, original: nn.Module, best: nn.Module | None, task, state: dict,
                 pts: list[dict], final: dict | None) -> tuple[Path, list[str]]:
    """Draw the plots into `folder`, write `folder/report.html`; (path, notes on plots skipped)."""

    notes: list[str] = []
    images: list[tuple[str, Path]] = []
    max_drop = state["max_drop_pts"]
    best_trial = final["trial"] if final else None

    def attempt(caption: str, draw) -> None:
        try:
            path = draw()
        except Exception as exc:   # a plot that cannot be drawn for this model is noted, not fatal
            notes.append(f"{caption}: not drawn ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
            return
        if path is not None:
            images.append((caption, Path(path)))

    attempt("Pareto fronts: size and latency against the validation score",
            lambda: plot_pareto(pts, state["baseline"], max_drop, best_trial, folder / "pareto.png",
                                state["score_name"]))
    if best is not None:
        attempt("Stored bits per parameter, layer by layer",
                lambda: plot_bits(bits_per_layer(original), bits_per_layer(best), folder / "bits.png"))
        attempt("Weight histograms, original and best (log counts)",
                lambda: plot_histograms(original, best, folder / "histograms.png"))
    attempt("APoZ per ReLU layer, original and best (Network Trimming's activation sparsity)",
            lambda: plot_apoz(_apoz_rows(original, task), _apoz_rows(best, task) if best is not None else [],
                              folder / "apoz.png"))
    page = _page(state, pts, final, images, notes)
    return page.write(folder / "report.html"), notes


def _apoz_rows(model: nn.Module, task) -> list[dict]:
    try:
        return apoz_report(model, task)
    except Exception:   # a model the tracer cannot follow (e.g. runtime modules) has no APoZ rows
        return []


def _page(state: dict, pts: list[dict], final: dict | None, images: list[tuple[str, Path]],
          notes: list[str]) -> Report:
    base, name = state["baseline"], state["score_name"]
    page = Report(f"slimkit search: {state['model']}")
    trials = [t for t in state["trials"]]
    counts = {s: sum(t["state"] == s for t in trials) for s in ("complete", "pruned", "failed")}
    facts = [("model", state["model"]), ("budget", f"validation {name} at most {state['max_drop_pts']:g} points "
                                                  "below the original"),
             ("candidates chosen on", state["validation"]),
             ("candidates", f"{len(trials)} ({counts['complete']} measured, {counts['pruned']} stopped early, "
                            f"{counts['failed']} failed)"),
             ("search time", f"{state.get('elapsed_s', 0):.0f} s"),
             ("original", f"{base['bytes']} bytes (fp32 safetensors), validation {name} {base['val_score']:.4f}, "
                          f"test {name} {base.get('test_score', float('nan')):.4f}")]
    if final:
        blat = base.get("latency_ms", {})
        facts += [("best.slim", f"{final['bytes']} bytes, {final['ratio']}x smaller than fp32"),
                  (f"validation {name}", f"{final['val_score']:.4f} ({-final['drop_pts']:+.2f} pt)"),
                  (f"test {name}", f"{final['test_score']:.4f} ({-final['test_drop_pts']:+.2f} pt)"),
                  ("latency (ms, batch 1 / 32, 1 thread)", f"{final['latency_ms']} / {final['latency_batched_ms']} "
                                                 f"(original {blat.get('batch1')} / {blat.get('batch32')})")]
    else:
        facts.append(("best.slim", "none: no candidate stayed within the budget"))
    page.facts("Result", facts)
    if final and final.get("cv_ucb_pts") is not None:
        facts_cv = (f"cross-validated drop {final['cv_drop_pts']:+.2f} pt, upper confidence bound "
                    f"{final['cv_ucb_pts']:.2f} pt (budget {state['max_drop_pts']:g})")
        page.facts("Certificate", [("best.slim", facts_cv)])
    page.text("The best is the smallest certified candidate. On builtin digits models: within the budget plus one "
              "image on the validation split, and by repeated k-fold cross-validation over the training split (fold "
              "baselines retrained, each fold held out from both, each image's outcomes averaged over the "
              "repeats) the upper confidence bound of the drop within the budget. On other models: within the "
              "budget on held-out data in its own run and in a "
              "second run with other training seeds (a small held-out set lets some candidates pass by luck). Its "
              "test score was measured once, at the end, and chose nothing.", note=True)
    if final:
        page.heading("Best recipe (best.yaml; rerun with slimkit compress --recipe best.yaml)")
        page.code(yaml.safe_dump(final["stages"], sort_keys=False) if final["stages"] else "[]")
    for caption, path in images[:1]:
        page.image(caption, path)
    edge = front(pts, "bytes")
    page.table("Pareto front (size vs validation score)",
               ["trial", "bytes", "ratio", f"val {name}", "drop (pt)", "2nd run / CV drop (pt)", "CV bound (pt)",
                "ms batch 1", "within budget", "recipe"],
               [[p["trial"], p["bytes"], p["ratio"], p["val_score"], p["drop_pts"],
                 p["confirm_drop_pts"] if p.get("cv_drop_pts") is None else p["cv_drop_pts"], p.get("cv_ucb_pts"),
                 p["latency_ms"], "yes, certified" if p["confirmed"] else "yes" if p["within_budget"] else "no",
                 recipe_line(p["stages"])] for p in edge])
    for caption, path in images[1:]:
        page.image(caption, path)
    if state.get("sensitivity"):
        page.table("Per-layer sensitivity (one layer compressed at a time, validation)",
                   ["layer", "probe", f"val {name}", "drop (pt)"],
                   [[r["layer"], r["probe"], r["score"], r["drop_pts"]] for r in state["sensitivity"]])
    elif state.get("sensitivity_note"):
        page.text(f"Per-layer sensitivity {state['sensitivity_note']}.", note=True)
    page.table("All candidates", ["trial", "state", "bytes", f"val {name}", "drop (pt)", "2nd run / CV drop (pt)",
                                  "CV bound (pt)", "seconds", "recipe / error"],
               [[t["number"], t["state"], t["bytes"], t["val_score"], t["drop_pts"],
                 (t.get("certificate") or {}).get("drop_pts", t.get("confirm_drop_pts")),
                 (t.get("certificate") or {}).get("ucb_pts"), t["seconds"],
                 t["error"] or recipe_line(t["stages"])] for t in trials[-300:]])
    for note in notes:
        page.text(note, note=True)
    return page
