"""Generated hostile inputs of issue 22, one per class, for `make check-safety` (tools/check_safety.py).

Each case builds its files in a fresh folder and names the command that must refuse them: a
`slimkit` command line run as its own process, or a short Python driver for what the CLI cannot
reach (a file truncated while it is read). Every case must end with exit code 2 and a one-line
`slimkit: error:` (no traceback, no "internal error") within `LIMIT_S` seconds of CPU time (the
wall clock on a shared machine measures the neighbours; a case still running after `WALL_LIMIT_S`
is killed), its peak RSS at most max(500 MB, 4x the input's size); some check more (the input
unchanged, nothing left behind). One case ends with exit 0 by design: a manifest's `base.path` is
ignored, not refused, and the check is that the file it names is never read. `race` starts two
compresses to one new `--out` at once: exactly one may succeed.

Over 400 lines: the harness (`Case`, running a case as a process, its CPU / RSS / leftover checks)
and the first cases share this file; later cases live in `tools/hostile_more.py`.

    .venv/bin/python tools/hostile_cases.py            # the table of these cases alone

`tools/hostile_more.py` holds the rest of the classes (limits from real bytes, YAML types, export
temporary files, the umask, numerics), built with the helpers here.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT / "fuzz" / "corpus" / "seeds"
LIMIT_S = 10.0          # CPU seconds per case
WALL_LIMIT_S = 90.0     # wall seconds before a case counts as hung and is killed
RSS_FLOOR = 500 << 20


@dataclass
class Case:
    name: str                                  # the row's label
    argv: list[str]                            # `slimkit ARGS` or ["python", "-c", DRIVER, ...]
    inputs: list[Path] = field(default_factory=list)   # their total size sets the RSS bound
    check: Callable[[str], str | None] | None = None   # extra check of stdout and files: None, or what is wrong
    expect: int = 2
    input_bytes: int | None = None             # in place of the inputs' sizes (files that shrink)
    note: str = ""                             # what a case expected to succeed shows
    no_escapes: bool = False                   # an ESC byte (ANSI sequence) on stdout or stderr fails it
    says: str = ""                             # what the one-line error must name (a tensor, a key)


# Every case's process writes its own peak RSS (VmHWM, which a new program starts afresh) to the file
# named by $HOSTILE_RSS_FILE when it exits: the kernel's ru_maxrss of a child would also count the
# pages of the (large) parent it was forked from.
PEAK_RSS = """
import atexit, os
def _peak_rss():
    try:
        with open("/proc/self/status") as fh:
            kb = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
        with open(os.environ["HOSTILE_RSS_FILE"], "w") as fh:
            fh.write(str(kb * 1024))
    except (OSError, KeyError, StopIteration, ValueError):
        pass
atexit.register(_peak_rss)
"""


def slimkit(*args: str) -> list[str]:
    """`slimkit ARGS` through the CLI's real entry point (`python -m slimkit.cli.main`)."""
    run = ('import runpy, sys\nsys.argv = ["slimkit", *sys.argv[1:]]\n'
           'runpy.run_module("slimkit.cli.main", run_name="__main__")\n')
    return [sys.executable, "-c", PEAK_RSS + run, *args]


def driver(code: str, *args: str) -> list[str]:
    """A Python snippet run with the CLI's error handling: SlimError -> one line, exit 2."""
    wrapped = ("import sys\nfrom slimkit.cli import common\nfrom slimkit.core.errors import SlimError\n"
               "try:\n" + "".join(f"    {line}\n" for line in code.strip().splitlines()) +
               "except SlimError as exc:\n    common.fail(str(exc))\n")
    return [sys.executable, "-c", PEAK_RSS + wrapped, *args]


# ---------------------------------------------------------------- .slim files with a doctored manifest

def _rewrite(seed: str, out: Path, edit: Callable[[dict, dict], None]) -> Path:
    """Copy seed artifact `seed` to `out` (named layout) after `edit(arrays, manifest)` changed it."""
    from slimkit.io.artifact import read_raw, write_raw

    arrays, manifest = read_raw(SEEDS / seed)
    edit(arrays, manifest)
    write_raw(out, arrays, manifest)
    return out


