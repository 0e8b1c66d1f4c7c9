"""Parity of ddpm.DPMSolverMultistepScheduler with Diffusers' DPMSolverMultistepScheduler (0.42.1).

Whole sampling loops with a fixed fake model (the multistep state matters), compared step by step: "relative error"
is max|ours - ref| / max|ref| (``rel_err``), required <= 1e-6; most combinations are bit-equal, which the core tests
assert. Where Diffusers is wrong (NaN or crashes on degenerate schedules, the learned-variance slice, add_noise before
set_timesteps) ours is tested against the right answer and the difference is listed in docs/differences.md.
"""

from __future__ import annotations

import itertools
import json
import warnings

import numpy as np
import pytest
import torch

from ddpm import DDPMScheduler, DPMSolverMultistepScheduler
from ddpm.schedulers import SchedulerOutput
from ddpm.schedulers.diffusion_math import make_betas

diffusers = pytest.importorskip("diffusers")
from diffusers import DDPMScheduler as RefDDPM  # noqa: E402
from diffusers import DPMSolverMultistepScheduler as Ref  # noqa: E402

RTOL = 1e-6
SHAPE = (2, 3, 4, 4)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    ours, ref = ours.double(), ref.double()
    assert torch.isfinite(ref).all() and torch.isfinite(ours).all()
    return ((ours - ref).abs().max() / ref.abs().max().clamp(min=1e-30)).item()


def pair(**config):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DPMSolverMultistepScheduler(**config), Ref(**config)


def fake_model(x: torch.Tensor, t, channels_out: int | None = None) -> torch.Tensor:
    """A fixed smooth function of (x, t): what a trained network would be to the solver."""
    out = torch.sin(x * 1.3 + float(t) / 300.0) * 0.9 + 0.05 * x
    if channels_out is not None and channels_out != x.shape[1]:
        out = torch.cat([out, torch.tanh(x)], dim=1)  # a variance half that the solver must ignore
    return out


def sample_loop(
    scheduler, n=None, seed=0, shape=SHAPE, channels_out=None, generator="one", timesteps=None, ref_from_start=False
):
    """Run a whole loop; return every prev_sample. ``generator``: "one", "list", "global" or "variance_noise".
    ``ref_from_start``: tell Diffusers to start at position 0 (it starts at 1 when the first timestep repeats)."""
    if timesteps is not None:
        scheduler.set_timesteps(timesteps=timesteps)
    else:
        scheduler.set_timesteps(n)
    if ref_from_start and isinstance(scheduler, Ref):
        scheduler.set_begin_index(0)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    if generator == "list":
        gen = [torch.Generator().manual_seed(seed + 1 + i) for i in range(shape[0])]
    elif generator == "global":
        torch.manual_seed(seed + 7)
        gen = None
    else:
        gen = g
    outs = []
    for k, t in enumerate(scheduler.timesteps):
        kwargs = {}
        if generator == "variance_noise":
            kwargs["variance_noise"] = torch.randn(*shape, generator=torch.Generator().manual_seed(100 + k))
        else:
            kwargs["generator"] = gen
        x = scheduler.step(fake_model(x, t, channels_out), t, x, **kwargs).prev_sample
        outs.append(x)
    return outs


def assert_loops_match(ours, ref, n=None, exact=False, **kwargs):
    o = sample_loop(ours, n, **kwargs)
    r = sample_loop(ref, n, **kwargs)
    assert torch.equal(ours.timesteps, ref.timesteps)
    assert torch.equal(ours.sigmas, ref.sigmas)
    assert len(o) == len(r)
    for k, (a, b) in enumerate(zip(o, r)):
        if exact:
            assert torch.equal(a, b), f"step {k}: rel {rel_err(a, b)}"
        else:
            assert rel_err(a, b) <= RTOL, f"step {k}"
    assert ours.lower_order_nums == ref.lower_order_nums and ours.step_index == ref.step_index
    return o


# ---------------------------------------------------------------------------------------------------------------
# Core and the solver grid
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 3, 5, 10, 25, 50, 999])
def test_core_dpmsolver_pp_order2_bit_equal(n):
    ours, ref = pair()
    assert_loops_match(ours, ref, n, exact=True)
    assert ours.timesteps.dtype == torch.int64 and ours.sigmas.dtype == torch.float32


ALGORITHMS = ["dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver"]


