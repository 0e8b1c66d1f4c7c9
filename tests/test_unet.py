"""UNet2DModel: structure, config handling and numerical parity with Diffusers' UNet2DModel (random weights)."""

from __future__ import annotations

import copy
import time
import warnings

import pytest
import torch
from benchmarks.flops import unet_forward_flops

from ddpm import UNet2DModel, UNet2DOutput
from ddpm.models.embeddings import get_timestep_embedding

diffusers = pytest.importorskip("diffusers")
DUNet = diffusers.UNet2DModel

CIFAR10 = dict(
    sample_size=32,
    block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=None,
    downsample_padding=0,
    flip_sin_to_cos=False,
    freq_shift=1,
    norm_eps=1e-6,
    layers_per_block=2,
    mid_block_scale_factor=1,
    norm_num_groups=32,
    act_fn="silu",
    center_input_sample=False,
    in_channels=3,
    out_channels=3,
    time_embedding_type="positional",
)
CELEBAHQ256 = dict(
    CIFAR10,
    sample_size=256,
    block_out_channels=(128, 128, 256, 256, 512, 512),
    down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
)
TINY = dict(
    sample_size=16,
    block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    layers_per_block=1,
    norm_num_groups=8,
    attention_head_dim=None,
    flip_sin_to_cos=False,
    freq_shift=1,
    downsample_padding=0,
    norm_eps=1e-6,
)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


def make_pair(config: dict, seed: int = 0, **overrides):
    """A Diffusers model with random weights and ours with the same weights (both in eval mode)."""
    config = {**config, **overrides}
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = DUNet(**config).eval()
    ours = UNet2DModel(**config).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these small forwards do not gain from two, and a shared machine makes two much slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cifar_pair():
    return make_pair(CIFAR10)


@pytest.fixture(scope="module")
def tiny_pair():
    return make_pair(TINY)


# ---------------------------------------------------------------------------------------------------------------
# Structure and counts
# ---------------------------------------------------------------------------------------------------------------
def test_cifar10_structure_and_parameter_count(cifar_pair):
    ours, theirs = cifar_pair
    assert ours.num_parameters() == 35_746_307
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    assert list(ours_sd) == list(theirs_sd)  # same keys in the same order
    assert len(ours_sd) == 328
    assert all(ours_sd[k].shape == theirs_sd[k].shape for k in ours_sd)
    assert ours.num_parameters(only_trainable=True) == 35_746_307
    assert ours.dtype == torch.float32 and ours.device == torch.device("cpu")


def test_256px_structure_and_parameter_count():
    with torch.device("meta"):
        ours = UNet2DModel(**CELEBAHQ256)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = DUNet(**CELEBAHQ256)
    assert ours.num_parameters() == 113_673_219
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    assert list(ours_sd) == list(theirs_sd) and len(ours_sd) == 450
    assert all(ours_sd[k].shape == theirs_sd[k].shape for k in ours_sd)


def test_config_keys_match_diffusers_signature_order():
    import inspect

    ours = list(inspect.signature(UNet2DModel.__init__).parameters)[1:]
    theirs = list(inspect.signature(DUNet.__init__).parameters)[1:]
    assert ours == theirs
    for name in ours:
        assert (
            inspect.signature(UNet2DModel.__init__).parameters[name].default
            == inspect.signature(DUNet.__init__).parameters[name].default
        ), name


def test_config_and_attribute_access(tiny_pair):
    ours, theirs = tiny_pair
    assert ours.config.block_out_channels == (32, 64)
    assert ours.config["sample_size"] == 16
    assert isinstance(ours.conv_in, torch.nn.Conv2d)  # nn.Module attributes resolve first
    assert ours.conv_in.weight.shape == (32, 3, 3, 3)
    with pytest.warns(FutureWarning, match="config"):
        assert ours.in_channels == 3
    with pytest.raises(AttributeError):
        _ = ours.no_such_thing
    # A Diffusers config builds the same model.
    rebuilt = UNet2DModel.from_config(theirs.config)
    assert rebuilt.num_parameters() == ours.num_parameters()
    assert {k: v for k, v in rebuilt.config.items() if not k.startswith("_")} == {
        k: v for k, v in ours.config.items() if not k.startswith("_")
    }


