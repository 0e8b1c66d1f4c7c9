"""The resolved configuration of a training run: a typed dataclass, presets, and how they combine.

Precedence, lowest first: the dataclass defaults (the paper's CIFAR-10 recipe), a preset file (``--config``), a UNet
``config.json`` (``--model-config``, replaces the architecture), then options given explicitly. The result is validated
once, written to ``<output_dir>/config.json`` and stored inside every checkpoint.

Presets are versioned JSON files in one folder, ``ddpm/training/presets/`` inside the package (so an installed
``ddpm`` has them), named by their bare name (``--config cifar10``) whatever the working directory. A preset holds any
subset of the :class:`TrainConfig` fields; its ``model`` replaces the default architecture and its ``scheduler`` keys
override the default scheduler keys.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The one folder of the presets (package data, so a wheel installs it).
PRESET_DIR = Path(__file__).resolve().parent / "presets"

PRECISIONS = ("fp32", "bf16", "fp16")
LR_SCHEDULES = ("constant", "cosine", "linear")
GRID_WEIGHTS = ("ema", "raw", "both")  # which weights the training grids are drawn with


class ConfigError(ValueError):
    """An invalid option or preset; the message names the key, the value and what is allowed.

    ``key`` (a :class:`TrainConfig` field name, or None), ``value`` and ``allowed`` are set when one option is at
    fault, so a command line can name its own option (``--lr``) instead of the field."""

    def __init__(
        self, message: str, key: str | None = None, value: Any = None, allowed: str | None = None, reason: str = ""
    ):
        super().__init__(message)
        self.key, self.value, self.allowed = key, value, allowed
        self.reason = reason  # the message without the value, for ``--option: value: reason; allowed: ...``


def cifar10_unet() -> dict[str, Any]:
    """The paper's 35.7M CIFAR-10 network with Diffusers' keys (google/ddpm-cifar10-32's config.json)."""
    return {
        "act_fn": "silu",
        "attention_head_dim": None,
        "block_out_channels": [128, 256, 256, 256],
        "center_input_sample": False,
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
        "downsample_padding": 0,
        "flip_sin_to_cos": False,
        "freq_shift": 1,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-06,
        "norm_num_groups": 32,
        "time_embedding_type": "positional",
        "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    }


def default_scheduler() -> dict[str, Any]:
    """The paper's forward process: T = 1000, betas linear from 1e-4 to 0.02, epsilon prediction, sigma^2 = beta."""
    return {
        "num_train_timesteps": 1000,
        "beta_schedule": "linear",
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "variance_type": "fixed_large",
        "prediction_type": "epsilon",
        "clip_sample": True,
    }


# Keys of the UNet config that the training options set; a preset's or file's values for them are overridden.
_UNET_KEYS_FROM_OPTIONS = ("sample_size", "in_channels", "out_channels", "dropout")


@dataclass
class TrainConfig:
    """Every option of a training run. Defaults are the paper's CIFAR-10 recipe (Ho et al. 2020, App. B), except the
    EMA warm-up (on here, off in the paper and its presets)."""

    # Data
    data: str | None = None  # image folder, idx file/folder, .npz, fashion-mnist, cifar10[:PATH]
    resolution: int = 32  # image side in pixels
    channels: int = 3  # 1 (grey) or 3 (RGB)
    hflip: bool = True  # random horizontal flips
    num_workers: int = 2  # data-loading worker processes (image folders decode in them)
    # Model and diffusion
    model: dict = field(default_factory=cifar10_unet)  # UNet2DModel config keys (Diffusers names)
    scheduler: dict = field(default_factory=default_scheduler)  # DDPMScheduler config keys
    dropout: float = 0.1
    vlb_weight: float = 0.001  # lambda of the hybrid loss (learned variance only; improved DDPM)
    snr_gamma: float = 0.0  # > 0: Min-SNR-gamma weighting of the L_simple term (Hang et al. 2023); 0: the paper's
    gradient_checkpointing: bool = False
    compile: bool = False  # torch.compile the training forward/backward (same results up to float rounding)
    # Optimisation
    batch_size: int = 128  # global batch, split across processes
    lr: float = 2e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    warmup_steps: int = 5000  # linear LR warm-up
    lr_schedule: str = "constant"  # after the warm-up: constant (the paper), cosine or linear decay to 0 at max_steps
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    ema_decay: float = 0.9999  # the EMA's decay (its limit, with the warm-up)
    # Warm-up: decay = min(ema_decay, 1 - (1 + step/inv_gamma)^-power), Diffusers' EMAModel rule and defaults. On by
    # default (unlike the paper) so that a short run's averaged weights are not its random initialisation; the paper
    # presets turn it off.
    ema_warmup: bool = True
    ema_inv_gamma: float = 1.0
    ema_power: float = 2 / 3
    max_steps: int = 800_000
    precision: str = "fp32"  # fp32, bf16 (autocast) or fp16 (autocast + gradient scaler)
    seed: int = 0
    # Ecosystem conventions (docs/training.md: logging, Hugging Face data, gradient accumulation, proxy FID)
    grad_accum: int = 1  # micro-batches of batch_size per update: the update of one batch grad_accum * batch_size
    report_to: str = "auto"  # none, tensorboard, wandb or a comma list; auto: tensorboard if installed
    progress_interval: float = 30.0  # off a terminal: a plain progress line at most every S seconds (0: every log)
    image_column: str | None = None  # Hugging Face data: the image column (default: the first Image feature)
    fid_every: int = 0  # proxy FID every N steps on rank 0 (0: off); needs fid_ref_stats
    fid_ref_stats: str | None = None  # reference statistics .npz (ddpm eval fid ... --ref-stats FILE)
    fid_num_samples: int = 500  # images of the proxy FID
    fid_num_inference_steps: int = 25  # steps of the proxy FID's sampler
    fid_sampler: str = "ddim"  # the proxy FID's sampler: ddim, dpm-solver++ or ddpm
    # Outputs
    output_dir: str = "runs/ddpm"
    checkpoint_every: int = 5000
    keep_checkpoints: int = 2
    sample_every: int = 5000
    sample_steps: int = 100  # denoising steps of the grids drawn during training (strided)
    num_samples: int = 16  # images per grid
    sample_seed: int = 0
    grid_weights: str = "ema"  # weights of the grids: ema, raw, or both (two files per step)
    log_every: int = 10
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    description: str = ""  # free text from a preset
    threads: int = 0  # CPU threads of this process (torch.set_num_threads); 0: PyTorch's default

    # -- derived -------------------------------------------------------------------------------------------------
    @property
    def learned_variance(self) -> bool:
        from ddpm.schedulers.vocabulary import LEARNED_VARIANCE_TYPES

        return self.scheduler.get("variance_type") in LEARNED_VARIANCE_TYPES

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.get("num_train_timesteps", 1000))

    def unet_config(self) -> dict[str, Any]:
        """The UNet2DModel config this run builds: the architecture plus the shape and dropout from the options."""
        cfg = {k: v for k, v in self.model.items() if not k.startswith("_")}
        cfg["sample_size"] = self.resolution
        cfg["in_channels"] = self.channels
        from ddpm.schedulers.common import expected_output_channels

        cfg["out_channels"] = expected_output_channels(self.scheduler.get("variance_type"), self.channels)
        cfg["dropout"] = self.dropout
        return cfg

    def scheduler_config(self) -> dict[str, Any]:
        return dict(self.scheduler)

    def build_scheduler(self):
        """The run's :class:`~ddpm.DDPMScheduler`; a ``ConfigError`` naming the key when a value is invalid."""
        from ddpm.schedulers import DDPMScheduler

        allowed = sorted(DDPMScheduler._init_parameters())
        unknown = sorted(set(self.scheduler) - set(allowed))
        if unknown:
            raise ConfigError(f"unknown scheduler key(s) {unknown}; allowed: {allowed}")
        try:
            return DDPMScheduler(**self.scheduler)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"invalid scheduler config: {err}") from None

    # -- (de)serialisation ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: TrainConfig | None = None, source: str = "config") -> TrainConfig:
        """``base`` (default: the defaults) with the keys of ``data`` applied; unknown keys are an error."""
        cfg = dataclasses.replace(base) if base is not None else cls()
        cfg.model = dict(cfg.model)
        cfg.scheduler = dict(cfg.scheduler)
        names = {f.name: f for f in dataclasses.fields(cls)}
        for key, value in data.items():
            if key.startswith("_"):
                continue
            if key not in names:
                raise ConfigError(f"{source}: unknown option {key!r}; allowed: {', '.join(sorted(names))}")
            if key == "model":
                if not isinstance(value, dict):
                    raise ConfigError(f"{source}: 'model' must be a JSON object of UNet2DModel config keys")
                cfg.model = {k: v for k, v in value.items() if not k.startswith("_")}
            elif key == "scheduler":
                if not isinstance(value, dict):
                    raise ConfigError(f"{source}: 'scheduler' must be a JSON object of DDPMScheduler config keys")
                cfg.scheduler.update({k: v for k, v in value.items() if not k.startswith("_")})
            else:
                setattr(cfg, key, _coerce(names[key], value, source))
        return cfg

    def validate(self) -> TrainConfig:
        """Check every value; raise :class:`ConfigError` naming the first bad one. Returns self."""
        _validate_ecosystem(self)

        def need(ok: bool, key: str, allowed: str) -> None:
            if not ok:
                value = getattr(self, key)
                raise ConfigError(f"invalid {key}={value!r}: must be {allowed}", key, value, allowed)

        def number(key: str, low: float, high: float, allowed: str, low_open=False, high_open=False) -> None:
            value = getattr(self, key)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            ok = ok and (low < value if low_open else low <= value) and (value < high if high_open else value <= high)
            need(ok, key, allowed)

        def integer(key: str, low: int, high: int, allowed: str) -> None:
            value = getattr(self, key)
            need(isinstance(value, int) and not isinstance(value, bool) and low <= value <= high, key, allowed)

        integer("resolution", 1, MAX_RESOLUTION, f"an integer in [1, {MAX_RESOLUTION}]")
        need(self.channels in (1, 3), "channels", "1 or 3")
        integer("num_workers", 0, 1024, "an integer in [0, 1024]")
        number("dropout", 0.0, 1.0, "a number in [0, 1)", high_open=True)
        number("vlb_weight", 0.0, math.inf, "a finite number >= 0", high_open=True)
        number("snr_gamma", 0.0, math.inf, ">= 0 (0: unweighted L_simple, as the paper)", high_open=True)
        integer("batch_size", 1, 2**31 - 1, "a positive integer")
        number("lr", 0.0, 1.0, "a finite number in (0, 1]", low_open=True)
        number("adam_beta1", 0.0, 1.0, "a number in [0, 1)", high_open=True)
        number("adam_beta2", 0.0, 1.0, "a number in [0, 1)", high_open=True)
        number("adam_eps", 0.0, 1.0, "a finite number in (0, 1]", low_open=True)
        integer("warmup_steps", 0, 2**62, "an integer >= 0")
        need(self.lr_schedule in LR_SCHEDULES, "lr_schedule", f"one of {', '.join(LR_SCHEDULES)}")
        number("grad_clip", 0.0, math.inf, "a finite number >= 0 (0 disables clipping)", high_open=True)
        number("ema_decay", 0.0, 1.0, "in [0, 1)", high_open=True)
        number("ema_inv_gamma", 0.0, math.inf, "a finite number > 0", low_open=True, high_open=True)
        number("ema_power", 0.0, math.inf, "a finite number > 0", low_open=True, high_open=True)
        integer("max_steps", 1, 2**62, "a positive integer")
        need(self.precision in PRECISIONS, "precision", f"one of {', '.join(PRECISIONS)}")
        integer("seed", 0, MAX_SEED, "an integer in [0, 2**62]")
        integer("sample_seed", 0, MAX_SEED, "an integer in [0, 2**62]")
        integer("checkpoint_every", 1, 2**62, "a positive integer")
        integer("keep_checkpoints", 1, 2**31, "a positive integer")
        integer("sample_every", 0, 2**62, ">= 0 (0 disables grids during training)")
        integer("sample_steps", 1, 2**31, "a positive integer")
        integer("num_samples", 1, MAX_NUM_SAMPLES, f"an integer in [1, {MAX_NUM_SAMPLES}]")
        need(self.grid_weights in GRID_WEIGHTS, "grid_weights", f"one of {', '.join(GRID_WEIGHTS)}")
        integer("log_every", 1, 2**62, "a positive integer")
        max_threads = max_threads_allowed()
        integer("threads", 0, max_threads, f"an integer in [0, {max_threads}] (0: PyTorch's default; at most 4 x "
                "the CPU count)")  # fmt: skip
        need(_device_name_ok(self.device), "device", "auto, cpu, cuda, cuda:N or mps")
        steps = self.scheduler.get("num_train_timesteps", 1000)
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_TRAIN_TIMESTEPS:
            allowed = f"an integer in [1, {MAX_TRAIN_TIMESTEPS}]"
            raise ConfigError(
                f"invalid scheduler num_train_timesteps={steps!r}: must be {allowed}", "num_train_timesteps", steps,
                allowed,
            )  # fmt: skip
        allowed = f"an integer in [1, {steps}] (the scheduler's num_train_timesteps)"
        integer("sample_steps", 1, steps, allowed)
        if self.fid_every:
            integer("fid_num_inference_steps", 1, steps, allowed)
        self.build_scheduler()  # the scheduler owns its vocabularies and checks them
        if not self.model.get("block_out_channels"):
            raise ConfigError("model: a UNet2DModel config needs 'block_out_channels'", "model")
        self._check_model()
        return self

    def downsampling(self) -> int:
        """The UNet's total downsampling factor: every level but the last halves the image (as in Diffusers)."""
        return 2 ** (len(self.model["block_out_channels"]) - 1)

    def _check_model(self) -> None:
        """Build the UNet on the meta device (no memory, no arithmetic) so that a config that cannot work is refused
        before the run starts: a ConfigError naming the model key or the resolution."""
        import torch

        from ddpm.models import UNet2DModel

        blocks = self.model.get("block_out_channels")
        if not isinstance(blocks, (list, tuple)) or not all(isinstance(c, int) and c > 0 for c in blocks):
            raise ConfigError(
                f"model: block_out_channels={blocks!r} must be a list of positive integers", "model", blocks,
                "a list of positive integers",
            )  # fmt: skip
        if len(blocks) > MAX_LEVELS:
            raise ConfigError(
                f"model: block_out_channels has {len(blocks)} levels", "model", None,
                f"1 to {MAX_LEVELS} levels (every level but the last halves the image)",
                reason=f"block_out_channels has {len(blocks)} levels",
            )  # fmt: skip
        _check_model_types(self.model)
        factor = self.downsampling()
        if self.resolution % factor:
            allowed = f"a multiple of {factor}, the UNet's total downsampling ({len(blocks)} levels)"
            raise ConfigError(
                f"invalid resolution={self.resolution!r}: must be {allowed}", "resolution", self.resolution, allowed
            )
        try:
            with torch.device("meta"):
                UNet2DModel.from_config(self.unet_config())
        except (ValueError, TypeError, KeyError, IndexError, AssertionError, RuntimeError) as err:
            message = " ".join(str(err).split()) or type(err).__name__
            raise ConfigError(f"model: this UNet2DModel config cannot be built: {message}", "model") from None


