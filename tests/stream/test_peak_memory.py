"""Peak memory of a child process compressing a ~220 MB checkpoint stays far below its size."""

from __future__ import annotations

import os
import sys

import pytest

import slimkit as sk
from bench.rss import run_measured
from bench.synth import llm_like_shapes, write_random_checkpoint

WARM = ("import torch, sys; from slimkit.pipeline.recipes import load_recipe; import slimkit.stream.api; "
        "from slimkit.nn.codec_affine import quantize_block; load_recipe('int8'); "
        "quantize_block(torch.randn(64, 256), 8, True, 256, 'float32')")
RUN = WARM + "; slimkit.stream.api.compress_checkpoint(sys.argv[1], 'int8', sys.argv[2])"


@pytest.mark.slow
def test_peak_rss_growth_is_a_small_fraction_of_the_checkpoint(tmp_path):
    shapes = llm_like_shapes(200_000_000, hidden=1024, intermediate=2816, vocab=8000)
    size = write_random_checkpoint(tmp_path / "ck.safetensors", shapes)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    code, base, _, err = run_measured([sys.executable, "-c", WARM], env)
    assert code == 0, err
    code, peak, _, err = run_measured([sys.executable, "-c", RUN, str(tmp_path / "ck.safetensors"),
                                       str(tmp_path / "ck.slim")], env)
    assert code == 0, err
    growth = peak - base
    print(f"checkpoint {size / 1e6:.0f} MB, child peak {peak / 1e6:.0f} MB, baseline {base / 1e6:.0f} MB, "
          f"growth {growth / 1e6:.0f} MB = {growth / size:.2f}x")
    assert growth < 0.15 * size   # measured: 11 MB on 220 MB (0.05x)
    out = (tmp_path / "ck.slim").stat().st_size
    assert out < 0.26 * size
    with sk.load_state_dict(tmp_path / "ck.slim", lazy=True) as back:
        assert back["lm_head.weight"].shape == (8000, 1024) and back.decoded == 1
