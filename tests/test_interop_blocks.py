"""Block classes as in Diffusers (issue #16, item 3): code that walks a Diffusers UNet (``isinstance`` checks, hooks,
gradient checkpointing) sees the same classes under the same module names, with the same state-dict keys."""

from __future__ import annotations

import warnings

import pytest
import torch

from ddpm import UNet2DModel
from ddpm.models import AttnDownBlock2D, AttnUpBlock2D, DownBlock2D, UNetMidBlock2D, UpBlock2D

diffusers = pytest.importorskip("diffusers")
from diffusers.models.unets import unet_2d_blocks  # noqa: E402

CONFIGS = {
    "cifar10-like": dict(
        sample_size=16,
        block_out_channels=(8, 16, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=2,
        norm_num_groups=4,
        attention_head_dim=None,
    ),
    "diffusers-default-blocks": dict(
        sample_size=8,
        block_out_channels=(8, 16),
        down_block_types=("AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
        attention_head_dim=4,
    ),
    "no-attention-no-mid": dict(
        sample_size=8,
        block_out_channels=(8, 8),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
        mid_block_type=None,
    ),
}


def pair(config):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = diffusers.UNet2DModel(**config)
    ours = UNet2DModel(**config)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


BLOCK_NAMES = ("DownBlock2D", "AttnDownBlock2D", "UpBlock2D", "AttnUpBlock2D", "UNetMidBlock2D")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_same_block_classes_at_the_same_names(name):
    ours, theirs = pair(CONFIGS[name])
    their_types = {n: type(m).__name__ for n, m in theirs.named_modules()}
    our_types = {n: type(m).__name__ for n, m in ours.named_modules()}
    blocks = {n: t for n, t in their_types.items() if t in BLOCK_NAMES}
    assert blocks and {n: t for n, t in our_types.items() if t in BLOCK_NAMES} == blocks
    # Every module name both libraries have holds a class of the same name (Diffusers has a few extra
    # helper modules, e.g. each resnet's `nonlinearity`).
    for module_name in set(our_types) & set(their_types):
        assert our_types[module_name] == their_types[module_name], module_name
    assert list(ours.state_dict()) == list(theirs.state_dict())


def test_isinstance_and_children_as_in_diffusers():
    ours, theirs = pair(CONFIGS["cifar10-like"])
    ours_by_class = {cls: [isinstance(b, cls) for b in ours.down_blocks] for cls in (DownBlock2D, AttnDownBlock2D)}
    theirs_by_class = {
        cls.__name__: [isinstance(b, getattr(unet_2d_blocks, cls.__name__)) for b in theirs.down_blocks]
        for cls in (DownBlock2D, AttnDownBlock2D)
    }
    assert {cls.__name__: v for cls, v in ours_by_class.items()} == theirs_by_class
    assert ours_by_class[AttnDownBlock2D] == [False, True, False]
    assert [isinstance(b, AttnUpBlock2D) for b in ours.up_blocks] == [False, True, False]
    assert [isinstance(b, UpBlock2D) for b in ours.up_blocks] == [True, False, True]
    assert isinstance(ours.mid_block, UNetMidBlock2D)
    for our_block, their_block in zip([*ours.down_blocks, *ours.up_blocks], [*theirs.down_blocks, *theirs.up_blocks]):
        assert [n for n, _ in our_block.named_children()] == [n for n, _ in their_block.named_children()]
        assert hasattr(our_block, "attentions") == hasattr(their_block, "attentions")


def test_hooks_on_blocks_fire_as_in_diffusers():
    ours, theirs = pair(CONFIGS["cifar10-like"])
    x = torch.randn(1, 3, 16, 16)
    seen = {}
    for tag, model in (("ours", ours), ("theirs", theirs)):
        calls = []
        handles = [
            m.register_forward_hook(lambda mod, args, out, calls=calls: calls.append(type(mod).__name__))
            for m in model.modules()
            if type(m).__name__ in BLOCK_NAMES
        ]
        with torch.no_grad():
            model(x, 10)
        for h in handles:
            h.remove()
        seen[tag] = calls
    assert seen["ours"] == seen["theirs"] and "AttnDownBlock2D" in seen["ours"]


def test_gradient_checkpointing_reaches_the_same_blocks():
    ours, theirs = pair(CONFIGS["cifar10-like"])
    ours.enable_gradient_checkpointing()
    theirs.enable_gradient_checkpointing()
    flagged = [
        [n for n, m in model.named_modules() if getattr(m, "gradient_checkpointing", False)] for model in (ours, theirs)
    ]
    assert flagged[0] == flagged[1] and len(flagged[0]) == 7
    assert ours.is_gradient_checkpointing and theirs.is_gradient_checkpointing
    # Checkpointed gradients equal the plain ones.
    x = torch.randn(2, 3, 16, 16)
    ours.train()
    ours(x, 5).sample.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in ours.named_parameters()}
    ours.zero_grad()
    ours.disable_gradient_checkpointing()
    assert not ours.is_gradient_checkpointing
    ours(x, 5).sample.square().mean().backward()
    for n, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-5, atol=1e-6, msg=n)