#: Upper bounds of the sizes ``validate`` accepts (larger values are typos, not runs).
MAX_RESOLUTION = 4096
MAX_TRAIN_TIMESTEPS = 100_000
MAX_NUM_SAMPLES = 4096
MAX_SEED = 2**62
MAX_FID_SAMPLES = 50_000
#: Largest ``layers_per_block`` and number of levels of a UNet config (more is a typo; 13 levels halve 4096 to 1).
MAX_LAYERS_PER_BLOCK = 100
MAX_LEVELS = 13
#: A JSON config (preset, UNet config.json) larger than this is not one.
MAX_JSON_BYTES = 16 * 2**20


def max_threads_allowed() -> int:
    """The largest ``threads`` value accepted: four times the CPU count."""
    return 4 * max(1, os.cpu_count() or 1)


def _device_name_ok(name: Any) -> bool:
    if not isinstance(name, str):
        return False
    if name in ("auto", "cpu", "cuda", "mps"):
        return True
    head, _, index = name.partition(":")
    return head == "cuda" and index.isdigit()


def _check_model_types(model: dict[str, Any]) -> None:
    """A ConfigError for a UNet config key whose JSON type cannot be the one UNet2DModel takes (a string where a
    number goes, a number where a list goes), judged from the constructor's defaults; keys it does not know are left
    to the model (Diffusers' configs carry keys of other versions)."""
    import inspect

    from ddpm.models import UNet2DModel

    kinds = {
        name: prm.default
        for name, prm in inspect.signature(UNet2DModel.__init__).parameters.items()
        if prm.default is not inspect.Parameter.empty and prm.default is not None
    }
    for key, value in model.items():
        if key not in kinds or value is None:
            continue
        default = kinds[key]
        if isinstance(default, bool):
            ok, kind = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok, kind = _is_int(value), "an integer"
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            kind = "a finite number"
        elif isinstance(default, str):
            ok, kind = isinstance(value, str), "a string"
        elif isinstance(default, (tuple, list)):
            ok, kind = isinstance(value, (tuple, list)), "a list"
        else:
            continue
        if ok and key == "layers_per_block" and value > MAX_LAYERS_PER_BLOCK:  # (< 1: the UNet's own message)
            ok, kind = False, f"an integer in [1, {MAX_LAYERS_PER_BLOCK}]"
        if not ok:
            raise ConfigError(
                f"model: {key}={value!r} must be {kind}", "model", None, f"{key}: {kind}",
                reason=f"{key}={value!r} is not {kind}",
            )  # fmt: skip


