"""kill -9 at random moments while a file is being replaced: the old or the new file, never a partial."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

import torch

import slimkit as sk

WRITER = """
import sys, torch
from torch import nn
import slimkit as sk
path = sys.argv[1]
model = nn.Sequential(nn.Linear(1024, 2048))   # 8 MB: a write takes long enough to be interrupted
i = 0
print("ready", flush=True)
while True:
    with torch.no_grad():
        model[0].bias.fill_(float(i))
    sk.save(model, path)
    i += 1
"""


def test_kill_9_during_save_leaves_a_loadable_file(tmp_path):
    path = tmp_path / "m.slim"
    arch = torch.nn.Sequential(torch.nn.Linear(1024, 2048))
    with torch.no_grad():
        arch[0].bias.fill_(-1.0)
    sk.save(arch, path)
    rng = random.Random(0)
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        loaded = sk.load(path, model=torch.nn.Sequential(torch.nn.Linear(1024, 2048)))
        bias = loaded[0].bias
        assert torch.all(bias == bias[0]), "a mixture of two writes"