# sde-dpmsolver has no third order (refused; Diffusers crashes): test_sde_dpmsolver_order3_refused
@pytest.mark.parametrize(
    "algorithm, order", [(a, k) for a in ALGORITHMS for k in (1, 2, 3) if (a, k) != ("sde-dpmsolver", 3)]
)
def test_solver_grid(algorithm, order):
    finals = ["zero", "sigma_min"] if algorithm.endswith("++") else ["sigma_min"]
    combos = itertools.product(["midpoint", "heun"], [True, False], [False, True], finals)
    for k, (solver_type, lower_final, euler_final, final) in enumerate(combos):
        n = (3, 10, 25)[k % 3]
        ours, ref = pair(
            algorithm_type=algorithm,
            solver_order=order,
            solver_type=solver_type,
            lower_order_final=lower_final,
            euler_at_final=euler_final,
            final_sigmas_type=final,
        )
        assert_loops_match(ours, ref, n, exact=True)


SCHEDULES = {
    "linear": {},
    "scaled_linear": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    "squaredcos_cap_v2": {"beta_schedule": "squaredcos_cap_v2"},
    "linear_zero_snr": {"rescale_betas_zero_snr": True},
    "trained": {"trained_betas": np.linspace(1e-4, 0.02, 1000) ** 1.1},
}


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_prediction_types_and_schedules(schedule, prediction_type):
    for algorithm, thresholding in itertools.product(["dpmsolver++", "sde-dpmsolver++", "dpmsolver"], [False, True]):
        config = dict(SCHEDULES[schedule], prediction_type=prediction_type, algorithm_type=algorithm)
        config.update(thresholding=thresholding, sample_max_value=1.5, dynamic_thresholding_ratio=0.9)
        if algorithm == "dpmsolver":
            config["final_sigmas_type"] = "sigma_min"
        ours, ref = pair(**config)
        assert torch.equal(ours.alphas_cumprod, ref.alphas_cumprod) and torch.equal(ours.lambda_t, ref.lambda_t)
        assert_loops_match(ours, ref, 12)


@pytest.mark.parametrize("schedule", ["sigmoid", "laplace"])
def test_schedules_diffusers_lacks(schedule):
    # Diffusers' DPM-Solver raises NotImplementedError for these; with the same betas given explicitly it agrees.
    ours = DPMSolverMultistepScheduler(beta_schedule=schedule)
    assert torch.equal(ours.betas, make_betas(1000, beta_schedule=schedule))
    _, ref = pair(trained_betas=ours.betas.numpy())
    assert_loops_match(ours, ref, 10, exact=True)


# ---------------------------------------------------------------------------------------------------------------
# Timesteps and noise levels
# ---------------------------------------------------------------------------------------------------------------
SPACINGS = [
    {"timestep_spacing": "linspace"},
    {"timestep_spacing": "leading"},
    {"timestep_spacing": "leading", "steps_offset": 1},
    {"timestep_spacing": "trailing"},
    {"timestep_spacing": "trailing", "steps_offset": 1},  # the offset applies to leading only
]


