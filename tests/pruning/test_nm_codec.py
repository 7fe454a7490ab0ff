"""The compact N:M index of the `sparse` codec: exact round trips, its size, auto choice, bad files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import slimkit as sk
from slimkit.core.errors import SlimError, SlimFormatError
from slimkit.io.artifact import set_codec
from slimkit.io.codec_nm import bits_per_group, decode_nm, encode_nm, nm_structure, packing
from slimkit.io.codecs import decode_chain, encode_chain
from slimkit.pruning.api import NMPruningConfig
from slimkit.pruning.masks import nm_mask


def _nm_tensor(shape, n, m, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(dtype)
    keep = nm_mask(torch.from_numpy(w.astype(np.float32)), n, m).numpy()
    return np.where(keep, w, np.zeros((), dtype)).astype(dtype)   # +0.0 where pruned: bit-exact compare


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.dtype(f"u{a.dtype.itemsize}"))


@pytest.mark.parametrize("n,m", [(1, 4), (2, 4), (3, 4), (2, 8), (4, 8), (1, 2), (8, 16)])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_round_trip_is_bit_exact_and_picks_nm(n, m, dtype):
    w = _nm_tensor((48, 64), n, m, dtype)
    stored, stages = encode_chain(w, [{"codec": "sparse"}])
    assert stages[0]["index"] == "nm" and stages[0]["nm"] == [n, m]
    assert stored["data"].size == np.count_nonzero(w)            # the data contract of `sparse` holds
    back = decode_chain(stored, stages)
    assert back.dtype == w.dtype and back.shape == w.shape and np.array_equal(_bits(back), _bits(w))


def test_conv_weights_group_along_their_flattened_rows():
    w = _nm_tensor((8, 4, 3, 3), 2, 4)                             # rows of 36 inputs
    stored, stages = encode_chain(w, [{"codec": "sparse"}])
    assert stages[0]["nm"] == [2, 4]
    assert np.array_equal(decode_chain(stored, stages), w)


def test_2_4_index_costs_at_most_2_6_bits_per_group():
    w = _nm_tensor((384, 1536), 2, 4)
    stored, stages = encode_chain(w, [{"codec": "sparse"}])
    groups = w.size // 4
    bits = 8 * stored["0.nm"].nbytes / groups
    assert math.log2(6) <= bits <= 2.6
    assert packing(2, 4) == (6, 17, 44) and bits_per_group(2, 4) < 2.59
    mask_bytes = encode_chain(w, [{"codec": "sparse", "index": "mask"}])[0]["0.mask"].nbytes
    gaps_bytes = encode_chain(w, [{"codec": "sparse", "index": "gaps"}])[0]["0.gaps"].nbytes
    assert stored["0.nm"].nbytes < 0.66 * mask_bytes and stored["0.nm"].nbytes < gaps_bytes


def test_structure_detection_prefers_the_smallest_group():
    keep = _nm_tensor((16, 32), 2, 4) != 0
    assert nm_structure(keep) == (2, 4)                            # also 4:8, but that costs more
    assert nm_structure(_nm_tensor((16, 32), 2, 8) != 0) == (2, 8)
    assert nm_structure(np.random.default_rng(0).random(512) < 0.5) is None
    assert nm_structure(np.zeros(0, bool)) is None and nm_structure(np.ones(64, bool)) is None


def test_one_broken_group_falls_back_to_the_generic_index():
    w = _nm_tensor((32, 64), 2, 4)
    w[3, :4] = [1.0, 2.0, 3.0, 0.0]                                # 3 nonzeros in one group
    stored, stages = encode_chain(w, [{"codec": "sparse"}])
    assert stages[0]["index"] in ("mask", "gaps")
    assert np.array_equal(decode_chain(stored, stages), w)
    with pytest.raises(SlimError, match="nm"):
        encode_chain(w, [{"codec": "sparse", "index": "nm"}])


def test_skewed_patterns_are_entropy_coded_when_smaller():
    w = np.zeros((64, 256), np.float32)
    w[:, 0::4] = 1.0                                               # the same 1:4 pattern ... almost
    w[:, 1::4] = 2.0
    w[0, :4] = [0.0, 1.0, 0.0, 3.0]
    stored, stages = encode_chain(w, [{"codec": "sparse"}])
    assert stages[0]["index"] == "nm" and stages[0].get("nm_coder") in ("huffman", "ans")
    assert stored["0.nm"].nbytes < encode_nm(w != 0, 2, 4).nbytes
    assert np.array_equal(decode_chain(stored, stages), w)


def _encoded():
    w = _nm_tensor((16, 64), 2, 4)
    stored, stages = encode_chain(w, [{"codec": "sparse", "entropy": False}])
    return stored, stages


@pytest.mark.parametrize("change, match", [
    (lambda s, p: p.update(nm=[4, 4]), "nm parameters"),
    (lambda s, p: p.update(nm=[0, 4]), "nm parameters"),
    (lambda s, p: p.update(nm=["2", 4]), "nm parameters"),
    (lambda s, p: p.update(nm=[2, 65]), "nm parameters"),
    (lambda s, p: p.update(nm=[2, 3]), "nm parameters"),          # 1024 elements: 3 does not divide
    (lambda s, p: p.update(nm=None), "nm parameters"),
    (lambda s, p: p.update(nm=[1, 4]), "hold"),                    # nnz no longer matches
    (lambda s, p: p.update(nnz=511), "nonzeros|stored values"),
    (lambda s, p: s.update({"0.nm": s["0.nm"][:-1]}), "cannot hold"),
    (lambda s, p: s.update({"0.nm": np.full_like(s["0.nm"], 255)}), "exceeds"),
    (lambda s, p: s.update({"0.nm": s["0.nm"].astype(np.uint16)}), "uint8"),
    (lambda s, p: p.update(nm_coder="huffman"), "."),
    (lambda s, p: p.update(nm_coder="zip"), "."),
])
def test_malformed_nm_index_is_a_one_line_format_error(change, match):
    stored, stages = _encoded()
    change(stored, stages[0])
    with pytest.raises(SlimFormatError, match=match) as err:
        decode_chain(stored, stages, max_bytes=1 << 20)
    assert "\n" not in str(err.value)


def test_nonzero_padding_in_the_last_word_is_refused():
    keep = np.zeros(4 * 18, bool)                                  # 18 groups: 2 words, the last one padded
    keep[0::4] = keep[1::4] = True
    stream = encode_nm(keep, 2, 4)
    assert np.array_equal(decode_nm(stream, 2, 4, keep.size), np.flatnonzero(keep))
    longer = np.concatenate([keep, [False, False, True, True]])    # a 19th group, pattern number 5
    with pytest.raises(SlimFormatError, match="padding"):
        decode_nm(encode_nm(longer, 2, 4), 2, 4, keep.size)         # same 2 words, read as 18 groups
    with pytest.raises(SlimFormatError, match="impossible"):
        decode_nm(stream, 2, 4, 2**62 + 2)


@pytest.mark.parametrize("seed", range(3))
def test_random_byte_flips_never_crash(seed):
    rng = np.random.default_rng(seed)
    stored, stages = _encoded()
    for _ in range(200):
        bad = dict(stored)
        index = bad["0.nm"].copy()
        index[rng.integers(index.size)] ^= np.uint8(1 << int(rng.integers(8)))
        bad["0.nm"] = index
        try:
            out = decode_chain(bad, stages, max_bytes=1 << 20)
        except SlimFormatError:
            continue
        assert out.shape == (16, 64) and np.count_nonzero(out) == stored["data"].size


def test_nm_pruned_lenet_file_uses_the_compact_index(lenet, digits_task, tmp_path):
    model = sk.prune_(lenet, NMPruningConfig(n=2, m=4), digits_task)
    size = sk.save(model, tmp_path / "nm.slim")
    manifest = sk.read_manifest(tmp_path / "nm.slim")
    chains = [t.chain[0] for t in manifest.tensors.values() if t.chain]
    assert chains and all(c["index"] == "nm" for c in chains)
    x = digits_task.example_inputs(8)["x"]
    assert torch.equal(sk.load(tmp_path / "nm.slim")(x), model(x))
    weights = 0
    for m in (model.fc1, model.fc2, model.fc3):                    # the same file with 1-bit masks
        set_codec(m, "weight", [{"codec": "sparse", "index": "mask"}])
        weights += m.weight.numel()
    with_masks = sk.save(model, tmp_path / "mask.slim")
    assert with_masks - size >= (1 - 0.66) * weights / 8              # nm: <= 0.66 bit per weight