def _set_method(arrays: dict, manifest: dict) -> None:
    manifest["edits"].append({"op": "setattr", "module": "fc1", "attr": "forward", "value": 1})


def _module_named_forward(arrays: dict, manifest: dict) -> None:
    manifest["edits"].append({"op": "replace", "module": "forward",
                              "spec": {"type": "Linear", "in": 2, "out": 2, "bias": False}})


def _tensor_named(name: str) -> Callable[[dict, dict], None]:
    def edit(arrays: dict, manifest: dict) -> None:
        old = next(iter(manifest["tensors"]))
        manifest["tensors"][name] = manifest["tensors"].pop(old)
        for key in [k for k in arrays if k.startswith(old)]:
            arrays[name + key[len(old):]] = arrays.pop(key)
    return edit


def _hf_layers(n: int) -> Callable[[dict, dict], None]:
    def edit(arrays: dict, manifest: dict) -> None:
        manifest["base"]["config"]["num_hidden_layers"] = n
    return edit


def _hf_huge_vocab(arrays: dict, manifest: dict) -> None:
    """A config whose embedding table alone is 20 GB of fp32 (the file holds a 64-token one)."""
    manifest["base"]["config"]["vocab_size"] = 20_000_000_000 // (4 * manifest["base"]["config"]["hidden_size"])


def _other_path(victim: Path) -> Callable[[dict, dict], None]:
    def edit(arrays: dict, manifest: dict) -> None:
        manifest["base"]["path"] = str(victim)
    return edit


def _byte_order_header(seed: Path, out: Path) -> Path:
    """The seed with its first F32 tensor's dtype written "<F4" in the safetensors header."""
    raw = seed.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    name = next(k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32")
    header[name]["dtype"] = "<F4"
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (n - len(text)) if len(text) <= n else b""
    if len(text) != n:
        raise RuntimeError("header grew")
    out.write_bytes(raw[:8] + text + raw[8 + n:])
    return out


def _byte_order_codec(arrays: dict, manifest: dict) -> None:
    """A codec stage whose output dtype is big-endian float32 (numpy accepts '>f4')."""
    for entry in manifest["tensors"].values():
        for stage in entry.get("chain", []):
            if "dtype" in stage:
                stage["dtype"] = ">f4" if stage["dtype"] == "float32" else stage["dtype"]


# ---------------------------------------------------------------- Hugging Face folders

def _hf_folder(folder: Path, max_positions: int = 64, tokenizer: bool = False, **config_json) -> Path:
    """A tiny random BERT folder (config.json + model.safetensors, with `tokenizer` MiniLM's tokenizer
    files); `config_json` added to config.json."""
    import shutil

    import torch
    import transformers

    from slimkit.zoo.minilm import model_path

    folder.mkdir()
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522 if tokenizer else 64, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=max_positions)
    transformers.BertModel(config, add_pooling_layer=False).save_pretrained(folder, safe_serialization=True)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json") * tokenizer:
        shutil.copy(model_path() / name, folder / name)
    doc = json.loads((folder / "config.json").read_text())
    doc.update(config_json)
    (folder / "config.json").write_text(json.dumps(doc))
    return folder


# ---------------------------------------------------------------- inputs that change while read

TRUNCATE_STREAM = """
from pathlib import Path
from slimkit.cli import main
from slimkit.stream import api
source = Path(sys.argv[1])
real = api.encode_item
def encode_then_truncate(ck, item, *args, **kwargs):
    out = real(ck, item, *args, **kwargs)
    if source.stat().st_size > 4096:
        with open(source, "r+b") as fh:
            fh.truncate(4096)
    return out
api.encode_item = encode_then_truncate
sys.argv = ["slimkit", "compress", str(source), "--recipe", "int8", "--out", sys.argv[2]]
main.run()
"""