REPORT_TARGETS = ("none", "auto", "tensorboard", "wandb")
#: Samplers of the proxy FID: those that need nothing beyond the weights (Analytic-DPM needs a moment table).
PROXY_FID_SAMPLERS = ("ddim", "dpm-solver++", "ddpm")


def report_targets(report_to: str) -> list[str]:
    """The targets of ``report_to`` ("none", "auto", "tensorboard", "wandb", or a comma list of the last two)."""
    names = [n.strip().lower() for n in str(report_to).split(",") if n.strip()]
    return [n for n in dict.fromkeys(names) if n != "none"]


def _validate_ecosystem(cfg: TrainConfig) -> None:
    """The options of gradient accumulation, reporting, Hugging Face data and the proxy FID."""

    def need(ok: bool, key: str, allowed: str) -> None:
        if not ok:
            value = getattr(cfg, key)
            err = ConfigError(f"invalid {key}={value!r}: must be {allowed}")
            err.key, err.value, err.allowed = key, value, allowed  # for a command line to name its own option
            raise err

    need(_is_int(cfg.grad_accum) and cfg.grad_accum >= 1, "grad_accum", "a positive integer (1: no accumulation)")
    targets = report_targets(cfg.report_to) if isinstance(cfg.report_to, str) else ["?"]
    need(
        all(t in REPORT_TARGETS for t in targets) and ("auto" not in targets or len(targets) == 1),
        "report_to",
        "none, auto, tensorboard, wandb or a comma list of tensorboard and wandb",
    )
    need(cfg.progress_interval >= 0, "progress_interval", ">= 0 seconds (0: a line at every --log-every)")
    need(cfg.image_column is None or bool(cfg.image_column), "image_column", "a column name")
    need(_is_int(cfg.fid_every) and cfg.fid_every >= 0, "fid_every", "an integer >= 0 (0: no proxy FID)")
    if cfg.fid_every and not cfg.fid_ref_stats:
        raise ConfigError(
            f"invalid fid_ref_stats={cfg.fid_ref_stats!r}: must be a statistics file when fid_every > 0",
            "fid_ref_stats", None, "statistics made by ddpm eval fid SOURCE REFERENCE --ref-stats FILE",
            reason=f"missing: the proxy FID of --fid-every {cfg.fid_every} needs reference statistics",
        )  # fmt: skip
    need(
        _is_int(cfg.fid_num_samples) and 2 <= cfg.fid_num_samples <= MAX_FID_SAMPLES, "fid_num_samples",
        f"an integer in [2, {MAX_FID_SAMPLES}] (a full FID uses 50,000 images)",
    )  # fmt: skip
    need(_is_int(cfg.fid_num_inference_steps) and cfg.fid_num_inference_steps >= 1, "fid_num_inference_steps",
         "a positive integer")  # fmt: skip
    need(cfg.fid_sampler in PROXY_FID_SAMPLERS, "fid_sampler", f"one of {', '.join(PROXY_FID_SAMPLERS)}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _coerce(f: dataclasses.Field, value: Any, source: str) -> Any:
    """Check a preset/JSON value against the field's declared type (ints may stand for floats)."""
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    bad = ConfigError(f"{source}: {f.name} must be {kind}, got {value!r}")
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise bad
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if kind == "str":
        if not isinstance(value, str):
            raise bad
        return value
    if kind == "str | None":
        if value is not None and not isinstance(value, str):
            raise bad
        return value
    return value


# ---------------------------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------------------------
def preset_names() -> list[str]:
    """Names of the presets shipped with the package."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def is_preset_name(name_or_path: str | os.PathLike) -> bool:
    """Whether ``name_or_path`` is a bare preset name (no folder, no ``.json``) rather than a path to a file."""
    text = os.fspath(name_or_path)
    return bool(text) and Path(text).name == text and not text.endswith(".json") and text not in (".", "..")


def find_preset(name_or_path: str | os.PathLike) -> Path:
    """A preset file. A bare name (``cifar10``) is always the shipped preset ``PRESET_DIR/NAME.json``, whatever the
    working directory holds; anything else (``my.json``, ``./cifar10``, ``runs/x.json``) is a path to a JSON file.
    :class:`ConfigError` naming the value and the shipped presets otherwise."""
    shipped = ", ".join(preset_names())
    text = os.fspath(name_or_path)
    allowed = preset_allowed()
    if is_preset_name(name_or_path):
        candidate = PRESET_DIR / f"{text}.json"
        if candidate.is_file():
            return candidate
        raise ConfigError(
            f"no preset {text!r}: the shipped presets are {shipped} "
            "(for a file of your own give its path, e.g. ./NAME.json)",
            "preset", text, allowed, reason="no preset of this name",
        )  # fmt: skip
    path = Path(name_or_path)
    if path.is_file():
        return path
    reason = "a folder, not a JSON file" if path.is_dir() else "no such file" if not path.exists() else "not a file"
    raise ConfigError(
        f"no preset {text!r}: {reason} (the shipped presets are {shipped})", "preset", text, allowed,
        reason=f"no preset: {reason}",
    )  # fmt: skip


def preset_allowed() -> str:
    """What ``--config`` takes, for error lines: the shipped presets' names or a JSON file."""
    return f"a shipped preset ({', '.join(preset_names())}) or a JSON file of training options"


def load_json_object(
    path: str | os.PathLike, what: str, key: str | None = None, allowed: str | None = None
) -> dict[str, Any]:
    """The JSON object in the file ``path`` (``what`` names it in messages). :class:`ConfigError` (with ``key`` and
    ``allowed`` for a command line's error line) for a file that cannot be read, is not a regular file (a folder,
    ``/dev/zero``), is larger than any config, is binary, is not JSON or holds something other than an object."""

    def fail(message: str, reason: str):
        return ConfigError(f"{what} {path}: {message}", key, os.fspath(path), allowed, reason=reason)

    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise fail(f"{kind}, not a JSON file", f"{kind}, not a JSON {what}")
        if info.st_size > MAX_JSON_BYTES:
            raise fail(f"{info.st_size} bytes, too large for a JSON config", f"too large for a JSON {what}")
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as err:
        raise ConfigError(f"cannot read {what} {path}: {err.strerror or err}", key, os.fspath(path), allowed,
                          reason=f"cannot read it: {err.strerror or err}") from None  # fmt: skip
    except UnicodeDecodeError:
        raise fail("not a JSON file (binary data, not UTF-8 text)", f"not a JSON {what} (binary data)") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{what} {path} is not valid JSON: {err}", key, os.fspath(path), allowed,
                          reason=f"not valid JSON ({err})") from None  # fmt: skip
    except RecursionError:
        raise fail("not a JSON config (nested too deeply)", f"not a JSON {what} (nested too deeply)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a JSON object", key, os.fspath(path), allowed,
                          reason=f"holds a JSON {type(data).__name__}, not an object")  # fmt: skip
    return data


