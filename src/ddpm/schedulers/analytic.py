"""Analytic-DPM (Bao, Li, Zhu, Zhang, ICLR 2022, arXiv:2201.06503): the optimal reverse variance of a trained
diffusion model from the second moment of its noise prediction, for DDPM- and DDIM-type sampling at any number of
steps.

Index convention: that of the family (:mod:`ddpm.schedulers.common`): t = 0..T-1, paper (Ho et al.) t = ours + 1.
The Analytic-DPM paper and code prepend β = 0 to the schedule, so their n = ours + 1 and their n = 0 (the clean data)
is our "-1", with ᾱ_{-1} = 1.

Notation. ᾱ = ``alphas_cumprod``, β̄ = 1 - ᾱ. A sampling step goes from a visited timestep r to the next visited
one s < r (s = -1 after the last one): α_skip = ᾱ_r / ᾱ_s, β_skip = 1 - α_skip, β̃ = β_skip β̄_s / β̄_r (the
posterior variance of the skip). d = C·H·W.

* **The moment.** Γ_r = E ||ε̂(x_r, r)||² / d over x_r ~ q(x_r | x_0), x_0 from the training data: the paper's
  β̄_n E_{q_n} ||∇ log q_n(x_n)||² / d of Theorem 1 with the score -ε̂/√β̄ of the model. Estimated once per model
  by Monte Carlo (:func:`estimate_moments`) and stored in the model folder (:class:`AnalyticMoments`,
  ``analytic_dpm.json``). ε̂ is the model's noise prediction (for ``sample`` / ``v_prediction`` models, the ε
  implied by their output).
* **The expected covariance of x̂0** (Theorem 1): c_r = β̄_r / ᾱ_r · (1 - Γ_r), clipped to [0, 1]: the bounds of
  Theorem 2 for data in [-1, 1] (0 for a deterministic x0, ((b - a) / 2)² = 1 at most).
* **Analytic-DDPM** (``mean_type="ddpm"``): the mean is the posterior mean with the (clipped) x̂0,
  c_x0 x̂0 + c_xt x_r with c_x0 = √ᾱ_s β_skip / β̄_r, c_xt = √α_skip β̄_s / β̄_r (Ho et al. eq. 7 on the skip),
  and σ² = β̃ + ᾱ_s β_skip² / β̄_r² · c_r.
* **Analytic-DDIM** (``mean_type="ddim"``, ``eta`` = η): λ² = η² β̃ (Song et al.'s σ² for η), the mean
  √ᾱ_s x̂0 + √(β̄_s - λ²) ε̂ and σ² = λ² + (√ᾱ_s - √((β̄_s - λ²) ᾱ_r / β̄_r))² · c_r, which is Theorem 1's
  λ² + (√(β̄_r / α_skip) - √(β̄_s - λ²))² (1 - Γ_r) with the clipped c_r. With η = 1 (λ² = β̃) the mean is
  DDPM's and the two forms agree.
* **Clipping the variance of the last steps** (the authors' ``clip_sigma_idx`` / ``clip_pixel``): the steps whose
  target s is one of the ``clip_variance_steps`` smallest visited timesteps have σ ≤ k · (2/255) · √(π/2),
  k = ``clip_variance_pixels``: the expected absolute noise σ √(2/π) is then at most k pixel levels (2/255 in
  [-1, 1] units). The authors use one step, k = 2 for Analytic-DDPM and k = 1 for Analytic-DDIM (CIFAR-10, linear
  schedule); those are the defaults here.
* The last step (to the clean data) returns the clipped x̂0 and adds no noise. Every other step draws one noise
  tensor (even where its σ is 0), so that the random stream does not depend on the table.

For a perfect model Γ_r ≤ 1 and the variance is optimal in the sense of Theorem 1 (it minimises the KL between the
forward and reverse processes among Gaussians with the given mean); with Γ ≡ 1 it reduces to DDPM's β̃
(``fixed_small``) and to DDIM's λ².
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import io as ddpm_io
from ..config import register_to_config
from ..noise import randn_tensor
from ..outputs import BaseOutput
from .common import (
    LEARNED_VARIANCE_TYPES,
    PREDICTION_TYPES,
    TIMESTEP_SPACINGS,
    VARIANCE_TYPES,
    SchedulerMixin,
    check_choice,
    check_noise_pair,
    check_num_inference_steps,
    check_num_train_timesteps,
    spaced_timesteps,
    threshold_sample,
)
from .diffusion_math import BETA_SCHEDULES, make_betas

__all__ = [
    "MEAN_TYPES",
    "MOMENTS_FILE_NAME",
    "AnalyticDPMScheduler",
    "AnalyticDPMSchedulerOutput",
    "AnalyticMoments",
    "estimate_moments",
    "weights_sha256",
]

#: The file, at the root of a pipeline folder (beside ``model_index.json``; Diffusers ignores it), that holds a
#: model's Analytic-DPM moment table.
MOMENTS_FILE_NAME = "analytic_dpm.json"
#: The reverse means Analytic-DPM gives a variance for.
MEAN_TYPES = ("ddpm", "ddim")
#: The weight precisions a table carries a fingerprint for (a UNet cast to one of them is recognised).
FINGERPRINT_DTYPES = ("float32", "float16", "bfloat16")
#: The authors' pixel levels k for the clipped last step (CIFAR-10, linear schedule), by mean type.
DEFAULT_CLIP_PIXELS = {"ddpm": 2.0, "ddim": 1.0}

_FORMAT = "ddpm-analytic-dpm-moments"
_FORMAT_VERSION = 1


def _recompute_hint(folder: str | None = None) -> str:
    return f"compute one with `ddpm analytic-dpm --model {folder or 'FOLDER'} --data SOURCE`"


# ---------------------------------------------------------------------------------------------------------------
# Fingerprints
# ---------------------------------------------------------------------------------------------------------------
def _unwrap(module):
    return getattr(module, "_orig_mod", module)


def weights_sha256(unet_or_state_dict, dtype: torch.dtype | None = None) -> str:
    """sha256 of a UNet's weights: every state-dict entry, by sorted name, as its name, dtype, shape and raw bytes.

    ``dtype`` casts the floating-point entries first (a float32 model's fingerprint "as float16" is that of the
    same model loaded with ``dtype=torch.float16``).
    """
    state = unet_or_state_dict
    if not isinstance(state, dict):
        state = _unwrap(state).state_dict()
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensor = tensor.cpu().contiguous()
        digest.update(f"{name}|{str(tensor.dtype).removeprefix('torch.')}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _weights_fingerprints(unet) -> dict[str, str]:
    state = _unwrap(unet).state_dict()
    floating = {t.dtype for t in state.values() if t.is_floating_point()}
    if floating and floating != {torch.float32}:
        raise ValueError(
            f"estimate the moments with float32 weights (the UNet has {sorted(str(d) for d in floating)}): the table "
            "records their fingerprint in float32, float16 and bfloat16"
        )
    return {name: weights_sha256(state, getattr(torch, name)) for name in FINGERPRINT_DTYPES}


def _schedule_values(scheduler) -> np.ndarray:
    """The scheduler's float32 ``alphas_cumprod`` as float64 values (exact)."""
    return scheduler.alphas_cumprod.detach().cpu().to(torch.float32).numpy().astype(np.float64)


