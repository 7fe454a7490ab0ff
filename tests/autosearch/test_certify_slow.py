"""The certificate against the test split (which chose nothing): 10-fold cross-validation of real
lenet-300-100 fold baselines, a post-training recipe and deep-compression. Slow (minutes on 2 busy
cores, the fold baselines are trained once and cached): run by `make bench`."""

from __future__ import annotations

import time

import pytest
import torch

import slimkit as sk
from slimkit.autosearch.certify import Certification, CrossValidation, certified
from slimkit.autosearch.guide import fresh_copy
from slimkit.zoo.digits_task import DigitsTask

pytestmark = pytest.mark.slow

PRUNE = {"scope": "global", "schedule": "gradual", "epochs": 60, "lr": 0.002, "value_dtype": "float16",
         "bias_dtype": "float16"}


def _test_drop(model, stages, task) -> float:
    net = fresh_copy(model)
    for config in stages:
        net = sk.apply_(net, config, task)
    return (task.score(model) - task.score(net.eval())) * 100


def test_certificates_hold_on_the_test_split(lenet_trained):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        task = DigitsTask()
        cv = CrossValidation.for_model(lenet_trained, Certification(folds=10, confidence=0.9))   # 3 repeats
        assert cv.images == len(task.data.train) and cv.outcomes == 3 * cv.images
        rtn = [sk.make_config("rtn", bits=6, granularity="channel")]
        deep = [sk.make_config("magnitude", sparsity=0.95, **PRUNE),
                sk.make_config("kmeans", bits=4, bias_bits=4, coding="huffman", finetune_epochs=10, lr=0.001)]
        certs = {}
        for stages in (rtn, deep):
            cert = certs[stages[0].method] = cv.certify(stages, max_drop=0.5, deadline=time.monotonic() + 3600)
            test = _test_drop(lenet_trained, stages, task)
            assert cert["folds"] == cert["of"] == 30 or not certified(cert, 0.5)
            assert test <= cert["ucb_pts"] + 1e-9, (stages[0].method, cert, test)
            if certified(cert, 0.5):
                assert test <= 0.5
            assert abs(cert["drop_pts"] - test) < 1.5
        assert certified(cv.certify(rtn, 0.5, time.monotonic() + 600), 0.5)   # post-training 6-bit: certified
        # one repeat (the first partition): the same recipe's outcomes are noisier, the bound wider
        once = CrossValidation.for_model(lenet_trained, Certification(folds=10, confidence=0.9, repeats=1))
        single = once.certify(deep, max_drop=100.0, deadline=time.monotonic() + 3600)
        assert single["folds"] == 10 and single["ucb_pts"] > certs["magnitude"]["ucb_pts"]
    finally:
        torch.set_num_threads(threads)
