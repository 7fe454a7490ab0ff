"""More generated hostile inputs of issue 22 for `make check-safety`: the sub-classes that
`tools/hostile_cases.py` (whose `Case`, `run_case` and helpers these reuse) has no row for.

- limits from real bytes: a hashed layer whose virtual weight would take 5 GB, a packed manifest that
  inflates to 64 MB of JSON, an ANS stream claiming 64M symbols from 16 KB, a header of a million
  zero-size tensors (in a sparse file large enough that the header budget admits it);
- YAML: `bits: true`, a 5,001-digit int, a list where a word belongs, a duplicate key, a binary file;
- writes: the ONNX export's old fixed temporary name planted as a symlink to a victim; a compress
  under umask 022 writes 0644; `--out` in a read-only folder (skipped where writes ignore the mode);
- numerics: an Inf weight under int4-rtn and under k-means; an fp16 checkpoint of subnormal weights
  under int4-rtn; k-means on an all-zero and a constant tensor.

    .venv/bin/python tools/hostile_more.py            # these cases alone
"""

from __future__ import annotations

import os
import struct
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.hostile_cases import SEEDS, Case, _rewrite, driver, slimkit  # noqa: E402

# ---------------------------------------------------------------- limits from real bytes

def _huge_hashed(arrays: dict, manifest: dict) -> None:
    """fc1's virtual weight claims 4,166,667 x 300 (5 GB of fp32) from its 2,400 stored buckets."""
    manifest["edits"][0]["spec"]["in"] = 5_000_000_000 // (4 * 300)


def _manifest_bomb(path: Path, megabytes: int = 64) -> Path:
    """A packed .slim whose tail manifest, ~64 KB deflated, inflates to `megabytes` MB of `{}` objects."""
    import numpy as np

    from slimkit.io.layout import PAYLOAD, TAIL_KEY, ZDICT
    from slimkit.io.safetensors_file import atomic_write, serialize

    deflate = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, zdict=ZDICT)
    parts = [deflate.compress(b'{"base":{"kind":"user"},"tensors":{},"info":{"x":[{}')]
    block = b",{}" * (1 << 20)
    parts += [deflate.compress(block) for _ in range(megabytes * (1 << 20) // len(block))]
    tail = b"".join(parts) + deflate.compress(b"]}}") + deflate.flush()
    atomic_write(path, serialize({PAYLOAD: np.frombuffer(tail, np.uint8)}, {TAIL_KEY: str(len(tail))}))
    return path


def _ans_claim(path: Path, stored: int = 16 << 10) -> Path:
    """One uint8 tensor whose ANS stream, `stored` bytes of words, claims as many symbols as the file's
    per-tensor bound allows (64M for 16 KB): a histogram of n - 1 zeros and a single one, which a
    legitimate stream codes in a few bytes, so only decoding can tell."""
    import numpy as np

    from slimkit.io.codec_ans import _varints
    from slimkit.io.layout import file_chunks
    from slimkit.io.manifest import Manifest, TensorEntry
    from slimkit.io.safetensors_file import atomic_write

    n = 4096 * stored
    head = bytes([1]) + _varints(np.array([n - 1, 1]))
    head += b"\0" * (-len(head) % 4)
    words = np.random.default_rng(0).integers(0, 256, stored, dtype=np.uint8).tobytes()
    entry = TensorEntry(dtype="uint8", shape=[n], chain=[{"codec": "ans", "shape": [n]}])
    stream = np.frombuffer(head + words, np.uint8)
    atomic_write(path, file_chunks({"t": stream}, Manifest(base={"kind": "user"}, tensors={"t": entry})))
    return path


def _zero_size_tensors(path: Path, count: int = 1_000_000) -> Path:
    """A seed .slim (named layout) whose safetensors header also lists `count` zero-size tensors (57 MB
    of header), in a sparse file 16x the header, the smallest whose header budget admits it."""
    raw = (SEEDS / "lenet-300-100-int8-named").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = raw[8:8 + n].rstrip(b" ")
    extra = b"".join(b',"z%x":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}' % i for i in range(count))
    blob = header[:-1] + extra + b"}"
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)) + blob + raw[8 + n:])
        fh.truncate(16 * (len(blob) + 8) + len(raw))
    return path


# ---------------------------------------------------------------- writes