# ---------------------------------------------------------------------------------------------------------------
# Parity
# ---------------------------------------------------------------------------------------------------------------
def test_cifar10_parity(cifar_pair):
    ours, theirs = cifar_pair
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        for t in (0, 137, 999):
            a = ours(x, t).sample
            b = theirs(x, t).sample
            assert rel_err(a, b) < 1e-5, t
        # per-sample timesteps
        ts = torch.tensor([3, 870])
        assert rel_err(ours(x, ts).sample, theirs(x, ts).sample) < 1e-5
        # from batch 4 on, the CPU forward runs on channels-last activations
        x4 = torch.randn(4, 3, 32, 32)
        out = ours(x4, 500).sample
        assert out.is_contiguous()
        assert rel_err(out, theirs(x4, 500).sample) < 1e-5


def test_256px_parity_at_small_resolution():
    ours, theirs = make_pair(CELEBAHQ256, sample_size=32)
    torch.manual_seed(2)
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        for t in (5, 999):
            assert rel_err(ours(x, t).sample, theirs(x, t).sample) < 1e-5


SMALL_VARIANTS = {
    "heads": dict(attention_head_dim=8),
    "odd_heads": dict(attention_head_dim=24),  # inner dim 48 < 64 channels, as Diffusers builds it
    "pad1": dict(downsample_padding=1),
    "pad0_flip_shift0": dict(flip_sin_to_cos=True, freq_shift=0),
    "flip_shift1": dict(flip_sin_to_cos=True, freq_shift=1),
    "center_input": dict(center_input_sample=True),
    "learned_variance_out6": dict(out_channels=6),
    "three_levels_attn_everywhere": dict(
        block_out_channels=(32, 32, 64),
        down_block_types=("AttnDownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "AttnUpBlock2D"),
        layers_per_block=2,
    ),
    "scale_shift": dict(resnet_time_scale_shift="scale_shift"),
    "scale_shift_attn_groups": dict(resnet_time_scale_shift="scale_shift", attn_norm_num_groups=4),
    "no_mid_block": dict(mid_block_type=None),
    "no_mid_attention": dict(add_attention=False),
    "mid_scale_factor": dict(mid_block_scale_factor=2.0),
    "time_dim_dropout_swish": dict(time_embedding_dim=96, dropout=0.1, act_fn="swish"),
    "odd_time_channels_rect": dict(block_out_channels=(24, 48), norm_num_groups=4, sample_size=(16, 24)),
}


@pytest.mark.parametrize("variant", sorted(SMALL_VARIANTS))
def test_small_config_parity(variant):
    overrides = SMALL_VARIANTS[variant]
    config = dict(TINY, **overrides)
    ours, theirs = make_pair(config, seed=3)
    size = config["sample_size"]
    h, w = (size, size) if isinstance(size, int) else size
    torch.manual_seed(4)
    x = torch.randn(4, config.get("in_channels", 3), h, w)  # batch 4: the channels-last CPU path
    with torch.inference_mode():
        for t in (0, 41, 999):
            a = ours(x, t).sample
            b = theirs(x, t).sample
            assert a.shape == b.shape
            assert rel_err(a, b) < 1e-5, (variant, t)


def test_train_mode_without_dropout_matches(tiny_pair):
    ours, theirs = tiny_pair
    x = torch.randn(2, 3, 16, 16)
    ours.train()
    theirs.train()
    try:
        assert rel_err(ours(x, 7).sample, theirs(x, 7).sample) < 1e-5
    finally:
        ours.eval()
        theirs.eval()


def test_timestep_embedding_matches_diffusers_and_anchor():
    from diffusers.models.embeddings import get_timestep_embedding as d_emb

    t = torch.tensor([0, 1, 10, 100, 999])
    for flip in (False, True):
        for shift in (0, 1):
            for dim in (128, 9):
                ours = get_timestep_embedding(t, dim, flip_sin_to_cos=flip, freq_shift=shift)
                theirs = d_emb(t, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
                torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    anchor = torch.tensor([0.84147, 0.046399, 0.0021544, 1e-4, 0.54030, 0.99892, 1.0, 1.0])
    got = get_timestep_embedding(torch.tensor([1]), 8, flip_sin_to_cos=False, freq_shift=1)[0]
    torch.testing.assert_close(got, anchor, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Forward behaviour
# ---------------------------------------------------------------------------------------------------------------
def test_timestep_forms_and_outputs(tiny_pair):
    ours, theirs = tiny_pair
    x = torch.randn(3, 3, 16, 16)
    with torch.inference_mode():
        ref = ours(x, torch.tensor([10, 10, 10])).sample
        for t in (10, 10.7, torch.tensor(10), torch.tensor([10]), torch.tensor(10.0), torch.tensor([10], device="cpu")):
            out = ours(x, t)
            torch.testing.assert_close(out.sample, ref, rtol=0, atol=0)
            torch.testing.assert_close(theirs(x, t).sample, ref, rtol=1e-5, atol=1e-5)
        # a float tensor is not truncated (as in Diffusers)
        assert rel_err(ours(x, torch.tensor(10.5)).sample, theirs(x, torch.tensor(10.5)).sample) < 1e-5
        out = ours(x, 3)
        assert isinstance(out, UNet2DOutput)
        assert out[0] is out.sample and out["sample"] is out.sample and out.to_tuple() == (out.sample,)
        tup = ours(x, 3, return_dict=False)
        assert isinstance(tup, tuple) and len(tup) == 1
        torch.testing.assert_close(tup[0], out.sample, rtol=0, atol=0)
        with pytest.raises(ValueError):
            ours(x, torch.zeros(2, 2))
        with pytest.raises(ValueError, match="class"):
            ours(x, 3, class_labels=torch.tensor([1, 2, 3]))


@pytest.mark.parametrize("batch", [2, 4])
def test_channels_last_input_and_weights(tiny_pair, batch):
    ours, theirs = tiny_pair
    x = torch.randn(batch, 3, 16, 16)
    xcl = x.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        ref = theirs(x, 5).sample
        plain = ours(x, 5).sample
        assert plain.is_contiguous() and rel_err(plain, ref) < 1e-5
        out = ours(xcl, 5).sample
        assert out.is_contiguous(memory_format=torch.channels_last)  # the input's layout is kept
        assert rel_err(out, ref) < 1e-5
        model_cl = copy.deepcopy(ours).to(memory_format=torch.channels_last)
        for inp in (x, xcl):
            assert rel_err(model_cl(inp, 5).sample, ref) < 1e-5
        assert model_cl(x, 5).sample.is_contiguous()
        nchw = copy.deepcopy(ours)
        nchw.set_fast_paths(channels_last=False)
        assert rel_err(nchw(x, 5).sample, ref) < 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_forward(tiny_pair, dtype):
    ours, theirs = tiny_pair
    x = torch.randn(2, 3, 16, 16)
    with torch.inference_mode():
        ref = ours(x, 20).sample
        low = copy.deepcopy(ours).to(dtype)
        assert low.dtype == dtype
        assert low.time_proj.freqs.dtype == torch.float32  # the frequency table is never rounded
        try:
            out = low(x.to(dtype), 20).sample
        except RuntimeError as err:  # pragma: no cover - depends on the CPU kernels of this torch build
            pytest.skip(f"{dtype} forward not supported on this CPU build: {err}")
        assert out.dtype == dtype
        assert rel_err(out, ref) < 5e-2
        their_low = copy.deepcopy(theirs).to(dtype)
        assert rel_err(out, their_low(x.to(dtype), 20).sample) < 5e-2
        x4 = torch.randn(4, 3, 16, 16)  # the channels-last CPU path
        assert rel_err(low(x4.to(dtype), 20).sample, ours(x4, 20).sample) < 5e-2


def test_gradient_checkpointing_same_gradients(tiny_pair):
    ours, _ = tiny_pair
    model = copy.deepcopy(ours).train()
    x = torch.randn(2, 3, 16, 16)

    def grads():
        model.zero_grad(set_to_none=True)
        model(x, torch.tensor([4, 600])).sample.square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = grads()
    model.enable_gradient_checkpointing()
    assert model.is_gradient_checkpointing
    ckpt = grads()
    model.disable_gradient_checkpointing()
    assert not model.is_gradient_checkpointing
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-7)


def test_gradients_match_diffusers(tiny_pair):
    ours, theirs = tiny_pair
    a, b = copy.deepcopy(ours).train(), copy.deepcopy(theirs).train()
    x = torch.randn(4, 3, 16, 16)  # batch 4: the channels-last CPU path, under autograd
    for m in (a, b):
        m(x, torch.tensor([4, 600, 0, 999])).sample.square().mean().backward()
    theirs_grads = dict(b.named_parameters())
    for name, p in a.named_parameters():
        torch.testing.assert_close(p.grad, theirs_grads[name].grad, rtol=1e-4, atol=1e-6)


COMPILE_TINY = dict(TINY, block_out_channels=(8, 16), norm_num_groups=4, sample_size=8)


def test_torch_compile_traces_without_graph_breaks():
    """Dynamo captures the whole forward in one graph (fullgraph=True), for tensor and int timesteps."""
    model = UNet2DModel(**COMPILE_TINY).eval()
    x = torch.randn(2, 3, 8, 8)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        ref = model(x, torch.tensor([3, 9])).sample
        assert rel_err(compiled(x, torch.tensor([3, 9])).sample, ref) < 1e-6
        ref = model(x, 5).sample
        assert rel_err(compiled(x, 5, return_dict=False)[0], ref) < 1e-6


@pytest.mark.slow
def test_torch_compile_inductor_tiny():
    """Full inductor compile (C++ code generation on CPU): about 30 s on an idle 2-core machine, much more when busy."""
    model = UNet2DModel(**COMPILE_TINY).eval()
    x = torch.randn(2, 3, 8, 8)
    t = torch.tensor([3, 9])
    start = time.perf_counter()
    compiled = torch.compile(model)
    with torch.inference_mode():
        ref = model(x, t).sample
        out = compiled(x, t).sample
    assert rel_err(out, ref) < 1e-5
    assert time.perf_counter() - start < 300


# ---------------------------------------------------------------------------------------------------------------
# Config validation
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("time_embedding_type", "fourier"),
        ("time_embedding_type", "learned"),
        ("class_embed_type", "timestep"),
        ("num_class_embeds", 10),
        ("act_fn", "gelu"),
        ("downsample_type", "resnet"),
        ("upsample_type", "resnet"),
        ("resnet_time_scale_shift", "spatial"),
        ("mid_block_type", "UNetMidBlock2DCrossAttn"),
        ("down_block_types", ("DownBlock2D", "SkipDownBlock2D")),
        ("up_block_types", ("AttnSkipUpBlock2D", "UpBlock2D")),
        ("layers_per_block", (1, 2)),
    ],
)
def test_unsupported_config_raises(key, value):
    with pytest.raises(NotImplementedError, match=key):
        UNet2DModel(**dict(TINY, **{key: value}))


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="down_block_types"):
        UNet2DModel(**dict(TINY, up_block_types=("UpBlock2D",)))
    with pytest.raises(ValueError, match="block_out_channels"):
        UNet2DModel(**dict(TINY, block_out_channels=(32, 64, 64)))
    with pytest.raises(ValueError, match="norm_num_groups"):
        UNet2DModel(**dict(TINY, block_out_channels=(30, 64)))