@pytest.mark.parametrize("spacing", SPACINGS, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_spacings_all_step_counts(spacing):
    for n in [1, 2, 3, 5, 10, 25, 50, 999, 1000]:
        ours, ref = pair(**spacing)
        if n == 1000 and spacing["timestep_spacing"] == "leading":
            with pytest.raises(ValueError, match="leading"):
                ours.set_timesteps(n)  # Diffusers: every timestep 0, IndexError at the first step
            continue
        if n == 999 and spacing.get("steps_offset") and spacing["timestep_spacing"] == "leading":
            with pytest.raises(ValueError, match="outside"):
                ours.set_timesteps(n)  # Diffusers: timestep 1000 (> T - 1) silently clamped to the last level
            continue
        ours.set_timesteps(n)
        ref.set_timesteps(n)
        assert torch.equal(ours.timesteps, ref.timesteps) and torch.equal(ours.sigmas, ref.sigmas)
        assert ours.num_inference_steps == ref.num_inference_steps
        if n <= 50:
            assert_loops_match(*pair(**spacing), n, exact=True)


@pytest.mark.parametrize("final", ["zero", "sigma_min"])
def test_999_steps_order3(final):
    ours, ref = pair(solver_order=3, final_sigmas_type=final, algorithm_type="sde-dpmsolver++")
    assert_loops_match(ours, ref, 999, exact=True, shape=(1, 1, 2, 2))


RULES = ["use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas"]


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2", "linear_zero_snr"])
def test_noise_level_rules(rule, schedule):
    if rule == "use_beta_sigmas":
        pytest.importorskip("scipy")
    for n, final in [(1, "zero"), (5, "sigma_min"), (10, "zero"), (25, "zero"), (50, "sigma_min")]:
        ours, ref = pair(**SCHEDULES[schedule], **{rule: True}, final_sigmas_type=final)
        assert_loops_match(ours, ref, n, exact=True, ref_from_start=True)


def test_repeated_first_timestep_starts_at_position_0():
    # Karras levels on the cosine schedule map the first two levels to timestep 998 (not rounded, truncated). Diffusers
    # looks the first timestep up by value, takes its second occurrence, skips a level and fails at the last step.
    ours, ref = pair(beta_schedule="squaredcos_cap_v2", use_karras_sigmas=True)
    out = sample_loop(ours, 5)
    assert ours.timesteps.tolist()[:2] == [998, 998] and ours.step_index == 5 and torch.isfinite(out[-1]).all()
    with pytest.raises(IndexError):
        sample_loop(ref, 5)
    ours.set_timesteps(5)
    assert ours.index_for_timestep(998) == 0 and ours.index_for_timestep(ours.timesteps[1]) == 1


def test_noise_level_rules_1000_steps():
    for rule in ["use_karras_sigmas", "use_lu_lambdas"]:
        ours, ref = pair(**{rule: True})
        ours.set_timesteps(1000)
        ref.set_timesteps(1000)
        assert torch.equal(ours.timesteps, ref.timesteps) and torch.equal(ours.sigmas, ref.sigmas)


def test_lambda_min_clipped():
    for spacing in ["linspace", "leading", "trailing"]:
        config = dict(beta_schedule="squaredcos_cap_v2", lambda_min_clipped=-5.1, timestep_spacing=spacing)
        ours, ref = pair(**config)
        assert_loops_match(ours, ref, 20, exact=True)
        assert ours._last_timestep() == 996  # the 4 timesteps with λ_t < -5.1 are never visited


def test_custom_timesteps():
    ours, ref = pair()
    assert_loops_match(ours, ref, timesteps=[999, 800, 500, 200, 31, 4], exact=True)
    assert ours.num_inference_steps == 6


# ---------------------------------------------------------------------------------------------------------------
# Model outputs with a variance half, noise, state
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["dpmsolver++", "sde-dpmsolver++"])
def test_learned_range_three_channels(algorithm):
    ours, ref = pair(variance_type="learned_range", algorithm_type=algorithm)
    assert_loops_match(ours, ref, 10, exact=True, channels_out=6)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_learned_range_drops_second_half_for_any_channels(prediction_type):
    # Diffusers slices [:, :3] (wrong unless C = 3) and only for epsilon; ours drops the second C channels.
    ours = DPMSolverMultistepScheduler(variance_type="learned_range", prediction_type=prediction_type)
    plain = Ref(prediction_type=prediction_type)
    shape = (2, 1, 4, 4)
    ours.set_timesteps(8)
    plain.set_timesteps(8)
    x = y = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    for t in ours.timesteps:
        out = fake_model(x, t, channels_out=2)
        assert out.shape[1] == 2
        x = ours.step(out, t, x).prev_sample
        y = plain.step(fake_model(y, t)[:, :1], t, y).prev_sample
        assert torch.equal(x, y)


def test_learned_variance_and_int_timesteps():
    ours, ref = pair(variance_type="learned", solver_order=3)
    for s in (ours, ref):
        s.set_timesteps(7)
    x = y = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    for t in ours.timesteps.tolist():  # Python ints
        (x,) = ours.step(fake_model(x, t, channels_out=6), t, x, return_dict=False)
        y = ref.step(fake_model(y, t, channels_out=6), t, y).prev_sample
        assert torch.equal(x, y)


def test_half_precision_is_not_worse():
    # Coefficients are applied at float32 precision (Diffusers rounds them to the half dtype first).
    def run(cls, dtype):
        s = cls(solver_order=3)
        s.set_timesteps(10)
        x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)).to(dtype)
        for t in s.timesteps:
            x = s.step(fake_model(x.double(), t).to(dtype), t, x).prev_sample
            assert x.dtype == dtype
        return x.double()

    exact = run(DPMSolverMultistepScheduler, torch.float64)
    for dtype in (torch.float16, torch.bfloat16):
        ours = (run(DPMSolverMultistepScheduler, dtype) - exact).abs().max()
        theirs = (run(Ref, dtype) - exact).abs().max()
        assert ours <= theirs and ours / exact.abs().max() < 3e-2