def _schedule_sha256(values: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(values, dtype="<f4").tobytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# The moment table
# ---------------------------------------------------------------------------------------------------------------
@dataclass(eq=False)
class AnalyticMoments:
    """Γ_t = E ||ε̂(x_t, t)||² / d for t = 0..T-1 of one model, with what it was computed for.

    Attributes:
        moments: [T] float64, Γ_t (NaN where it was not estimated).
        standard_errors: [T] float64, the Monte Carlo standard error of each Γ_t (NaN where not estimated).
        num_samples_per_timestep: the number of (x_0, ε) draws behind each Γ_t.
        alphas_cumprod: [T] float64, the exact values of the float32 ᾱ of the schedule it was computed with.
        prediction_type: how the model output was read as ε̂ (``epsilon``, ``sample``, ``v_prediction``).
        weights_sha256: :func:`weights_sha256` of the UNet in float32, float16 and bfloat16.
        metadata: free-form facts (data source, seed, command line, ...), written as given.
    """

    moments: np.ndarray
    standard_errors: np.ndarray
    num_samples_per_timestep: int
    alphas_cumprod: np.ndarray
    prediction_type: str
    weights_sha256: dict[str, str]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.moments = np.asarray(self.moments, dtype=np.float64).reshape(-1)
        self.standard_errors = np.asarray(self.standard_errors, dtype=np.float64).reshape(-1)
        # float32 values (the schedule's own precision), held exactly as float64
        self.alphas_cumprod = np.asarray(self.alphas_cumprod, dtype=np.float64).astype(np.float32).astype(np.float64)
        self.alphas_cumprod = self.alphas_cumprod.reshape(-1)
        T = self.moments.size
        if T == 0 or self.standard_errors.size != T or self.alphas_cumprod.size != T:
            raise ValueError(
                f"moments, standard_errors and alphas_cumprod must hold one value per training timestep; got "
                f"{self.moments.size}, {self.standard_errors.size} and {self.alphas_cumprod.size}"
            )
        check_choice("prediction_type", self.prediction_type, PREDICTION_TYPES)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.moments.size)

    @property
    def schedule_sha256(self) -> str:
        """sha256 of the float32 ᾱ the table was computed with (little-endian bytes)."""
        return _schedule_sha256(self.alphas_cumprod)

    @property
    def mean_standard_error(self) -> float:
        return float(np.nanmean(self.standard_errors))

    # -- checks ------------------------------------------------------------------------------------------------------
    def check_scheduler(self, scheduler, where: str = MOMENTS_FILE_NAME) -> None:
        """``ValueError`` unless the table was computed for ``scheduler``'s T, ᾱ and prediction type."""
        T = scheduler.config.num_train_timesteps
        if T != self.num_train_timesteps:
            raise ValueError(
                f"{where} (the Analytic-DPM moments) was computed for num_train_timesteps={self.num_train_timesteps}, "
                f"but the scheduler has num_train_timesteps={T}; {_recompute_hint()} for this model"
            )
        values = _schedule_values(scheduler)
        if not np.allclose(values, self.alphas_cumprod, rtol=1e-6, atol=0.0):
            worst = int(np.argmax(np.abs(values - self.alphas_cumprod) / np.abs(self.alphas_cumprod)))
            raise ValueError(
                f"{where} (the Analytic-DPM moments) was computed for another beta schedule: alphas_cumprod[{worst}] "
                f"is {self.alphas_cumprod[worst]:.9g} there and {values[worst]:.9g} in the scheduler (schedule "
                f"sha256 {self.schedule_sha256[:12]} vs {_schedule_sha256(values)[:12]}); {_recompute_hint()} for "
                "this model"
            )
        if scheduler.config.prediction_type != self.prediction_type:
            raise ValueError(
                f"{where} (the Analytic-DPM moments) was computed for prediction_type={self.prediction_type!r}, but "
                f"the scheduler has prediction_type={scheduler.config.prediction_type!r}; {_recompute_hint()}"
            )

    def check_unet(self, unet, where: str = MOMENTS_FILE_NAME) -> None:
        """``ValueError`` unless ``unet``'s weights (float32, float16 or bfloat16) are those the table was computed
        with (:func:`weights_sha256`)."""
        state = _unwrap(unet).state_dict()
        floating = sorted({str(t.dtype).removeprefix("torch.") for t in state.values() if t.is_floating_point()})
        if len(floating) != 1 or floating[0] not in self.weights_sha256:
            raise ValueError(
                f"{where} (the Analytic-DPM moments) can check UNet weights in {', '.join(self.weights_sha256)}; "
                f"this UNet's weights are {', '.join(floating) or 'not floating point'}"
            )
        have = weights_sha256(state)
        want = self.weights_sha256[floating[0]]
        if have != want:
            raise ValueError(
                f"{where} (the Analytic-DPM moments) was computed for other UNet weights ({floating[0]} sha256 "
                f"{want[:12]}..., this UNet's {have[:12]}...); {_recompute_hint()} for this model"
            )

    def check(self, scheduler=None, unet=None, where: str = MOMENTS_FILE_NAME) -> None:
        """Both checks (each skipped when its argument is ``None``)."""
        if scheduler is not None:
            self.check_scheduler(scheduler, where)
        if unet is not None:
            self.check_unet(unet, where)

    # -- JSON --------------------------------------------------------------------------------------------------------
    def to_json_dict(self) -> dict[str, Any]:
        def floats(values: np.ndarray, digits: int) -> list[float | None]:
            return [None if not math.isfinite(v) else float(f"{v:.{digits}g}") for v in values.tolist()]

        return {
            "format": _FORMAT,
            "format_version": _FORMAT_VERSION,
            "description": (
                "Analytic-DPM (Bao et al. 2022) moments of a model: moments[t] = E||eps_model(x_t, t)||^2 / d for "
                "t = 0..T-1, x_t ~ q(x_t | x_0) with x_0 from the training data; standard_errors[t] is the Monte "
                "Carlo standard error of moments[t]."
            ),
            "num_train_timesteps": self.num_train_timesteps,
            "prediction_type": self.prediction_type,
            "num_samples_per_timestep": int(self.num_samples_per_timestep),
            "mean_standard_error": float(f"{self.mean_standard_error:.6g}"),
            "schedule_sha256": self.schedule_sha256,
            "weights_sha256": dict(self.weights_sha256),
            "metadata": self.metadata,
            "moments": floats(self.moments, 9),
            "standard_errors": floats(self.standard_errors, 6),
            "alphas_cumprod": floats(self.alphas_cumprod, 9),
        }

    @classmethod
    def from_json_dict(cls, data: dict[str, Any], where: str = MOMENTS_FILE_NAME) -> AnalyticMoments:
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f'{where} is not an Analytic-DPM moment table (no "format": {_FORMAT!r})')
        if data.get("format_version") != _FORMAT_VERSION:
            raise ValueError(
                f"{where} has format_version={data.get('format_version')!r}; this ddpm reads {_FORMAT_VERSION}"
            )
        try:

            def floats(key):
                return np.array([np.nan if v is None else float(v) for v in data[key]], dtype=np.float64)

            table = cls(
                moments=floats("moments"),
                standard_errors=floats("standard_errors"),
                num_samples_per_timestep=int(data["num_samples_per_timestep"]),
                alphas_cumprod=floats("alphas_cumprod"),
                prediction_type=data["prediction_type"],
                weights_sha256=dict(data["weights_sha256"]),
                metadata=dict(data.get("metadata") or {}),
            )
        except (KeyError, TypeError) as err:
            raise ValueError(f"{where} is not a valid Analytic-DPM moment table: missing or bad {err}") from None
        if table.num_train_timesteps != data.get("num_train_timesteps"):
            raise ValueError(
                f"{where} says num_train_timesteps={data.get('num_train_timesteps')!r} but holds "
                f"{table.num_train_timesteps} moments"
            )
        if data.get("schedule_sha256") not in (None, table.schedule_sha256):
            raise ValueError(f"{where}: its alphas_cumprod do not match its schedule_sha256 (the file was edited)")
        return table

    def save(self, path: str | os.PathLike) -> Path:
        """Write the table atomically to ``path`` (a pipeline folder: ``path/analytic_dpm.json``); returns the file."""
        path = Path(path)
        if path.is_dir() or path.suffix != ".json":
            path = ddpm_io.save_directory_path(path) / MOMENTS_FILE_NAME
        ddpm_io.atomic_write_text(path, json.dumps(self.to_json_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> AnalyticMoments:
        """Read a table from a pipeline folder (its ``analytic_dpm.json``) or a ``.json`` file.

        ``FileNotFoundError`` naming the folder and the command that computes the table when there is none.
        """
        path = Path(path)
        file = path / MOMENTS_FILE_NAME if path.is_dir() else path
        if not file.is_file():
            folder = path if path.is_dir() else path.parent
            raise FileNotFoundError(
                f"no Analytic-DPM moment table ({MOMENTS_FILE_NAME}) in {folder}; {_recompute_hint(str(folder))}"
            )
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{file} is not a valid JSON file: {err}") from None
        return cls.from_json_dict(data, where=str(file))

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **hub_kwargs) -> AnalyticMoments:
        """The table of a pipeline folder or Hugging Face Hub id (``"ddpm/default"``: the bundled model)."""
        if str(name_or_path) == ddpm_io.BUNDLED_MODEL_NAME:
            name_or_path = ddpm_io.bundled_model_path()
        if Path(name_or_path).is_dir():
            return cls.load(name_or_path)
        try:
            file = ddpm_io.resolve_file(name_or_path, MOMENTS_FILE_NAME, **hub_kwargs)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"no Analytic-DPM moment table ({MOMENTS_FILE_NAME}) for {name_or_path}; "
                f"{_recompute_hint(str(name_or_path))}"
            ) from None
        return cls.load(file)