def load_preset(name_or_path: str | os.PathLike) -> dict[str, Any]:
    path = find_preset(name_or_path)
    return load_json_object(path, "preset", "preset", preset_allowed())


def _shape_key(model_config, key: str, value: Any, allowed: str) -> Any:
    """A UNet config's ``sample_size`` (an integer or a square [H, W]), ``in_channels`` (an integer) or ``dropout``
    (a number), checked for its type here so that an error names the file rather than ``--resolution``."""
    if key == "sample_size" and isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) if key == "dropout" else _is_int(value)
    if not ok:
        kind = {"sample_size": "an integer (or a square [H, W])", "in_channels": "an integer"}.get(key, "a number")
        raise ConfigError(
            f"model config {model_config}: {key}={value!r} must be {kind}", "model_config", str(model_config),
            allowed, reason=f"{key}={value!r} is not {kind}",
        )  # fmt: skip
    return value


def resolve_config(
    preset: str | os.PathLike | None = None,
    model_config: str | os.PathLike | dict | None = None,
    base: TrainConfig | None = None,
    **overrides: Any,
) -> TrainConfig:
    """Combine, lowest precedence first: ``base`` (default: the defaults), a preset, a UNet config (file or dict),
    then ``overrides`` (TrainConfig field names). Returns a validated :class:`TrainConfig`."""
    cfg = dataclasses.replace(base) if base is not None else TrainConfig()
    if preset is not None:
        cfg = TrainConfig.from_dict(load_preset(preset), base=cfg, source=f"preset {preset}")
    if model_config is not None:
        allowed = "a UNet2DModel config.json (a JSON object of Diffusers' UNet2DModel keys)"
        data = model_config
        if not isinstance(model_config, dict):
            data = load_json_object(model_config, "model config", "model_config", allowed)
        cls = data.get("_class_name", "UNet2DModel")
        if cls != "UNet2DModel":
            raise ConfigError(
                f"model config {model_config}: _class_name is {cls!r}, expected 'UNet2DModel'", "model_config",
                str(model_config), allowed, reason=f"_class_name is {cls!r}, not 'UNet2DModel'",
            )  # fmt: skip
        cfg.model = {k: v for k, v in data.items() if not k.startswith("_")}
        # A file's shape and dropout apply unless given explicitly.
        for key, field_name in (("sample_size", "resolution"), ("in_channels", "channels"), ("dropout", "dropout")):
            if key in data and field_name not in overrides and data[key] is not None:
                value = _shape_key(model_config, key, data[key], allowed)
                setattr(cfg, field_name, value)
    cfg = TrainConfig.from_dict(overrides, base=cfg, source="options")
    for key in _UNET_KEYS_FROM_OPTIONS:
        cfg.model.pop(key, None)
    return cfg.validate()


