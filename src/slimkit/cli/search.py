"""`slimkit search MODEL --max-drop PTS [--budget 20m] --out DIR`: the smallest artifact within an
accuracy budget, a Pareto front and an HTML report, within a time budget. Rerun to resume.

Exit codes: 0 when best.slim is written (certified, or not certified with the reason on a
`warning:` line), 3 when even best.slim lost more than --max-drop on validation, 2 for a bad
argument, 130 after Ctrl-C."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from slimkit.autosearch import search
from slimkit.autosearch.budget import fmt_duration, parse_duration
from slimkit.autosearch.certify import Certification
from slimkit.cli import common, user_ref
from slimkit.core.text import clean


def search_cmd(model: str = typer.Argument(..., help=user_ref.MODEL_HELP + "; a model of your own needs --data"),
               max_drop: float = typer.Option(..., "--max-drop", help="Largest allowed drop of the validation "
                                                                      "score, in points (0.5 = half a point)."),
               budget: str = typer.Option("20m", "--budget", help="Time budget of the whole run, with its "
                                                                  "unit: 90s, 20m, 1h, 1h30m."),
               out: Path = typer.Option(Path("slimkit-search"), "--out", "-o",
                                        help="Output folder (an existing search folder is resumed)."),
               trials: int | None = typer.Option(None, "--trials", help="Stop after this many candidates."),
               effort: float = typer.Option(1.0, "--effort", help="Scale of the training epochs (0.2 = 5x fewer)."),
               seed: int = typer.Option(0, "--seed", help="Seed of the sampler."),
               folds: int = typer.Option(10, "--folds", help="Cross-validation folds that certify the best "
                                                             "(builtin digits models)."),
               confidence: float = typer.Option(0.9, "--confidence", help="One-sided confidence of the upper "
                                                                          "bound of the drop a certified best keeps "
                                                                          "within --max-drop."),
               repeats: int = typer.Option(3, "--repeats", help="Cross-validation repeats (other fold partitions; "
                                                                "outcomes averaged per image: a sharper bound)."),
               method: list[str] | None = typer.Option(
                   None, "--method", help="Search only this registered method (repeatable); default: the "
                                          "curated space of builtin models."),
               as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
               data: str | None = typer.Option(None, "--data", help=user_ref.DATA_HELP),
               ) -> None:
    """Search recipes across all families under a time budget; keep the smallest within --max-drop.

    MODEL or --data given as file.py:NAME or package.module:NAME imports and runs that Python code."""

    budget_s = parse_duration(budget)
    common.check_out_folder(out)
    certification = Certification(folds=folds, confidence=confidence, repeats=repeats)
    net, task = _model_and_task(model, data)
    with _Display(budget_s) as display:
        result = search(net, max_drop=max_drop, out=out, budget=budget_s, max_trials=trials, seed=seed,
                        effort=effort, on_trial=display.update, certification=certification,
                        methods=list(method) if method else None, data=task,
                        command=[model, "--data", data] if data is not None else [model])
    summary = {"out": str(out), "candidates": len(result.trials), "best": result.best,
               "certified": result.certified, "reason": result.reason,
               "front": len(result.front), "report": str(result.report) if result.report else None,
               "interrupted": result.interrupted}
    if as_json:
        common.emit_json(summary)
    else:
        _print(result, max_drop)
    if result.interrupted:   # the outputs so far are written; 130 as for any command stopped by Ctrl-C
        raise SystemExit(130)
    if result.best is not None and not result.best["within_budget"]:
        raise SystemExit(3)


def _model_and_task(model: str, data: str | None):
    """(model, task) for `search`: a reference string as it is (the search folder records it), or
    your model loaded and the task made from --data (`sk.search(model, data=..., metric=...)`)."""
    if not user_ref.is_reference(model) and data is None:
        return model, None
    with common.status(f"loading {model}"):
        return user_ref.model_and_task(model, data, need="searching")


def _print(result, max_drop: float) -> None:
    best, base = result.best, result.baseline
    if best:
        test = best["test_drop_pts"]
        common.say(
            f"best: {result.folder / 'best.slim'}: {common.fmt_bytes(best['bytes'])}, {best['ratio']}x smaller "
            f"than fp32 {common.fmt_bytes(base['bytes'])}; validation {best['val_score']:.4f} "
            f"({-best['drop_pts']:+.2f} pt), test {best['test_score']:.4f} "
            f"({'-' if test is None else f'{-test:+.2f}'} pt)")
        if result.certified and best.get("cv_ucb_pts") is not None:
            common.say(f"certified: cross-validated drop {best['cv_drop_pts']:+.2f} pt, upper bound "
                       f"{best['cv_ucb_pts']:.2f} pt <= {max_drop:g}")
        elif result.certified:
            common.say(f"certified: a second run with other training seeds stayed within {max_drop:g} pt")
        else:
            common.warn(f"best.slim is NOT certified: {result.reason}")
    for note in result.notes:
        if not note.startswith("best.slim is not certified"):   # said above, as a warning
            common.say(f"note: {note}")
    common.say(f"{len(result.trials)} candidates, Pareto front of {len(result.front)}; "
               f"report: {result.report}")


class _Display:
    """A progress bar over the time budget, with the trial count and the best so far; one line per
    candidate above it. Silent with --quiet; plain lines when stderr is not a terminal."""

    def __init__(self, budget_s: float):
        self.budget_s = budget_s
        self.progress = None
        self.task = None

    def __enter__(self) -> _Display:
        if not common.STATE.quiet and common.console.is_terminal:
            self.progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(), TimeElapsedColumn(),
                                     console=common.console, transient=True)
            self.progress.start()
            self.task = self.progress.add_task("searching (per-layer sensitivity first)", total=self.budget_s)
        else:
            common.info("searching (per-layer sensitivity first)")
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    def update(self, p) -> None:
        r = p.record
        ratio = f"{p.baseline_bytes / r.bytes:.1f}x" if r.bytes else "-"
        drop = f"{-r.drop_pts:+.2f} pt" if r.drop_pts is not None else "-"
        what = {"complete": f"{ratio}, val {drop}", "pruned": f"stopped after stage {r.stopped_after}, val {drop}",
                "failed": f"failed: {r.error}"}[r.state]
        best = (f"best {p.baseline_bytes / p.best.bytes:.1f}x ({common.fmt_bytes(p.best.bytes)}, "
                f"val {-p.best.drop_pts:+.2f} pt)") if p.best else "nothing certified yet"
        best += f" | {fmt_duration(max(0.0, p.budget_s - p.elapsed_s))} left"
        common.info(f"trial {r.number}: {what} in {r.seconds:.1f} s{_certification(r)}", style="dim")
        if self.progress is not None:
            self.progress.update(self.task, completed=min(p.elapsed_s, self.budget_s),
                                 description=clean(f"trial {p.total} | {best}"))


def _certification(r) -> str:
    """`; certified (bound 0.31 pt, 1m12s)` and the like, for a candidate certified right after it ran."""
    cert = r.certificate
    if cert is not None:
        took = fmt_duration(cert.get("seconds", 0.0))
        if cert.get("stopped") is None:
            return f"; cross-validated bound {cert['ucb_pts']:.2f} pt in {took}"
        return f"; certification stopped ({cert['stopped']}) in {took}"
    if r.cert_note:
        return f"; {r.cert_note}"
    if r.confirm_drop_pts is not None:
        return f"; second run {-r.confirm_drop_pts:+.2f} pt"
    return ""


def register(app: typer.Typer) -> None:
    app.command("search")(search_cmd)
