"""The one ``BaseOutput`` behind the scheduler's, the UNet's and the pipeline's outputs (as Diffusers' BaseOutput)."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.utils._pytree as pytree

from ddpm import DDPMSchedulerOutput, ImagePipelineOutput, UNet2DOutput
from ddpm.models import BaseOutput
from ddpm.outputs import BaseOutput as TheBaseOutput


def outputs():
    x, y = torch.randn(2, 3), torch.randn(2, 3)
    return [DDPMSchedulerOutput(prev_sample=x, pred_original_sample=y), UNet2DOutput(sample=x), ImagePipelineOutput(x)]


def test_one_base_class_for_every_output():
    assert BaseOutput is TheBaseOutput
    assert all(isinstance(out, TheBaseOutput) for out in outputs())


@pytest.mark.parametrize("out", outputs(), ids=lambda o: type(o).__name__)
def test_pickle_and_pytree_round_trips(out):
    back = pickle.loads(pickle.dumps(out))
    assert type(back) is type(out) and list(back.keys()) == list(out.keys())
    assert all(torch.equal(a, b) for a, b in zip(back.to_tuple(), out.to_tuple()))
    leaves, spec = pytree.tree_flatten(out)
    assert len(leaves) == len(out) and all(a is b for a, b in zip(leaves, out.to_tuple()))
    rebuilt = pytree.tree_unflatten([leaf * 2 for leaf in leaves], spec)
    assert type(rebuilt) is type(out) and torch.equal(rebuilt[0], out[0] * 2)


def test_none_fields_are_skipped_and_setting_a_field_updates_the_dict():
    x = torch.randn(2)
    out = DDPMSchedulerOutput(prev_sample=x)
    assert list(out.keys()) == ["prev_sample"] and out.to_tuple() == (x,) and out[-1] is x
    y = torch.randn(2)
    out.pred_original_sample = y
    assert out["pred_original_sample"] is y and out[1] is y
    out["prev_sample"] = y
    assert out.prev_sample is y and out[0] is y
    for method, args in [("pop", ("prev_sample",)), ("update", ({},)), ("setdefault", ("a", 1))]:
        with pytest.raises(TypeError, match=f"``{method}`` on a DDPMSchedulerOutput"):
            getattr(out, method)(*args)
    with pytest.raises(TypeError):
        del out["prev_sample"]
