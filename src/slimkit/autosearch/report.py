"""report.html of a search, with its PNG plots next to it (and embedded in it).

Every statement on the page comes from the same outcome (`slimkit.autosearch.outcome`): best.slim
is called certified only if it is, and when it is not, the page says why. Each front candidate has
its file, its exact recipe and the command that reproduces it.

>>> path, notes = write_report(folder, original, best_model, task, state, points, final)
"""

from __future__ import annotations

import time
from pathlib import Path

from torch import nn

from slimkit.autosearch.budget import fmt_duration
from slimkit.autosearch.outcome import standing, status
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
                 pts: list[dict], final: dict | None, deadline: float | None = None,
                 original_apoz: list[dict] | None = None) -> tuple[Path, list[str]]:
    """Draw the plots into `folder`, write `folder/report.html`; (path, notes on plots skipped).
    Past `deadline` (`time.monotonic()`), only the Pareto plot is drawn. `original_apoz`: the
    original's APoZ rows, if already computed."""

    notes: list[str] = []
    images: list[tuple[str, Path]] = []
    max_drop = state["max_drop_pts"]
    best_trial = final["trial"] if final else None
    label = "best.slim" + ("" if final is None else " (certified)" if final["certified"] else " (not certified)")

    def attempt(caption: str, draw, optional: bool = True) -> None:
        if optional and deadline is not None and time.monotonic() > deadline:
            notes.append(f"{caption}: not drawn, the time budget had run out")
            return
        try:
            path = draw()
        except Exception as exc:   # a plot that cannot be drawn for this model is noted, not fatal
            notes.append(f"{caption}: not drawn ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
            return
        if path is not None:
            images.append((caption, Path(path)))

    attempt("Pareto fronts: size and latency against the validation score",
            lambda: plot_pareto(pts, state["baseline"], max_drop, best_trial, folder / "pareto.png",
                                state["score_name"], best_label=label), optional=False)
    if best is not None:
        attempt("Stored bits per parameter, layer by layer",
                lambda: plot_bits(bits_per_layer(original), bits_per_layer(best), folder / "bits.png"))
        attempt("Weight histograms, original and best (log counts)",
                lambda: plot_histograms(original, best, folder / "histograms.png"))
    attempt("APoZ per ReLU layer, original and best (Network Trimming's activation sparsity)",
            lambda: plot_apoz(apoz_rows(original, task) if original_apoz is None else original_apoz,
                              apoz_rows(best, task) if best is not None else [], folder / "apoz.png"))
    page = _page(folder, state, pts, final, images, notes)
    return page.write(folder / "report.html"), notes


def apoz_rows(model: nn.Module, task) -> list[dict]:
    """`slimkit.pruning.report.apoz_report` rows, or [] for a model it cannot follow."""
    try:
        return apoz_report(model, task)
    except Exception:   # a model the tracer cannot follow (e.g. runtime modules) has no APoZ rows
        return []


def _page(folder: Path, state: dict, pts: list[dict], final: dict | None, images: list[tuple[str, Path]],
          notes: list[str]) -> Report:
    base, name, max_drop = state["baseline"], state["score_name"], state["max_drop_pts"]
    page = Report(f"slimkit search: {state['model']}")
    trials = state["trials"]
    counts = {s: sum(t["state"] == s for t in trials) for s in ("complete", "pruned", "failed")}
    facts = [("model", state["model"]),
             ("accuracy budget", f"validation {name} at most {max_drop:g} points below the original"),
             ("time budget", f"{fmt_duration(state['budget_s'])} for this call" if state.get("budget_s") else "-"),
             ("search time", f"{fmt_duration(state.get('elapsed_s', 0))} over all calls on this folder"),
             ("candidates chosen on", state["validation"]),
             ("candidates", f"{len(trials)} ({counts['complete']} measured, {counts['pruned']} stopped early, "
                            f"{counts['failed']} failed)"),
             ("original", f"{base['bytes']} bytes (fp32 safetensors), validation {name} {base['val_score']:.4f}, "
                          f"test {name} {base.get('test_score', float('nan')):.4f}")]
    if final:
        blat = base.get("latency_ms", {})
        test = final["test_drop_pts"]
        facts += [("best.slim", f"{final['bytes']} bytes, {final['ratio']}x smaller than fp32, {status(final)}"),
                  (f"validation {name}", f"{final['val_score']:.4f} ({-final['drop_pts']:+.2f} pt)"),
                  (f"test {name}", f"{final['test_score']:.4f} ({'-' if test is None else f'{-test:+.2f}'} pt)"),
                  ("latency (ms, batch 1 / 32, 1 thread)",
                   f"{final['latency_ms']} / {final['latency_batched_ms']}, measured again at the end (original "
                   f"{blat.get('batch1')} / {blat.get('batch32')}, at the start; the tables show each candidate's "
                   "own measurement)")]
        if final.get("cv_ucb_pts") is not None:
            facts.append(("cross-validation", f"drop {final['cv_drop_pts']:+.2f} pt, upper confidence bound "
                                              f"{final['cv_ucb_pts']:.2f} pt (budget {max_drop:g})"))
    page.facts("Result", facts)
    page.text("best.slim is the smallest certified candidate. On builtin digits models a candidate is certified when "
              "it is within the budget plus one image on the validation split and, by repeated k-fold "
              "cross-validation over the training split (fold baselines retrained, each fold held out from both, "
              "each image's outcomes averaged over the repeats), the upper confidence bound of its drop is within "
              "the budget. On other models: within the budget on held-out data in its own run and in a second run "
              "with other training seeds. Certification is planned inside the time budget; when no candidate could "
              "be certified, best.slim holds the smallest candidate within the budget on validation, marked not "
              "certified with the reason. Test scores were measured once, at the end, and chose nothing.", note=True)
    if final:
        page.heading("best.slim's recipe (best.yaml)")
        if final["trial"] is None:
            page.text("No candidate finished: best.slim is the original model, uncompressed.")
        else:
            page.code(_read(folder / "best.yaml"))
    for caption, path in images[:1]:
        page.image(caption, path)
    edge = front(pts, "bytes")
    page.table("Pareto front (size vs validation score)",
               ["trial", "bytes", "ratio", f"val {name}", "drop (pt)", "2nd run / CV drop (pt)", "CV bound (pt)",
                "ms batch 1", "standing", "file"],
               [[p["trial"], p["bytes"], p["ratio"], p["val_score"], p["drop_pts"],
                 p["confirm_drop_pts"] if p.get("cv_drop_pts") is None else p["cv_drop_pts"], p.get("cv_ucb_pts"),
                 p["latency_ms"], standing(p), p.get("file")] for p in edge])
    _candidates(page, edge + [p for p in front(pts, "latency_ms") if p not in edge])
    for caption, path in images[1:]:
        page.image(caption, path)
    if state.get("sensitivity"):
        page.table("Per-layer sensitivity (one layer compressed at a time, validation)",
                   ["layer", "probe", f"val {name}", "drop (pt)"],
                   [[r["layer"], r["probe"], r["score"], r["drop_pts"]] for r in state["sensitivity"]])
    elif state.get("sensitivity_note"):
        page.text(f"Per-layer sensitivity {state['sensitivity_note']}.", note=True)
    page.table("All candidates", ["trial", "state", "bytes", f"val {name}", "drop (pt)", "2nd run / CV drop (pt)",
                                  "CV bound (pt)", "certification", "seconds", "recipe / error"],
               [[t["number"], t["state"], t["bytes"], t["val_score"], t["drop_pts"],
                 (t.get("certificate") or {}).get("drop_pts", t.get("confirm_drop_pts")),
                 (t.get("certificate") or {}).get("ucb_pts"), _certification(t, max_drop), t["seconds"],
                 t["error"] or recipe_line(t["stages"])] for t in trials[-300:]])
    for note in notes:
        page.text(note, note=True)
    return page


def _candidates(page: Report, pts: list[dict]) -> None:
    """Each front candidate: its file, its exact recipe and the command that reproduces it."""
    if not pts:
        return
    page.heading("Front candidates: file, recipe, command")
    for p in pts:
        page.text(f"Trial {p['trial']}: {p['bytes']} bytes, {p['ratio']}x, validation {-p['drop_pts']:+.2f} pt, "
                  f"{standing(p)}. File: {p.get('file') or '(not kept)'}; recipe: {p.get('recipe', '-')}")
        if p.get("recipe"):
            page.code(_read(Path(p["recipe"])))
        if p.get("command"):
            page.code(p["command"])


def _certification(t: dict, max_drop: float) -> str:
    """One cell: how a candidate's certification went."""
    cert = t.get("certificate")
    if cert is not None:
        if cert.get("stopped") == "time":
            return f"ran out of time ({cert['folds']}/{cert['of']} folds)"
        if cert.get("stopped") == "error":
            return "failed"
        if cert.get("stopped") == "futile":
            return f"stopped: out of reach ({cert['folds']}/{cert['of']} folds)"
        ok = cert.get("ucb_pts") is not None and cert["ucb_pts"] <= max_drop + 1e-9
        return f"{'certified' if ok else 'not certified'}: bound {cert['ucb_pts']:.2f}"
    if t.get("cert_stopped") == "time":
        return "not started: no time" if "not started" in (t.get("cert_note") or "") else "ran out of time"
    if t.get("cert_stopped") == "error":
        return "failed"
    if t.get("confirm_drop_pts") is not None:
        return f"second run {t['confirm_drop_pts']:+.2f} pt"
    return "-"


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return "(missing)"
