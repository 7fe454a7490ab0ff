"""`slimkit export FILE.slim --onnx OUT.onnx` (checked against ONNX Runtime) or `--gguf OUT.gguf` (llama.cpp)."""

from __future__ import annotations

from pathlib import Path

import typer

from slimkit.cli import common, user_ref
from slimkit.core.errors import SlimError
from slimkit.export.gguf import TARGETS, export_gguf
from slimkit.export.onnx import export


def export_cmd(model: str = typer.Argument(..., help=f"A .slim file, or {user_ref.MODEL_HELP}"),
               onnx: Path | None = typer.Option(None, "--onnx", help="Output .onnx file."),
               gguf: Path | None = typer.Option(None, "--gguf", help="Output .gguf file for llama.cpp "
                                                "(Llama-family causal LMs)."),
               gguf_type: str = typer.Option("f16", "--gguf-type", help="GGUF type of the weights that do not "
                                             f"keep their slimkit codes: {', '.join(TARGETS)}."),
               tokenizer: Path | None = typer.Option(None, "--tokenizer", help="GGUF: the Hugging Face folder "
                                                     "whose tokenizer the file carries (a .slim made from a "
                                                     "folder: that folder)."),
               force: bool = typer.Option(False, "--force", help="Replace the output file if it exists."),
               as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
               plain_float: bool = typer.Option(False, "--float",
                                                help="ONNX: write every layer as decoded fp32 (no int8 ops)."),
               data: str | None = typer.Option(None, "--data", help="Example inputs for a model of your own: "
                                               + user_ref.DATA_HELP),
               ) -> None:
    """Export to ONNX (and print ONNX Runtime's parity with slimkit) or to GGUF for llama.cpp.

    MODEL or --data given as file.py:NAME or package.module:NAME imports and runs that Python code.

    ONNX: int8 linears and quantized embeddings stay integer in the graph (MatMulInteger, uint8 Gather),
    weight-only codes, k-means and pruned weights are stored as small codes decoded in the graph,
    unless --float is given; other codecs are written as decoded fp32 weights.

    GGUF: slimkit codes that a GGML block holds keep their codes (int8 -> Q8_0, symmetric 4-bit -> Q4_0,
    asymmetric 4-bit -> Q4_1, groups a multiple of 32); other weights are written as --gguf-type, and
    the report says which tensors were re-quantized and by how much they differ. The tokenizer comes
    from --tokenizer, else the source GGUF (builtin:smollm2) or the Hugging Face folder MODEL names."""

    if (onnx is None) == (gguf is None):
        raise SlimError("give exactly one of --onnx OUT.onnx or --gguf OUT.gguf")
    if tokenizer is not None and (gguf is None or not tokenizer.is_dir()):
        raise SlimError("--tokenizer is for --gguf" if gguf is None else f"--tokenizer {tokenizer}: no such folder")
    out = onnx or gguf
    inputs = [model, *filter(None, (user_ref.reference_file(r) for r in (model, data or "")))]
    common.check_out_path(out, inputs, force, flag="--onnx" if onnx else "--gguf")
    if gguf is not None:
        _gguf(model, gguf, gguf_type, force, as_json, tokenizer)
        return
    with common.status(f"loading {model}"):
        net, task = user_ref.model_and_task(model, data, need="exporting" if user_ref.is_reference(model) else None)
    with common.status("exporting and checking in ONNX Runtime"):
        report = export(net, onnx, task=task, integer=not plain_float, overwrite=force)
    if as_json:
        common.emit_json(report)
        return
    layers, coded = report["integer_layers"], report["coded_weights"]
    ints = f", {layers} layer{'s' * (layers != 1)} as integer ops" if layers else ""
    ints += f", {coded} weight{'s' * (coded != 1)} stored as codes" if coded else ""
    common.say(f"wrote {onnx} ({common.fmt_bytes(report['bytes'])}{ints}); ONNX Runtime vs slimkit: "
                     f"max abs diff {report['max_abs_diff']:.3g}, cosine {report['cosine']:.6f}")


def _gguf(model: str, out: Path, gguf_type: str, force: bool, as_json: bool, tokenizer: Path | None) -> None:
    if gguf_type.lower() not in TARGETS:
        raise SlimError(f"--gguf-type must be one of {', '.join(TARGETS)}, got {gguf_type!r}")
    with common.status(f"loading {model}"):
        net = user_ref.load_model(model)
    with common.status("writing GGUF"):
        report = export_gguf(net, out, qtype=gguf_type.lower(), overwrite=force, tokenizer=tokenizer)
    if as_json:
        common.emit_json(report)
        return
    groups: dict[tuple[str, str], list[dict]] = {}
    for rec in report["tensors"]:
        groups.setdefault((rec["how"], rec["type"]), []).append(rec)
    rows = [[how, qtype, len(recs), f"{max(r['max_abs_err'] for r in recs):.3g}",
             ", ".join(r["name"] for r in recs[:3]) + (", ..." if len(recs) > 3 else "")]
            for (how, qtype), recs in sorted(groups.items())]
    common.out.print(common.table(f"slimkit export {model} --gguf {out}",
                                  ["how", "GGUF type", "tensors", "max abs diff to slimkit", "e.g."], rows))
    types = ", ".join(f"{n} {t}" for t, n in sorted(report["types"].items()))
    common.say(f"wrote {out} ({common.fmt_bytes(report['bytes'])}: {types}; {report['exact']} exact, "
               f"{report['codes_kept']} codes kept (scales or minimums rounded to fp16), "
               f"{report['requantized']} re-quantized; "
               f"{_vocab_line(report['vocab'])})")
    if report["vocab"]["note"]:
        common.say(f"tokenizer: {report['vocab']['note']}")


def _vocab_line(vocab: dict) -> str:
    if vocab["model"] == "none":
        return "no tokenizer (token ids only)"
    if str(vocab["source"]).endswith(".gguf"):
        return "tokenizer from the source GGUF"
    kind = {"gpt2": "BPE", "llama": "SentencePiece"}.get(vocab["model"], vocab["model"])
    pre = f", pre-tokenizer {vocab['pre']!r}" if vocab["model"] == "gpt2" else ""
    return f"{kind} tokenizer from {vocab['source']}: {vocab['tokens']} tokens{pre}"


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)
