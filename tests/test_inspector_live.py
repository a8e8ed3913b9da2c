"""Live masking leaves the model it shares between browser sessions alone (issue 13: no shared-model
mutation under a lock; the sampler is an argument of the request, not a setting of the model)."""
from __future__ import annotations

import threading

import numpy as np
import torch

from inspector import live
from model import create_model


def _model(sampler: str = "random"):
    torch.manual_seed(0)
    return create_model("mae_vit_micro_patch4_32", mask_sampler=sampler).eval()


def test_a_request_never_changes_the_shared_models_sampler():
    model = _model()
    seen = []
    # runs inside the forward: the module called (the shared model itself, no copy of it), the
    # sampler the request passed, and the shared model's own setting at that moment
    model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((module is model, kwargs.get("sampler"), model.mask_sampler)),
        with_kwargs=True)
    live.mask_image(model, torch.randn(1, 3, 32, 32), 0.75, "block", seed=0)
    assert seen == [(True, "block", "random")]


def test_a_sampler_argument_computes_what_a_model_built_with_that_sampler_does():
    shared, x = _model(), torch.randn(1, 3, 32, 32)
    for sampler in ("block", "grid"):
        own = _model(sampler)
        own.load_state_dict(shared.state_dict())
        a = live.mask_image(shared, x, 0.75, sampler, seed=3)
        b = live.mask_image(own, x, 0.75, sampler, seed=3)
        assert a.loss == b.loss
        for key in a.panels:
            np.testing.assert_array_equal(a.panels[key], b.panels[key])


def test_concurrent_requests_with_different_samplers_match_sequential_ones():
    model, x = _model(), torch.randn(1, 3, 32, 32)
    jobs = [(s, seed) for s in ("random", "block", "grid") for seed in (0, 1)]
    expected = {job: live.mask_image(model, x, 0.6, *job).panels["masked"] for job in jobs}
    got, errors = {}, []

    def work(job):
        try:
            for _ in range(3):
                got.setdefault(job, []).append(live.mask_image(model, x, 0.6, *job).panels["masked"])
        except Exception as exc:  # noqa: BLE001 - collected and asserted on below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for job in jobs:
        for panel in got[job]:
            np.testing.assert_array_equal(panel, expected[job])
    assert model.mask_sampler == "random"
