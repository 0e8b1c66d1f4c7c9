"""Small shared test fixtures."""

import torch

import ddpm


def tiny_unet(in_channels: int = 3, out_channels: int | None = None, seed: int = 0) -> ddpm.UNet2DModel:
    """An 8x8 one-level UNet (no attention) whose weights are perturbed away from the zero-initialised output, so that
    its predictions depend on the input. Deterministic for a given seed."""
    torch.manual_seed(seed)
    unet = ddpm.UNet2DModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=in_channels if out_channels is None else out_channels,
        block_out_channels=(8,),
        layers_per_block=1,
        down_block_types=("DownBlock2D",),
        up_block_types=("UpBlock2D",),
        norm_num_groups=4,
        add_attention=False,
    ).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return unet