# ---------------------------------------------------------------------------------------------------------------
# Monte Carlo estimate of the moments
# ---------------------------------------------------------------------------------------------------------------
def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")
    return int(value)


def _image_pool(images, needed: int) -> torch.Tensor:
    """``images`` as one [M, C, H, W] tensor (uint8 or floating); from an iterable, its first ``needed`` images."""
    if isinstance(images, torch.Tensor):
        pool = images
    elif isinstance(images, np.ndarray):
        pool = torch.from_numpy(images)
    else:
        if not isinstance(images, Iterable):
            raise ValueError(
                f"images must be a tensor [N, C, H, W] or an iterable of such batches, got {type(images).__name__}"
            )
        parts, count = [], 0
        for batch in images:
            batch = torch.as_tensor(batch)
            batch = batch.unsqueeze(0) if batch.ndim == 3 else batch
            parts.append(batch.cpu())
            count += batch.shape[0]
            if count >= needed:
                break
        if not parts:
            raise ValueError("images is empty: give at least one training image")
        pool = torch.cat(parts)
    if pool.ndim != 4 or pool.shape[0] == 0:
        raise ValueError(f"images must be a non-empty [N, C, H, W] batch, got shape {tuple(pool.shape)}")
    if not (pool.dtype == torch.uint8 or pool.is_floating_point()):
        raise ValueError(f"images must be uint8 (0..255) or floating point in [-1, 1], got {pool.dtype}")
    return pool