# ---------------------------------------------------------------------------------------------------------------
# Sizes that cannot work: a batch larger than the data set or than the memory
# ---------------------------------------------------------------------------------------------------------------
def batch_repeat_warning(cfg: TrainConfig, size: int) -> str | None:
    """A warning when one update's batch holds more images than the data set (``size`` images), else None. Every
    process draws from the whole set (:class:`~ddpm.training.data_order.DataOrder`), so a batch larger than it wraps
    around the epochs: it works, but repeats images inside one update. Batches that cannot fit at all are refused
    earlier by :func:`check_step_fits`."""
    update = cfg.batch_size * cfg.grad_accum
    if update <= size:
        return None
    what = f"--batch-size {cfg.batch_size}" + (f" x --grad-accum {cfg.grad_accum}" if cfg.grad_accum > 1 else "")
    return (
        f"warning: {what} = {update} images per update, more than the {size} images of the data set: each update "
        f"repeats images (about {update / size:.1f} times each); a batch of at most {size} does not"
    )


def parameter_count(cfg: TrainConfig) -> int:
    """Parameters of the run's UNet, counted on the meta device (no memory, no arithmetic)."""
    import torch

    from ddpm.models import UNet2DModel

    with torch.device("meta"):
        model = UNet2DModel.from_config(cfg.unet_config())
    return sum(p.numel() for p in model.parameters())