UMASK_COMPRESS = """
import os
from slimkit.cli import main
os.umask(0o022)
sys.argv = ["slimkit", "-q", "compress", "builtin:lenet-300-100", "--recipe", "int8", "--out", sys.argv[1]]
main.run()
"""


def _mode_is(path: Path, mode: int) -> Callable[[str], str | None]:
    def check(_stdout: str) -> str | None:
        if not path.exists():
            return f"{path.name} was not written"
        got = path.stat().st_mode & 0o777
        return None if got == mode else f"{path.name} has mode {got:o}, expected {mode:o}"
    return check


def _unchanged(victim: Path, content: bytes) -> Callable[[str], str | None]:
    def check(_stdout: str) -> str | None:
        return None if victim.read_bytes() == content else f"{victim.name} was overwritten"
    return check


def _writes_ignore_mode(folder: Path) -> bool:
    """Whether this process can create a file in a 0555 folder (root, CAP_DAC_OVERRIDE)."""
    probe = folder / "probe"
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except PermissionError:
        return False
    probe.unlink()
    return True


# ---------------------------------------------------------------- numerics

def _checkpoint(path: Path, tensors: dict) -> Path:
    from slimkit.io.safetensors_file import atomic_write, serialize

    atomic_write(path, serialize(tensors, {}))
    return path


def _with_inf(path: Path) -> Path:
    import numpy as np

    ok, bad = np.random.default_rng(0).standard_normal((2, 64, 64)).astype(np.float32)
    bad[9, 3] = np.inf
    return _checkpoint(path, {"ok.weight": ok, "bad.weight": bad})


def _subnormal_fp16(path: Path) -> Path:
    import numpy as np

    weight = (np.random.default_rng(0).standard_normal((64, 128)) * 1e-6).astype(np.float16)
    return _checkpoint(path, {"tiny.weight": weight})


def _flat(path: Path) -> Path:
    import numpy as np

    return _checkpoint(path, {"zero.weight": np.zeros((64, 64), np.float32),
                              "const.weight": np.full((64, 64), 0.25, np.float32)})


def _reloads_exactly(source: Path, out: Path) -> Callable[[str], str | None]:
    """`out` (a .slim) loads, and every tensor of it equals `source`'s (k-means keeps a constant exact)."""
    def check(_stdout: str) -> str | None:
        import torch

        import slimkit as sk
        from slimkit.io.shards import read_state_dict

        if not out.exists():
            return f"{out.name} was not written"
        try:
            got = sk.load_state_dict(out)
        except sk.SlimError as exc:
            return f"{out.name} does not load: {exc}"
        wrong = [name for name, w in read_state_dict(source).items()
                 if name not in got or not torch.equal(got[name], w)]
        return f"{', '.join(wrong)} reload(s) with other values" if wrong else None
    return check


def _gone(path: Path) -> Callable[[str], str | None]:
    return lambda _stdout: None if not path.exists() else f"{path.name} was written"


# ---------------------------------------------------------------- the cases