TRUNCATE_LAZY = """
import os
import torch
import slimkit as sk
from slimkit.io.artifact import read_raw, write_raw
path = sys.argv[1]
sk.save(torch.nn.Sequential(torch.nn.Linear(8, 8)), path)
write_raw(path, *read_raw(path))   # the named layout: tensors are read when looked up
assert os.path.getsize(path) < 4096
with sk.load_state_dict(path, lazy=True) as tensors:
    os.truncate(path, 200)
    w = tensors["0.weight"]
    print("read", float(w.abs().sum()))
"""


def _nan_matrix(rows: int, cols: int) -> bytes:
    """A rows x cols float32 matrix of small values with one NaN, as raw little-endian bytes."""
    values = [((i * 37) % 101 - 50) / 500.0 for i in range(rows * cols)]
    values[3 * cols + 5] = float("nan")
    return struct.pack(f"<{rows * cols}f", *values)


def _write_safetensors(path: Path, arrays: dict[str, bytes], shapes: dict[str, list[int]]) -> None:
    """A float32 safetensors file from raw bytes (no torch import in the parent)."""
    header, offset = {}, 0
    for name, data in arrays.items():
        header[name] = {"dtype": "F32", "shape": shapes[name], "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"".join(arrays.values()))


def _checkpoint(path: Path, mb: int = 24) -> Path:
    import torch

    from slimkit.io.safetensors_file import atomic_write, serialize

    torch.manual_seed(0)
    rows = mb * (1 << 20) // (4 * 1024 * 4)
    arrays = {f"layer{i}.weight": torch.randn(rows, 1024).numpy() for i in range(4)}
    atomic_write(path, serialize(arrays, {}))
    return path


def _not_read(victim: Path) -> Callable[[str], str | None]:
    """The eval's baseline is the file's own tensors, not the checkpoint its base.path names."""
    def check(stdout: str) -> str | None:
        lines = stdout.strip().splitlines()
        baseline = json.loads(lines[-1]).get("baseline_bytes", 0) if lines else 0
        return "the file named by base.path was read" if baseline >= victim.stat().st_size // 2 else None
    return check


def _leftovers(folder: Path, keep: set[str]) -> Callable[[str], str | None]:
    def check(_stdout: str) -> str | None:
        extra = sorted(p.name for p in folder.iterdir() if p.name not in keep)
        return f"left behind: {extra}" if extra else None
    return check


# ---------------------------------------------------------------- the cases

def cases(work: Path) -> list[Case]:
    """Build every case's files under `work` (a fresh folder) and return the cases."""
    out: list[Case] = []

    # safe writes: --out checked before any work
    recipe = work / "recipe.yaml"
    recipe.write_text("name: mine\nstages:\n  - method: int8\n")
    precious = work / "precious.slim"
    precious.write_bytes(b"precious")
    lenet = ("compress", "builtin:lenet-300-100", "--recipe")
    out.append(Case("write: --out is a folder", slimkit(*lenet, "int8", "--out", str(work))))
    out.append(Case("write: --out in a missing folder", slimkit(*lenet, "int8", "--out", str(work / "no" / "x.slim"))))
    out.append(Case("write: --out is the recipe", slimkit(*lenet, str(recipe), "--out", str(recipe), "--force"),
                    check=lambda _: None if recipe.read_text().startswith("name: mine") else "recipe overwritten"))
    out.append(Case("write: --out exists, no --force", slimkit(*lenet, "int8", "--out", str(precious)),
                    check=lambda _: None if precious.read_bytes() == b"precious" else "existing file replaced"))

    # YAML: an alias bomb (a few hundred bytes that expand to 9**9 items)
    bomb = work / "bomb.yaml"
    levels = "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n"
                     for p, c in zip("abcdefgh", "bcdefghi", strict=True))
    bomb.write_text('a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + levels
                    + "stages: [{method: int8}]\n")
    out.append(Case("yaml: alias bomb recipe", slimkit(*lenet, str(bomb), "--out", str(work / "bomb.slim")), [bomb]))

    # numerics: a NaN weight is refused, the tensor named
    nan = work / "nan.safetensors"
    _write_safetensors(nan, {"fc.weight": _nan_matrix(64, 64), "fc.bias": bytes(64 * 4)}, {"fc.weight": [64, 64],
                                                                                        "fc.bias": [64]})
    out.append(Case("numerics: NaN weight", slimkit("compress", str(nan), "--recipe", "int8", "--out",
                                                    str(work / "nan.slim")), [nan],
                    check=lambda _: None if not (work / "nan.slim").exists() else "a file was written"))

    # terminal output: an escape sequence and rich markup taken from a file reach no terminal raw
    ansi = work / "ansi.yaml"
    ansi.write_text('stages:\n  - method: "\\e[31mred\\e[0m[/dim]"\n')
    out.append(Case("terminal: ANSI escape and markup in a recipe", slimkit(*lenet, str(ansi), "--out",
                                                                          str(work / "ansi.slim")), [ansi],
                    no_escapes=True))

    # one exit-2 path for input errors
    out.append(Case("spec: edit sets a method", slimkit("eval", str(_rewrite(
        "lenet-300-100-int8", work / "method.slim", _set_method)))))
    out.append(Case("spec: module named 'forward'", slimkit("eval", str(_rewrite(
        "lenet-300-100-int8", work / "fwd.slim", _module_named_forward)))))
    out.append(Case("spec: tensor named ''", slimkit("eval", str(_rewrite(
        "weights-stream-int8", work / "empty-name.slim", _tensor_named(""))))))
    out.append(Case("spec: byte-order dtype in header", slimkit("eval", str(_byte_order_header(
        SEEDS / "lenet-300-100-int8-named", work / "order.slim")))))
    out.append(Case("spec: byte-order dtype in codec", slimkit("eval", str(_rewrite(
        "lenet-300-100-prune-magnitude", work / "order-codec.slim", _byte_order_codec)))))
    out.append(Case("spec: HF base with 20,000 layers", slimkit("eval", str(_rewrite(
        "hf-bert-tiny-int8", work / "layers.slim", _hf_layers(20_000))))))
    out.append(Case("spec: HF base config of 20 GB", slimkit("eval", str(_rewrite(
        "hf-bert-tiny-int8", work / "vocab.slim", _hf_huge_vocab)))))
    bnb = _hf_folder(work / "bnb", quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True})
    out.append(Case("spec: HF folder with bitsandbytes", slimkit("eval", str(bnb)), [bnb / "model.safetensors"]))
    short = _hf_folder(work / "short", max_positions=4, tokenizer=True)
    out.append(Case("spec: HF positions < task's length", slimkit("eval", str(short)), [short / "model.safetensors"]))
    victim = _checkpoint(work / "victim.safetensors", mb=16)
    out.append(Case("spec: base.path names another file", slimkit("-q", "eval", str(_rewrite(
        "weights-stream-int8", work / "path.slim", _other_path(victim))), "--json"), expect=0,
        note="loaded; the 16 MB checkpoint it names is not read", check=_not_read(victim)))

    # inputs that change while read
    streamed = work / "streamed"        # a folder of its own: cases run in parallel, so the leftover
    streamed.mkdir()                    # check must not see another case's files
    ck = _checkpoint(streamed / "ck.safetensors")
    size = ck.stat().st_size
    out.append(Case("read: streamed input truncated", driver(TRUNCATE_STREAM, str(ck), str(streamed / "out.slim")),
                    check=_leftovers(streamed, {p.name for p in streamed.iterdir()}), input_bytes=size))
    out.append(Case("read: small file truncated, lazy", driver(TRUNCATE_LAZY, str(work / "small.slim"))))
    return out