# ---------------------------------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------------------------------
def test_flops_cifar10():
    flops = unet_forward_flops(CIFAR10)
    assert abs(flops - 11.8e9) / 11.8e9 < 0.01
    assert flops == 11_758_469_120
    assert unet_forward_flops(CIFAR10, batch_size=16) == 16 * flops
    with torch.device("meta"):
        model = UNet2DModel(**CIFAR10)
    assert unet_forward_flops(model) == flops
    # 4x the convolutions, 16x the attention products (sequence length squared)
    assert unet_forward_flops(model, resolution=64) == 4 * 11_422_662_656 + 16 * 335_806_464
    assert unet_forward_flops(CIFAR10, include_linear=True) == 12_443_713_536


def test_flops_agree_with_torch_counter():
    """Diffusers' forward under FlopCounterMode counts convolutions and Linear layers (its CPU SDPA kernel is not
    counted): that must equal our count with the Linear layers and without the attention products."""
    from torch.utils.flop_counter import FlopCounterMode

    config = dict(TINY, attention_head_dim=8)
    _, theirs = make_pair(config)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        theirs(torch.randn(1, 3, 16, 16), 3)
    counted = counter.get_total_flops()
    full = unet_forward_flops(config, include_linear=True)
    attention_products = unet_forward_flops(config) - unet_forward_flops(
        dict(config, down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2, add_attention=False)
    )
    assert counted == full - attention_products