def more_cases(work: Path) -> list[Case]:
    """Build these cases' files under `work` (a fresh folder, shared with `hostile_cases.cases`)."""
    out: list[Case] = []
    lenet = ("compress", "builtin:lenet-300-100", "--recipe")

    # limits from real bytes
    hashed = _rewrite("lenet-300-100-hashed", work / "hashed.slim", _huge_hashed)
    out.append(Case("bytes: hashed layer of 5 GB", slimkit("eval", str(hashed)), [hashed], says="fc1"))
    bomb = _manifest_bomb(work / "manifest-bomb.slim")
    out.append(Case("bytes: manifest inflating to 64 MB", slimkit("eval", str(bomb)), [bomb]))
    ans = _ans_claim(work / "ans.slim")
    out.append(Case("bytes: ANS stream claiming 64M symbols", slimkit("eval", str(ans)), [ans], says="'t'"))
    zeros = _zero_size_tensors(work / "zero-size.slim")
    out.append(Case("bytes: 1M zero-size tensors in header", slimkit("eval", str(zeros)), [zeros]))

    # YAML: wrong types and bytes, one line naming the file and the problem
    for label, name, text, says in [
        ("bool where an int belongs", "bool.yaml", "stages:\n  - method: rtn\n    bits: true\n", "bool"),
        ("5,001-digit int", "digits.yaml", "stages:\n  - method: rtn\n    bits: " + "9" * 5001 + "\n", "5001"),
        ("list where a word belongs", "list.yaml", "stages:\n  - method: [rtn]\n", "got a list"),
        ("duplicate key", "dup.yaml", "stages:\n  - method: kmeans\n    bits: 4\n    bits: 8\n", "duplicate key"),
    ]:
        path = work / name
        path.write_text(text)
        out.append(Case(f"yaml: {label}", slimkit(*lenet, str(path), "--out", str(work / f"{name}.slim")),
                        [path], says=says, check=_gone(work / f"{name}.slim")))
    binary = work / "binary.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xffstages: [{method: int8}]\n")
    out.append(Case("yaml: binary recipe file", slimkit(*lenet, str(binary), "--out", str(work / "bin.slim")),
                    [binary], says="UTF-8", check=_gone(work / "bin.slim")))

    # writes
    exports = work / "export"            # a folder of its own: a symlink beside other cases' files
    exports.mkdir()
    slim = exports / "lenet.slim"
    slim.write_bytes((SEEDS / "lenet-300-100-int8").read_bytes())
    victim = exports / "victim.txt"
    victim.write_bytes(b"precious")
    (exports / ".lenet.onnx.export").symlink_to(victim)   # the temporary name of old exports
    out.append(Case("write: export temp name is a symlink", slimkit("-q", "export", str(slim), "--onnx",
                                                                      str(exports / "lenet.onnx")),
                    expect=0, note="exported; the symlink's target is untouched",
                    check=_unchanged(victim, b"precious")))
    umask = work / "umask.slim"
    out.append(Case("write: output mode under umask 022", driver(UMASK_COMPRESS, str(umask)), expect=0,
                    note="written 0644", check=_mode_is(umask, 0o644)))
    locked = work / "read-only"
    locked.mkdir(mode=0o555)
    locked.chmod(0o555)
    if _writes_ignore_mode(locked):
        # Running as root (or with CAP_DAC_OVERRIDE): a 0555 folder does not stop a write, so a row here
        # could not fail. tests/io/test_safe_writes.py covers the read-only probe by monkeypatching it.
        print("hostile: '--out in a read-only folder' skipped: this process can write into a 0555 folder "
              "(root)", file=sys.stderr)
    else:
        out.append(Case("write: --out in a read-only folder",
                        slimkit(*lenet, "int8", "--out", str(locked / "x.slim")), check=_gone(locked / "x.slim")))

    # numerics
    inf = _with_inf(work / "inf.safetensors")
    kmeans = work / "kmeans.yaml"
    kmeans.write_text("stages:\n  - method: kmeans\n    bits: 4\n    finetune_epochs: 0\n")
    for label, recipe in (("int4-rtn", "int4-rtn"), ("k-means", str(kmeans))):
        target = work / f"inf-{label}.slim"
        out.append(Case(f"numerics: Inf weight, {label}", slimkit("compress", str(inf), "--recipe", recipe,
                                                                 "--out", str(target)),
                        [inf], says="bad.weight", check=_gone(target)))
    tiny = _subnormal_fp16(work / "subnormal.safetensors")
    # streamed, the float16 scales' dtype is in the header before the values are read: refused (it was
    # written with every code 0, exit 0); in memory, rtn keeps float32 scales for such a layer instead
    out.append(Case("numerics: fp16 subnormal weights, rtn", slimkit("compress", str(tiny), "--recipe", "int4-rtn",
                                                                      "--out", str(work / "tiny.slim")),
                    [tiny], says="tiny.weight", check=_gone(work / "tiny.slim")))
    flat = _flat(work / "flat.safetensors")
    out.append(Case("numerics: k-means on zero and constant", slimkit("-q", "compress", str(flat), "--recipe",
                                                                       str(kmeans), "--out", str(work / "flat.slim")),
                    [flat], expect=0, note="written; loads back exactly",
                    check=_reloads_exactly(flat, work / "flat.slim")))
    return out


if __name__ == "__main__":
    import tempfile

    from tools.hostile_cases import run_case

    with tempfile.TemporaryDirectory() as tmp:
        for c in more_cases(Path(tmp)):
            if len(sys.argv) > 1 and not any(word in c.name for word in sys.argv[1:]):
                continue
            ok, detail = run_case(c)
            print(f"{'PASS' if ok else 'FAIL'}  {c.name:<40} {detail}", flush=True)