def _epsilon_from_output(output, x_t, sqrt_a, sqrt_one_minus_a, prediction_type):
    if prediction_type == "epsilon":
        return output
    if prediction_type == "v_prediction":  # ε = √ᾱ v + √(1-ᾱ) x_t
        return sqrt_a * output + sqrt_one_minus_a * x_t
    return (x_t - sqrt_a * output) / sqrt_one_minus_a  # output is x0


def estimate_moments(
    unet,
    scheduler,
    images,
    num_samples_per_timestep: int = 100,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
    timesteps: Sequence[int] | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    metadata: dict[str, Any] | None = None,
) -> AnalyticMoments:
    """Monte Carlo estimate of Γ_t = E ||ε̂(x_t, t)||² / d (see the module docstring) for every training timestep.

    For each timestep t, ``num_samples_per_timestep`` (N) pairs (x_0, ε) give x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε
    (``scheduler.add_noise``), x_0 taken from ``images`` without replacement within a timestep (a random permutation,
    renewed when used up) and ε ~ N(0, I). Γ_t is the mean of ||ε̂||²/d over the N draws and its standard error the
    draws' standard deviation over √N. The UNet sees batches of ``batch_size`` draws that mix timesteps.

    Args:
        unet: the model (its output ``.sample``, or a tensor); its device and dtype are used. For a learned-variance
            model (2C output channels) the first C are the prediction.
        scheduler: gives T, ᾱ (float32, as in training) and ``prediction_type``.
        images: training images: a tensor [N, C, H, W], uint8 (0..255) or floating point in model space ([-1, 1]),
            or an iterable of such batches (its first ``T · N`` images are used).
        num_samples_per_timestep: N >= 2 (the paper uses about 100; the standard error falls as 1/√N).
        batch_size: draws per UNet call.
        generator: the CPU generator for the permutations and the noise (``None``: torch's global one). The same
            seed, images and batch size give the same table on any device up to floating-point differences.
        timesteps: estimate only these (others are NaN: a table for tests, not for sampling).
        progress: called as ``progress(done, total)`` after each batch.
        metadata: stored in the table as given.
    """
    T = scheduler.config.num_train_timesteps
    N = _positive_int("num_samples_per_timestep", num_samples_per_timestep, 2)
    batch_size = _positive_int("batch_size", batch_size)
    if timesteps is None:
        ts = np.arange(T, dtype=np.int64)
    else:
        ts = np.unique(np.asarray(timesteps, dtype=np.int64))
        if ts.size == 0 or ts[0] < 0 or ts[-1] >= T:
            raise ValueError(f"timesteps must be a non-empty set of integers in [0, {T - 1}], got {timesteps!r}")
    prediction_type = scheduler.config.prediction_type
    check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    fingerprints = _weights_fingerprints(unet) if isinstance(_unwrap(unet), torch.nn.Module) else {}
    total = ts.size * N
    pool = _image_pool(images, total)
    module = _unwrap(unet)
    param = next(iter(module.parameters()), None) if isinstance(module, torch.nn.Module) else None
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    config = getattr(module, "config", None)
    if config is not None and getattr(config, "in_channels", None) not in (None, pool.shape[1]):
        raise ValueError(f"images have {pool.shape[1]} channels but the UNet takes in_channels={config.in_channels}")

    # Which image each draw uses: consecutive permutations of the pool, draw i (of timestep ts[i // N]).
    M = pool.shape[0]
    order = torch.cat([torch.randperm(M, generator=generator) for _ in range(math.ceil(total / M))])[:total]
    draw_t = torch.from_numpy(np.repeat(ts, N))
    a = _schedule_values(scheduler)
    sqrt_a = torch.from_numpy(np.sqrt(a))
    sqrt_one_minus_a = torch.from_numpy(np.sqrt(1.0 - a))
    values = np.empty(total, dtype=np.float64)
    was_training = getattr(module, "training", False)
    if isinstance(module, torch.nn.Module):
        module.eval()
    try:
        with torch.inference_mode():
            for start in range(0, total, batch_size):
                stop = min(start + batch_size, total)
                x0 = pool[order[start:stop]].to(device)
                x0 = x0.float().div_(127.5).sub_(1.0) if x0.dtype == torch.uint8 else x0.float()
                t_cpu = draw_t[start:stop]
                t = t_cpu.to(device)
                noise = randn_tensor(x0.shape, generator, device, torch.float32)
                x_t = scheduler.add_noise(x0, noise, t)
                out = unet(x_t.to(dtype), t)
                out = getattr(out, "sample", out)
                channels = x_t.shape[1]
                if out.shape[1] == 2 * channels and out.shape[1] != channels:
                    out = out[:, :channels]
                shape = (-1, *([1] * (x_t.ndim - 1)))
                eps = _epsilon_from_output(
                    out.float(),
                    x_t,
                    sqrt_a[t_cpu].to(device, torch.float32).reshape(shape),
                    sqrt_one_minus_a[t_cpu].to(device, torch.float32).reshape(shape),
                    prediction_type,
                )
                values[start:stop] = eps.double().square().flatten(1).mean(1).cpu().numpy()
                if progress is not None:
                    progress(stop, total)
    finally:
        if was_training:
            module.train()
    per_t = values.reshape(ts.size, N)
    moments = np.full(T, np.nan)
    errors = np.full(T, np.nan)
    moments[ts] = per_t.mean(axis=1)
    errors[ts] = per_t.std(axis=1, ddof=1) / math.sqrt(N)
    return AnalyticMoments(
        moments=moments,
        standard_errors=errors,
        num_samples_per_timestep=N,
        alphas_cumprod=a,
        prediction_type=prediction_type,
        weights_sha256=fingerprints,
        metadata=dict(metadata or {}),
    )