def test_google_ddpm_cifar10_config_json(tmp_path):
    """The 2022 config.json of google/ddpm-cifar10-32 (Diffusers 0.0.4: fewer keys) builds the 35.7M model."""
    import json

    config = {
        "_class_name": "UNet2DModel",
        "_diffusers_version": "0.0.4",
        "act_fn": "silu",
        "attention_head_dim": None,
        "block_out_channels": [128, 256, 256, 256],
        "center_input_sample": False,
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
        "downsample_padding": 0,
        "flip_sin_to_cos": False,
        "freq_shift": 1,
        "in_channels": 3,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-06,
        "norm_num_groups": 32,
        "out_channels": 3,
        "sample_size": 32,
        "time_embedding_type": "positional",
        "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    with torch.device("meta"):
        model = UNet2DModel.from_config(UNet2DModel.load_config(tmp_path))
    assert model.num_parameters() == 35_746_307
    assert model.config.attention_head_dim is None and model.config.dropout == 0.0
    assert unet_forward_flops(model) == 11_758_469_120


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_forward_with_cpu_timesteps(tiny_pair):
    ours, theirs = (copy.deepcopy(m).cuda() for m in tiny_pair)
    x = torch.randn(4, 3, 16, 16, device="cuda")
    with torch.inference_mode():
        ref = theirs(x, torch.tensor([1, 2, 3, 4], device="cuda")).sample
        for t in (torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 3, 4], device="cuda")):
            assert rel_err(ours(x, t).sample, ref) < 1e-4  # TF32 convolutions may be on
        assert rel_err(ours(x, torch.tensor(7)).sample, theirs(x, 7).sample) < 1e-4
        low = ours.to(torch.bfloat16)
        assert rel_err(low(x.bfloat16(), torch.tensor([1, 2, 3, 4])).sample, ref) < 5e-2


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("channels_last", [False, True])
def test_autocast_bf16_forward_and_backward_with_attention(batch, channels_last):
    # Mixed-precision training runs the UNet under autocast: the attention block must accept activations whose
    # dtype differs from its float32 residual (regression: the fused NCHW projection wrote bf16 into fp32).
    torch.manual_seed(0)
    model = UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        norm_num_groups=8,
        down_block_types=("AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D"),
    )
    x = torch.randn(batch, 3, 8, 8)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ref = model(x, 10).sample
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, 10).sample
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.1)
    out.float().square().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def _conv_kernels(fn) -> set[str]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages() if "conv" in e.key and ("mkldnn" in e.key or "slow" in e.key)}


@pytest.mark.parametrize("channels_last", [False, True])
def test_single_image_conv_goes_to_onednn_with_the_same_result(channels_last):
    from ddpm.models.blocks import Conv2d

    torch.manual_seed(0)
    conv = Conv2d(64, 64, kernel_size=3, padding=1)
    x = torch.randn(1, 64, 16, 16)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        expected = torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1)
        got = conv(x)
        assert _conv_kernels(lambda: conv(x)) == {"aten::mkldnn_convolution"}
        # Below the measured bounds (tiny maps or few channels) PyTorch's own choice stays.
        small = Conv2d(8, 8, kernel_size=3, padding=1)
        assert _conv_kernels(lambda: small(torch.randn(1, 8, 8, 8))) == {"aten::_slow_conv2d_forward"}
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # With gradients (training) the usual path runs, so autograd works as for nn.Conv2d.
    y = conv(x.clone().requires_grad_())
    y.sum().backward()
    assert conv.weight.grad is not None
