"""report.html of a real search rendered by headless Chromium (`make chromium` installs it): the
screenshot is not blank and shows the plots' colours. Slow: run by `make bench`."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import torch

from slimkit.autosearch import search

pytestmark = pytest.mark.slow


def _near(pixels: np.ndarray, rgb: tuple[int, int, int], tol: int = 12) -> int:
    return int((np.abs(pixels.astype(int) - np.array(rgb)).max(axis=-1) <= tol).sum())


def test_report_renders_in_headless_chromium(tmp_path, lenet_trained):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (make chromium installs it with apt)")
    from PIL import Image

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = search("builtin:lenet-300-100", max_drop=15.0, out=tmp_path / "s", max_trials=2, effort=0.1)
    finally:
        torch.set_num_threads(threads)
    shot = tmp_path / "shot.png"
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--window-size=1200,4000", f"--screenshot={shot}", result.report.resolve().as_uri()],
                          capture_output=True, text=True, timeout=180)
    assert shot.is_file(), proc.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (4000, 1200)
    gray = pixels.mean(axis=-1)
    assert gray.std() > 10                                  # not a blank page
    assert (gray < 128).mean() > 0.005                      # text and axes drawn
    assert _near(pixels, (0x44, 0x77, 0xAA)) > 2000         # the blue of the histograms / front
    assert _near(pixels, (0x22, 0x88, 0x33)) > 500          # the green of the best model's plots