@pytest.mark.parametrize("generator", ["list", "global", "variance_noise"])
@pytest.mark.parametrize("algorithm", ["sde-dpmsolver++", "sde-dpmsolver"])
def test_sde_noise_sources(generator, algorithm):
    final = "zero" if algorithm.endswith("++") else "sigma_min"
    ours, ref = pair(algorithm_type=algorithm, final_sigmas_type=final)
    assert_loops_match(ours, ref, 10, exact=True, generator=generator)


def test_sde_noise_drawn_every_step_with_learned_range():
    ours, ref = pair(algorithm_type="sde-dpmsolver++", variance_type="learned_range")
    assert_loops_match(ours, ref, 5, exact=True, channels_out=6, generator="list")


def test_state_matches_during_loop():
    ours, ref = pair(solver_order=3)
    ours.set_timesteps(6)
    ref.set_timesteps(6)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    assert ours.step_index is None and ours.begin_index is None and ours.model_outputs == [None] * 3
    for t in ours.timesteps:
        out = fake_model(x, t)
        a = ours.step(out, t, x)
        ref.step(out, t, x)
        assert isinstance(a, SchedulerOutput) and list(a.keys()) == ["prev_sample"]
        assert ours.step_index == ref.step_index and ours.lower_order_nums == ref.lower_order_nums
        for m, r in zip(ours.model_outputs, ref.model_outputs):
            assert (m is None) == (r is None) and (m is None or torch.equal(m, r))
        x = a.prev_sample
    ours.set_timesteps(6)  # a new loop resets the state
    assert ours.step_index is None and ours.lower_order_nums == 0 and ours.model_outputs == [None] * 3


def test_begin_index_and_add_noise_img2img():
    ours, ref = pair(solver_order=2)
    for s in (ours, ref):
        s.set_timesteps(20)
        s.set_begin_index(8)
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4))
    eps = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    t = ours.timesteps[8:9].repeat(2)
    xa, xb = ours.add_noise(x0, eps, t), ref.add_noise(x0, eps, t)
    assert torch.equal(xa, xb)
    for t in ours.timesteps[8:]:
        xa = ours.step(fake_model(xa, t), t, xa).prev_sample
        xb = ref.step(fake_model(xb, t), t, xb).prev_sample
        assert torch.equal(xa, xb)
    assert ours.step_index == ref.step_index == 20


def test_add_noise_after_set_timesteps_matches():
    ours, ref = pair(use_karras_sigmas=True)
    ours.set_timesteps(10)
    ref.set_timesteps(10)
    x0, eps = torch.randn(SHAPE), torch.randn(SHAPE)
    t = ours.timesteps[[2, 7]]
    assert torch.equal(ours.add_noise(x0, eps, t), ref.add_noise(x0, eps, t))


def test_add_noise_before_set_timesteps_is_the_forward_process():
    # Diffusers pairs timesteps T-1..0 with its ascending sigmas before set_timesteps (t = 999 gets t = 0's level).
    ours = DPMSolverMultistepScheduler()
    x0, eps = torch.randn(SHAPE, dtype=torch.float64), torch.randn(SHAPE, dtype=torch.float64)
    t = torch.tensor([999, 10])
    a = ours.alphas_cumprod.double()[t].reshape(-1, 1, 1, 1)
    expected = a.sqrt() * x0 + (1 - a).sqrt() * eps
    assert (ours.add_noise(x0, eps, t) - expected).abs().max() < 1e-6
    assert torch.equal(ours.add_noise(x0.float(), eps.float(), 999)[0], ours.add_noise(x0.float(), eps.float(), t)[0])


@pytest.mark.parametrize("algorithm", ["sde-dpmsolver++", "dpmsolver"])
def test_step_reads_no_tensor_values(monkeypatch, algorithm):
    # No host-device sync: the loop never reads a tensor's value back (on a GPU each read would be a sync).
    ours = DPMSolverMultistepScheduler(
        algorithm_type=algorithm, solver_order=3, thresholding=True, final_sigmas_type="sigma_min"
    )
    ours.set_timesteps(8)
    x = torch.randn(SHAPE)
    outputs = [fake_model(x, t) for t in range(8)]

    def forbidden(*args, **kwargs):
        raise AssertionError("a tensor value was read inside step()")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy", "cpu"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    for k, t in enumerate(ours.timesteps):
        x = ours.step(outputs[k], t, x).prev_sample
    monkeypatch.undo()
    assert torch.isfinite(x).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("algorithm", ["dpmsolver++", "sde-dpmsolver++"])