# ---------------------------------------------------------------------------------------------------------------
# The scheduler
# ---------------------------------------------------------------------------------------------------------------
@dataclass(eq=False)
class AnalyticDPMSchedulerOutput(BaseOutput):
    """What :meth:`AnalyticDPMScheduler.step` returns.

    Attributes:
        prev_sample: x_s, the sample at the next visited timestep (the clean image after the last step).
        pred_original_sample: the model's estimate of x_0 (after clipping/thresholding) at this step.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


def clip_variance_threshold(pixels: float) -> float:
    """The largest σ² of a clipped step: (k · 2/255 · √(π/2))², so that E|σ z| = σ √(2/π) <= k pixel levels."""
    return (pixels * 2.0 / 255.0 * math.sqrt(math.pi / 2.0)) ** 2


class _AnalyticSteps:
    """Per-step coefficients of one schedule, computed once in float64 from the float32 ᾱ and applied as Python
    floats (no host-device synchronisation in ``step``). See the module docstring for the formulas."""

    def __init__(self, alphas_cumprod: torch.Tensor, timesteps: np.ndarray, moments: np.ndarray, config):
        t = np.asarray(timesteps, dtype=np.int64)
        prev = np.append(t[1:], -1)
        self.t: list[int] = t.tolist()
        self.index: dict[int, int] = {v: i for i, v in enumerate(self.t)}
        self.noisy: list[bool] = (prev >= 0).tolist()
        a32 = alphas_cumprod[torch.from_numpy(t)]
        a_prev32 = torch.where(
            torch.from_numpy(prev) >= 0,
            alphas_cumprod[torch.from_numpy(np.maximum(prev, 0))],
            torch.ones((), dtype=torch.float32),
        )
        # x0 from ε uses the float32 square roots, as DDPMScheduler does (agreement with it to float32 rounding).
        self.sqrt_a = (a32**0.5).tolist()
        self.sqrt_one_minus_a = ((1.0 - a32) ** 0.5).tolist()
        a = a32.numpy().astype(np.float64)
        a_s = a_prev32.numpy().astype(np.float64)
        bbar_r, bbar_s = 1.0 - a, 1.0 - a_s
        alpha_skip = a / a_s
        beta_skip = 1.0 - alpha_skip
        noisy = prev >= 0
        gamma = np.where(noisy, moments[t], 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            small = np.where(noisy, beta_skip * bbar_s / bbar_r, 0.0)
            cov = np.where(a > 0, bbar_r / a * (1.0 - gamma), 1.0)
            cov = np.clip(np.nan_to_num(cov, nan=1.0, posinf=1.0), 0.0, 1.0)
            if config.mean_type == "ddpm":
                self.c_x0 = (np.sqrt(a_s) * beta_skip / bbar_r).tolist()
                self.c_other = (np.sqrt(alpha_skip) * bbar_s / bbar_r).tolist()  # multiplies x_r
                variance = small + a_s * beta_skip**2 / bbar_r**2 * cov
            else:
                lam2 = config.eta**2 * small
                keep = np.maximum(bbar_s - lam2, 0.0)
                self.c_x0 = np.sqrt(a_s).tolist()
                self.c_other = np.sqrt(keep).tolist()  # multiplies ε̂
                variance = lam2 + (np.sqrt(a_s) - np.sqrt(keep * a / bbar_r)) ** 2 * cov
        variance = np.where(noisy, variance, 0.0)
        k = config.clip_variance_steps
        pixels = config.clip_variance_pixels
        if pixels is None:
            pixels = DEFAULT_CLIP_PIXELS[config.mean_type]
        n = len(t)
        clipped = noisy & (np.arange(n) >= n - 1 - k)
        variance = np.where(clipped, np.minimum(variance, clip_variance_threshold(pixels)), variance)
        self.variance = variance
        self.std: list[float] = np.sqrt(variance).tolist()


class AnalyticDPMScheduler(SchedulerMixin):
    """Analytic-DPM sampling (module docstring): DDPM's or DDIM's reverse mean with the optimal variance computed from
    a model's moment table, at any number of steps 1..T.

    Build it from a pipeline with :meth:`from_pipeline` (its scheduler's config, the table from its folder, checked
    against its UNet), or as ``AnalyticDPMScheduler.from_config(ddpm_scheduler.config, moments=table)``.

    Args (those of ``DDPMScheduler`` that apply, same meaning and defaults):
        num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr: the
            training process.
        variance_type: only says whether the model output carries variance channels (``learned``,
            ``learned_range``: its second C channels, which are ignored); the variance is Analytic-DPM's.
        clip_sample, clip_sample_range, thresholding, dynamic_thresholding_ratio, sample_max_value: what is done to
            x̂0 (the authors clip it to [-1, 1]).
        prediction_type: ``epsilon``, ``sample`` or ``v_prediction``.
        timestep_spacing, steps_offset: which timesteps ``set_timesteps(n)`` visits (as DDPM and DDIM).
    Args (Analytic-DPM):
        mean_type: ``"ddpm"`` (Analytic-DDPM) or ``"ddim"`` (Analytic-DDIM).
        eta: η >= 0 of the DDIM form (λ² = η² β̃; the authors use 0). Ignored by ``"ddpm"``.
        clip_variance_steps: how many of the last noisy steps have their σ clipped (the authors: 1; 0: none).
        clip_variance_pixels: k of that clip, σ <= k · (2/255) · √(π/2); ``None``: 2 for ``"ddpm"`` and 1 for
            ``"ddim"``, the authors' settings.
        moments: the model's :class:`AnalyticMoments` (not a config key; also :meth:`set_moments`).
    """

    _compatibles = ("DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler")

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        variance_type: str = "fixed_small",
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        mean_type: str = "ddpm",
        eta: float = 0.0,
        clip_variance_steps: int = 1,
        clip_variance_pixels: float | None = None,
        moments: AnalyticMoments | None = None,
    ):
        # ``moments`` is data, not configuration: keep it out of the config (and of scheduler_config.json).
        config = {k: v for k, v in self.config.items() if k != "moments"}
        defaults = [k for k in config.pop("_use_default_values", []) if k != "moments"]
        if defaults:
            config["_use_default_values"] = defaults
        self._internal_dict = type(self.config)(config)
        T = check_num_train_timesteps(num_train_timesteps)
        check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
        check_choice("variance_type", variance_type, VARIANCE_TYPES)
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        check_choice("mean_type", mean_type, MEAN_TYPES)
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta < 0:
            raise ValueError(f"eta={eta!r} must be a finite number >= 0 (0: the deterministic DDIM mean)")
        if isinstance(clip_variance_steps, bool) or not isinstance(clip_variance_steps, (int, np.integer)):
            raise ValueError(f"clip_variance_steps={clip_variance_steps!r} must be an integer >= 0 (0: no clipping)")
        if clip_variance_steps < 0:
            raise ValueError(f"clip_variance_steps={clip_variance_steps!r} must be an integer >= 0 (0: no clipping)")
        if clip_variance_pixels is not None and (
            isinstance(clip_variance_pixels, bool)
            or not isinstance(clip_variance_pixels, (int, float))
            or not math.isfinite(clip_variance_pixels)
            or clip_variance_pixels < 0
        ):
            raise ValueError(
                f"clip_variance_pixels={clip_variance_pixels!r} must be a number >= 0 (pixel levels) or None "
                "(2 for mean_type='ddpm', 1 for 'ddim')"
            )
        if not 0.0 <= dynamic_thresholding_ratio <= 1.0:
            raise ValueError(f"dynamic_thresholding_ratio={dynamic_thresholding_ratio!r} must lie in [0, 1].")
        if isinstance(steps_offset, bool) or not isinstance(steps_offset, (int, np.integer)):
            raise ValueError(f"steps_offset={steps_offset!r} must be an integer.")

        self.betas = make_betas(T, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.custom_timesteps = False
        self.moments: AnalyticMoments | None = None
        self._steps: _AnalyticSteps | None = None
        self._timesteps = torch.arange(T - 1, -1, -1, dtype=torch.int64)
        if moments is not None:
            self.set_moments(moments)

    # -- the table ---------------------------------------------------------------------------------------------------
    def set_moments(self, moments: AnalyticMoments) -> None:
        """Use ``moments`` (checked against this scheduler's T, schedule and prediction type)."""
        if not isinstance(moments, AnalyticMoments):
            raise ValueError(
                f"moments must be an AnalyticMoments table (AnalyticMoments.load(FOLDER)), got {type(moments).__name__}"
            )
        moments.check_scheduler(self)
        self.moments = moments
        self._steps = None
        if self.num_inference_steps is not None or self.custom_timesteps:
            self._set_schedule(self._timesteps.cpu().numpy(), self._timesteps.device)

    @classmethod
    def from_pipeline(
        cls, pipe, mean_type: str = "ddpm", eta: float = 0.0, moments: AnalyticMoments | None = None, **overrides
    ) -> AnalyticDPMScheduler:
        """An Analytic-DPM scheduler for ``pipe``: its scheduler's config, the moment table of the folder it was
        loaded from (``pipe.name_or_path``; or ``moments``), checked against its schedule and its UNet's weights.

        ``FileNotFoundError`` when the folder has no table, ``ValueError`` when the table belongs to another model,
        T or schedule; both say what to run to compute it.
        """
        if moments is None:
            name = getattr(pipe, "name_or_path", None)
            if name is None:
                raise ValueError(
                    "the pipeline was not loaded from a folder, so its Analytic-DPM table is unknown; pass "
                    "moments=AnalyticMoments.load(FOLDER)"
                )
            moments = AnalyticMoments.from_pretrained(name)
        scheduler = cls.from_config(pipe.scheduler.config, mean_type=mean_type, eta=eta, **overrides)
        moments.check_unet(pipe.unet)
        scheduler.set_moments(moments)
        return scheduler

    # -- timesteps ---------------------------------------------------------------------------------------------------
    @property
    def timesteps(self) -> torch.Tensor:
        """The current schedule, descending int64 (the full chain T-1 .. 0 until :meth:`set_timesteps`)."""
        return self._timesteps

    def _set_schedule(self, values: np.ndarray, device) -> None:
        if self.moments is None:
            raise ValueError(
                "AnalyticDPMScheduler has no moment table (moments=None): pass moments=AnalyticMoments.load(FOLDER) "
                f"or call set_moments(...); {_recompute_hint()}"
            )
        needed = values[:-1]  # the last step adds no noise and needs no moment
        missing = needed[~np.isfinite(self.moments.moments[needed])]
        if missing.size:
            raise ValueError(
                f"the Analytic-DPM moment table has no estimate at timesteps {missing.tolist()[:10]} that this "
                f"schedule visits; {_recompute_hint()} over all timesteps"
            )
        self._steps = _AnalyticSteps(self.alphas_cumprod, values, self.moments.moments, self.config)
        self._timesteps = torch.from_numpy(np.ascontiguousarray(values, dtype=np.int64)).to(device)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: Sequence[int] | None = None,
    ) -> None:
        """Choose the n timesteps to visit (1 <= n <= T, spaced by ``config.timestep_spacing``), or give them
        (``timesteps``: strictly descending, in [0, T-1]); the per-step coefficients are computed here, once."""
        T = self.config.num_train_timesteps
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError(
                "set_timesteps needs exactly one of num_inference_steps (1..num_train_timesteps) and timesteps"
            )
        if timesteps is not None:
            values = np.asarray(timesteps.detach().cpu().numpy() if isinstance(timesteps, torch.Tensor) else timesteps)
            if (
                values.ndim != 1
                or values.size == 0
                or values.dtype.kind not in "iu"
                or np.any(values[1:] >= values[:-1])
                or values[0] >= T
                or values[-1] < 0
            ):
                raise ValueError(f"timesteps={values.tolist()!r} must be strictly descending integers in [0, {T - 1}]")
            values = values.astype(np.int64)
            self._set_schedule(values, device)
            self.custom_timesteps = True
        else:
            n = check_num_inference_steps(num_inference_steps, T)
            values = spaced_timesteps(T, n, self.config.timestep_spacing, self.config.steps_offset)
            self._set_schedule(values, device)
            self.num_inference_steps = n
            self.custom_timesteps = False

    @property
    def step_variances(self) -> np.ndarray:
        """σ² of each step of the current schedule (float64; 0 for the last step), after all clipping."""
        if self._steps is None:
            raise ValueError("call set_timesteps first")
        return self._steps.variance.copy()

    def _index_of(self, timestep) -> int:
        steps = self._steps
        if steps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step() (it needs a moment table)")
        if isinstance(timestep, torch.Tensor):
            if timestep.numel() != 1:
                raise ValueError(f"timestep must be a single value; got a tensor of shape {tuple(timestep.shape)}")
            ts = self._timesteps
            if timestep.device.type != "cpu" and timestep.dim() == 0 and timestep.device == ts.device:
                # an element of self.timesteps (``for t in scheduler.timesteps``): its position, without a sync
                if timestep.untyped_storage().data_ptr() == ts.untyped_storage().data_ptr():
                    offset = timestep.storage_offset() - ts.storage_offset()
                    if 0 <= offset < len(steps.t):
                        return offset
            value = timestep.item()
        else:
            value = timestep
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            value = int(value)
        try:
            value = operator.index(value)
        except TypeError:
            raise ValueError(f"timestep={timestep!r} must be an integer") from None
        index = steps.index.get(value)
        if index is None:
            raise ValueError(
                f"timestep={value} is not in the current schedule (call set_timesteps first, or pass one of "
                "scheduler.timesteps)"
            )
        return index

    def previous_timestep(self, timestep):
        """The visited timestep after ``timestep`` (-1 after the last one)."""
        index = self._index_of(timestep)
        return self._steps.t[index + 1] if index + 1 < len(self._steps.t) else -1

    # -- the reverse step --------------------------------------------------------------------------------------------
    def _prediction(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        if model_output.ndim < 2 or sample.ndim < 2:
            raise ValueError(
                f"model_output {tuple(model_output.shape)} and sample {tuple(sample.shape)} must be batched "
                "(batch, channels, ...) tensors"
            )
        channels = sample.shape[1]
        want = 2 * channels if self.config.variance_type in LEARNED_VARIANCE_TYPES else channels
        if model_output.shape != (sample.shape[0], want, *sample.shape[2:]):
            raise ValueError(
                f"model_output has shape {tuple(model_output.shape)}; expected "
                f"{(sample.shape[0], want, *sample.shape[2:])} for a sample of shape {tuple(sample.shape)} "
                f"(variance_type={self.config.variance_type!r})"
            )
        return model_output[:, :channels] if want != channels else model_output

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> AnalyticDPMSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One reverse step from the visited timestep r = ``timestep`` to the next one s (module docstring).

        x̂0 is read from the output (ε, x0 or v), clipped or thresholded as configured; the mean is DDPM's posterior
        mean or DDIM's, and unless s is the clean data one noise tensor is drawn exactly as ``DDPMScheduler.step``
        draws it (``model_output``'s shape and dtype, the sample's device, the same generator use) and scaled by σ.
        """
        index = self._index_of(timestep)
        steps = self._steps
        out_dtype = sample.dtype
        prediction = self._prediction(model_output, sample)
        noise_dtype = prediction.dtype
        if prediction.dtype != out_dtype:
            prediction = prediction.to(out_dtype)
        sqrt_a, sqrt_b = steps.sqrt_a[index], steps.sqrt_one_minus_a[index]
        prediction_type = self.config.prediction_type
        eps = None
        if prediction_type == "epsilon":
            eps = prediction
            x0 = torch.sub(sample, prediction, alpha=sqrt_b).div_(sqrt_a)
        elif prediction_type == "v_prediction":
            x0 = torch.mul(sample, sqrt_a).sub_(prediction, alpha=sqrt_b)
            if self.config.mean_type == "ddim":
                eps = torch.mul(prediction, sqrt_a).add_(sample, alpha=sqrt_b)
        else:
            x0 = prediction.clone()
            if self.config.mean_type == "ddim":
                eps = torch.sub(sample, prediction, alpha=sqrt_a).div_(sqrt_b)
        if self.config.thresholding:
            x0 = threshold_sample(x0, self.config.dynamic_thresholding_ratio, self.config.sample_max_value)
        elif self.config.clip_sample:
            x0.clamp_(-self.config.clip_sample_range, self.config.clip_sample_range)

        c_x0, c_other = steps.c_x0[index], steps.c_other[index]
        other = sample if self.config.mean_type == "ddpm" else eps
        if steps.noisy[index]:
            noise = randn_tensor(prediction.shape, generator, sample.device, noise_dtype, steps.std[index])
            prev = noise if noise.dtype == out_dtype else noise.to(out_dtype)
            prev.add_(other, alpha=c_other).add_(x0, alpha=c_x0)
        else:
            prev = torch.mul(other, c_other).add_(x0, alpha=c_x0)
        if not return_dict:
            return prev, x0
        return AnalyticDPMSchedulerOutput(prev_sample=prev, pred_original_sample=x0)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε (the forward process), t an int or one per batch item."""
        check_noise_pair(original_samples, noise)
        t = torch.as_tensor(timesteps, device=original_samples.device).reshape(-1)
        a = self.alphas_cumprod.to(device=original_samples.device, dtype=torch.float64)[t]
        shape = (-1, *([1] * (original_samples.ndim - 1)))
        sqrt_a = a.sqrt().to(original_samples.dtype).reshape(shape)
        sqrt_b = (1.0 - a).sqrt().to(original_samples.dtype).reshape(shape)
        return original_samples * sqrt_a + sqrt_b * noise