def race(work: Path, timeout: float = 120.0) -> tuple[bool, str]:
    """Two `slimkit compress` runs to the same new --out, without --force, started together:
    exactly one must succeed (the other exits 2), and the output must be the winner's, whole."""
    ck = work / "race.safetensors"
    _checkpoint(ck, mb=4)
    target = work / "race.slim"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    argv = slimkit("-q", "compress", str(ck), "--recipe", "int8", "--out", str(target))
    procs = [subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)
             for _ in range(2)]
    codes, errs = [], []
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        codes.append(proc.returncode)
        errs.append((err.strip().splitlines() or [""])[-1])
    loser = next((e for c, e in zip(codes, errs, strict=True) if c == 2), "")
    leftovers = sorted(p.name for p in work.iterdir() if p.name.startswith(".race.slim"))
    try:
        from slimkit.io.artifact import read_manifest

        read_manifest(target)
        whole = True
    except Exception:  # noqa: BLE001 - any failure to read it back is a failed check
        whole = False
    ok = sorted(codes) == [0, 2] and whole and not leftovers and "already exists" in loser
    return ok, (f"exit codes {sorted(codes)}; output {'whole' if whole else 'NOT readable'}; loser: "
                f"{loser.removeprefix('slimkit: error: ')[:80]}" + (f"; left behind {leftovers}" if leftovers else ""))