def test_cuda_loop_without_sync(algorithm):
    config = dict(algorithm_type=algorithm, solver_order=3, thresholding=True, sample_max_value=2.0)
    cpu, gpu = DPMSolverMultistepScheduler(**config), DPMSolverMultistepScheduler(**config)
    cpu.set_timesteps(10)
    gpu.set_timesteps(10, device="cuda")
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    y = x.cuda()
    generator = torch.Generator("cuda").manual_seed(1)  # drawn on the device (a CPU generator means a copy)
    for tc, tg in zip(cpu.timesteps, gpu.timesteps):
        out = fake_model(x, tc)
        x = cpu.step(out, tc, x).prev_sample if algorithm == "dpmsolver++" else x
        out = out.cuda()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            y = gpu.step(out, tg, y, generator=generator).prev_sample
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(y).all()
    if algorithm == "dpmsolver++":
        assert (y.cpu() - x).abs().max() <= 1e-5 * x.abs().max()


def test_scale_model_input_and_constants():
    ours, ref = pair()
    x = torch.randn(SHAPE)
    assert ours.scale_model_input(x, 5) is x
    assert ours.init_noise_sigma == ref.init_noise_sigma == 1.0 and ours.order == ref.order == 1
    assert len(ours) == 1000
    assert torch.equal(ours.sigmas, ref.sigmas)  # the T training levels before set_timesteps, as Diffusers


# ---------------------------------------------------------------------------------------------------------------
# Where Diffusers is wrong
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
def test_repeated_timestep_linspace_1000_is_finite(solver_type):
    # linspace n = T repeats one timestep: a step of length h = 0. Diffusers' third-order weights divide by h (NaN
    # from there on); ours takes the exact first-order step there (here the identity) and after it.
    ours, ref = pair(solver_order=3, solver_type=solver_type)
    ours.set_timesteps(1000)
    ref.set_timesteps(1000)
    ts = ours.timesteps.tolist()
    dup = next(i for i in range(1, len(ts)) if ts[i] == ts[i - 1])
    x = y = torch.randn(1, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    for k, t in enumerate(ours.timesteps):
        nx = ours.step(fake_model(x, t), t, x).prev_sample
        y = ref.step(fake_model(y, t), t, y).prev_sample
        if k < dup - 1:
            assert torch.equal(nx, y)
        elif k == dup - 1:
            assert torch.equal(nx, x) and torch.isnan(y).all()
        x = nx
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("solver_type, order", [("midpoint", 3), ("heun", 2)])
def test_trailing_sigma_min_last_step_is_identity(solver_type, order):
    # trailing with n >= 667 ends at t = 0, whose level equals sigma_min: Diffusers' last step is 0/0 (NaN).
    config = dict(timestep_spacing="trailing", final_sigmas_type="sigma_min", solver_type=solver_type)
    ours, ref = pair(**config, solver_order=order)
    o = sample_loop(ours, 1000, shape=(1, 1, 2, 2))
    r = sample_loop(ref, 1000, shape=(1, 1, 2, 2))
    for a, b in zip(o[:-1], r[:-1]):
        assert torch.equal(a, b)
    assert torch.equal(o[-1], o[-2]) and torch.isnan(r[-1]).all()


def test_sde_dpmsolver_order3_refused():
    # Diffusers has no third-order SDE-DPM-Solver and fails at the third step (UnboundLocalError).
    with pytest.raises(ValueError, match="solver_order=3"):
        DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver", solver_order=3, final_sigmas_type="sigma_min")


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "config, match",
    [
        ({"algorithm_type": "dpm"}, "algorithm_type='dpm'.*allowed"),
        ({"solver_type": "rk4"}, "solver_type='rk4'.*allowed"),
        ({"solver_order": 0}, "solver_order=0.*1, 2, 3"),
        ({"solver_order": 4}, "solver_order=4"),
        ({"solver_order": 2.0}, "solver_order=2.0"),
        ({"final_sigmas_type": "one"}, "final_sigmas_type"),
        ({"algorithm_type": "dpmsolver"}, "final_sigmas_type='zero'.*sigma_min"),
        ({"prediction_type": "flow_prediction"}, "prediction_type"),
        ({"use_flow_sigmas": True}, "use_flow_sigmas"),
        ({"use_dynamic_shifting": True}, "use_dynamic_shifting"),
        ({"use_karras_sigmas": True, "use_lu_lambdas": True}, "at most one"),
        ({"variance_type": "other"}, "variance_type"),
        ({"beta_schedule": "cubic"}, "beta_schedule"),
        ({"timestep_spacing": "uniform"}, "timestep_spacing"),
        ({"num_train_timesteps": 0}, "num_train_timesteps"),
        ({"dynamic_thresholding_ratio": 1.5}, "dynamic_thresholding_ratio"),
    ],
)
def test_bad_config(config, match):
    with pytest.raises(ValueError, match=match):
        DPMSolverMultistepScheduler(**config)