def step_memory_bytes(cfg: TrainConfig, world_size: int = 1, grad_accum: int | None = None) -> int:
    """A lower bound of the memory one training step of one process needs, in bytes: the weights, their gradients,
    Adam's two moments and the EMA copy (5 x 4 bytes per parameter); the update's noise, drawn whole for the global
    batch on every process (``batch_size * grad_accum`` x C x R^2 float32); and the first UNet activation of one
    micro-batch (``batch_size / world_size`` x ``block_out_channels[0]`` x R^2; 2 bytes under bf16/fp16 autocast).
    The real need is several times larger (every activation is kept for the backward pass)."""
    k = cfg.grad_accum if grad_accum is None else grad_accum
    pixels = cfg.resolution * cfg.resolution
    micro = max(1, cfg.batch_size // max(1, world_size))
    act_bytes = 2 if cfg.precision in ("bf16", "fp16") else 4
    noise = cfg.batch_size * k * cfg.channels * pixels * 4
    activation = micro * int(cfg.model["block_out_channels"][0]) * pixels * act_bytes
    return 5 * 4 * parameter_count(cfg) + noise + activation


def check_step_fits(cfg: TrainConfig, have: int | None, where: str, world_size: int = 1) -> None:
    """:class:`ConfigError` naming ``--batch-size``, ``--grad-accum`` or the model when one training step's lower
    bound (:func:`step_memory_bytes`) exceeds ``have`` bytes (``where``: "this machine's memory", "cuda:0's memory");
    nothing when ``have`` is unknown."""
    if have is None:
        return
    params = 5 * 4 * parameter_count(cfg)
    if params > have:
        raise ConfigError(
            "model: its weights, gradients, Adam moments and EMA take "
            f"{_human_bytes(params)}, more than the {_human_bytes(have)} of {where}", "model", None,
            "a smaller UNet", reason=f"weights, gradients, Adam moments and EMA take {_human_bytes(params)}, more "
            f"than the {_human_bytes(have)} of {where}",
        )  # fmt: skip
    for key, k in (("batch_size", 1), ("grad_accum", cfg.grad_accum)):
        need = step_memory_bytes(cfg, world_size, grad_accum=k)
        if need > have:
            value = getattr(cfg, key)
            text = (
                f"one training step needs at least {_human_bytes(need)} (noise, first activation, weights), "
                f"more than the {_human_bytes(have)} of {where}"
            )
            raise ConfigError(f"invalid {key}={value}: {text}", key, value, "a smaller value", reason=text)


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"