def run_case(case: Case) -> tuple[bool, str]:
    """Run one case as a process: (passed, detail). Time is the process's CPU time (user + system):
    on a shared, busy machine the wall clock measures the neighbours; a process still running after
    `WALL_LIMIT_S` is killed (a hang)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    run = _run(case.argv, env, WALL_LIMIT_S)
    if run is None:
        return False, f"killed after {WALL_LIMIT_S:.0f} s of wall time"
    code, stdout, stderr, wall, cpu, rss = run
    size = case.input_bytes if case.input_bytes is not None else sum(p.stat().st_size for p in case.inputs)
    bound = max(RSS_FLOOR, 4 * size)
    lines = stderr.strip().splitlines()
    last = lines[-1] if lines else ""
    problems = []
    if code != case.expect:
        problems.append(f"exit {code}, expected {case.expect}")
    if "Traceback" in stderr:
        problems.append("traceback")
    if case.expect == 2 and not (last.startswith("slimkit: error:") and "internal error" not in last):
        problems.append("no one-line error")
    if case.says and case.says not in last:
        problems.append(f"the error does not name {case.says!r}")
    if cpu > LIMIT_S:
        problems.append(f"{cpu:.1f} s CPU > {LIMIT_S:.0f} s")
    if rss > bound:
        problems.append(f"peak RSS {rss >> 20} MB > {bound >> 20} MB")
    if case.no_escapes and "\x1b" in stdout + stderr:
        problems.append("a raw escape sequence reached the terminal")
    extra = case.check(stdout) if case.check else None
    if extra:
        problems.append(extra)
    said = last.removeprefix("slimkit: error: ") if case.expect == 2 else case.note
    detail = f"exit {code}, {cpu:.1f} s CPU ({wall:.1f} s wall), {rss >> 20} MB: {said[:110]}"
    return not problems, ("; ".join(problems) + f" ({detail})") if problems else detail


def _run(argv: list[str], env: dict, timeout: float) -> tuple[int, str, str, float, float, int] | None:
    """(exit code, stdout, stderr, wall seconds, CPU seconds, peak RSS in bytes) of one process, or
    None if it ran past `timeout` and was killed. CPU time is that child's own (wait4); the peak RSS is
    what the process reported at exit (`PEAK_RSS`), else wait4's, which counts the parent's pages too."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile(prefix="hostile-rss-") as rss_file:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env={**env, "HOSTILE_RSS_FILE": rss_file.name})
        pid, status, usage = 0, 0, None
        while not pid and time.perf_counter() - start < timeout:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if not pid:
                time.sleep(0.02)
        wall = time.perf_counter() - start
        if not pid or usage is None:
            proc.kill()
            os.wait4(proc.pid, 0)
            proc.returncode = -9
            return None
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        reported = Path(rss_file.name).read_text().strip()
        peak = int(reported) if reported.isdigit() else usage.ru_maxrss * 1024   # no report: an upper bound
        return (proc.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace"), wall,
                usage.ru_utime + usage.ru_stime, peak)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        for c in cases(Path(tmp)):
            ok, detail = run_case(c)
            print(f"{'PASS' if ok else 'FAIL'}  {c.name:<38} {detail}", flush=True)
        with tempfile.TemporaryDirectory() as race_dir:
            ok, detail = race(Path(race_dir))
            print(f"{'PASS' if ok else 'FAIL'}  {'write: two compresses, one new --out':<38} {detail}", flush=True)