def test_bad_calls():
    s = DPMSolverMultistepScheduler()
    x = torch.randn(SHAPE)
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(x, 999, x)
    for n in (0, 1001, 2.5, None):
        with pytest.raises(ValueError, match="num_inference_steps"):
            s.set_timesteps(n)
    with pytest.raises(ValueError, match="only one"):
        s.set_timesteps(5, timesteps=[9, 4])
    for bad in ([4, 9], [1000, 4], [5, -1], []):
        with pytest.raises(ValueError, match="timesteps"):
            s.set_timesteps(timesteps=bad)
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        DPMSolverMultistepScheduler(use_karras_sigmas=True).set_timesteps(timesteps=[9, 4])
    with pytest.raises(ValueError, match="mu"):
        s.set_timesteps(5, mu=0.5)
    s.set_timesteps(3)
    with pytest.raises(ValueError, match="not in the current schedule"):
        s.step(x, 998, x)
    assert s.step_index is None  # nothing changed
    with pytest.raises(ValueError, match="model_output has shape"):
        s.step(x[:, :2], s.timesteps[0], x)
    sde = DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")
    sde.set_timesteps(3)
    with pytest.raises(ValueError, match="variance_noise"):
        sde.step(x, sde.timesteps[0], x, variance_noise=torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="generator"):
        sde.step(x, sde.timesteps[0], x, generator=[torch.Generator()] * 3)
    assert sde.step_index is None and sde.model_outputs == [None, None]
    for t in s.timesteps:
        x = s.step(x, t, x).prev_sample
    with pytest.raises(ValueError, match="set_timesteps again"):
        s.step(x, 0, x)
    with pytest.raises(ValueError, match="begin_index"):
        s.set_begin_index(3)


# ---------------------------------------------------------------------------------------------------------------
# Files and swaps
# ---------------------------------------------------------------------------------------------------------------
def test_config_keys_and_defaults_match_diffusers():
    ours, ref = pair()
    ref_config = {k: v for k, v in ref.config.items() if not k.startswith("_")}
    assert {k: v for k, v in ours.config.items() if not k.startswith("_")} == ref_config
    assert ours.config["_use_default_values"] == sorted(ref.config["_use_default_values"], key=list(ref_config).index)


def test_files_round_trip_both_ways(tmp_path):
    config = dict(algorithm_type="sde-dpmsolver++", solver_order=3, use_karras_sigmas=True, timestep_spacing="leading")
    ours, ref = pair(**config)
    ours.save_pretrained(tmp_path / "ours")
    ref.save_pretrained(tmp_path / "ref")
    data = json.loads((tmp_path / "ours" / "scheduler_config.json").read_text())
    assert data["_class_name"] == "DPMSolverMultistepScheduler"
    loaded_ref = Ref.from_pretrained(tmp_path / "ours")
    loaded_ours = DPMSolverMultistepScheduler.from_pretrained(tmp_path / "ref")
    assert_loops_match(loaded_ours, loaded_ref, 10, exact=True)


def test_swap_from_ddpm_config():
    ddpm = DDPMScheduler(timestep_spacing="leading", steps_offset=1)
    ours = DPMSolverMultistepScheduler.from_config(ddpm.config)
    ref = Ref.from_config(RefDDPM(timestep_spacing="leading", steps_offset=1).config)
    # variance_type was left at DDPM's default, so the swap takes DPM-Solver's own (None), as Diffusers does
    assert ours.config.variance_type is None is ref.config.variance_type and ours.config.timestep_spacing == "leading"
    explicit = DPMSolverMultistepScheduler.from_config(DDPMScheduler(variance_type="fixed_small").config)
    assert explicit.config.variance_type == "fixed_small"
    assert_loops_match(ours, ref, 10, exact=True)


def test_other_schedulers_values_are_mapped():
    s = DPMSolverMultistepScheduler(algorithm_type="deis", solver_type="bh2")
    assert s.config.algorithm_type == "dpmsolver++" and s.config.solver_type == "midpoint"
