"""The table of attempts, generated systematically (docs/hardening.md lists what each class tries).

Classes (``--only``):

* ``valid``: valid requests of every sub-command; they must succeed and their results are checked (the control
  group: a fix that refuses everything fails here);
* ``options``: each sub-command x each option x bad values (0, -1, huge, nan, inf, strings, empty) (issue #15
  classes 11, 12);
* ``files``: missing, directory, zero-byte, truncated, wrong-format inputs and unwritable outputs (4, 5, 7);
* ``numerics``: non-finite numbers in and out, NaN weights, impossible sizes (7, 10, 11);
* ``kills``: SIGKILL / SIGINT / SIGTERM during training, checkpoint writes, exports, eval generate and eval nll, then
  the rerun or resume (1, 2, 3, 13);
* ``interference``: two trains in one folder, resumes with changed settings or damaged run folders (8, 9);
* ``cache``: two archives of one file name, a FID reference cache whose images changed (6);
* ``api``: wrong types, shapes and values given to DDPMScheduler, UNet2DModel and DDPMPipeline.
"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import numpy as np

from . import scenarios
from .core import Attempt, ddpm_argv, run_cli, run_process, warned
from .fixtures import TRAIN_TINY

CLASSES = ("valid", "options", "files", "numerics", "kills", "interference", "cache", "api")

# ---------------------------------------------------------------------------------------------------------------
# Valid base commands of each sub-command (small and fast); option attempts append one option to these.
# ---------------------------------------------------------------------------------------------------------------
SAMPLE = ["sample", "--model", "{tiny}", "--num-samples", "2", "--batch-size", "2", "--num-inference-steps", "3",
          "--threads", "1", "--no-progress", "--out", "{work}/s.npz"]  # fmt: skip
GENERATE = ["eval", "generate", "--model", "{tiny}", "--num-samples", "2", "--batch-size", "2",
            "--num-inference-steps", "3", "--threads", "1", "--out", "{work}/g.npz"]  # fmt: skip
NLL = [
    "eval",
    "nll",
    "--model",
    "{tiny}",
    "--data",
    "{npz}",
    "--num-samples",
    "2",
    "--batch-size",
    "2",
    "--t-batch",
    "10",
]
FID = ["eval", "fid", "{stats8}", "{stats8b}"]  # 8 features: instant (the 2048 case: valid/fid-stats)
IS = ["eval", "is", "{samples}"]
PROGRESSIVE = [
    "eval",
    "progressive",
    "--model",
    "{tiny}",
    "--num-samples",
    "2",
    "--every",
    "10",
    "--out",
    "{work}/p.png",
]
SHARED = ["eval", "shared-latent", "--model", "{tiny}", "--num-samples", "2", "--out", "{work}/sl.png"]
INTERP = ["eval", "interpolate", "--model", "{tiny}", "--data", "{npz}", "--pairs", "0,1", "--out", "{work}/i.png"]
RATE = ["eval", "rate-distortion", "--model", "{tiny}", "--data", "{npz}", "--num-samples", "2", "--t-batch", "10",
        "--out", "{work}/rd"]  # fmt: skip
ANALYTIC = ["analytic-dpm", "--model", "{work}/m", "--data", "{npz}", "--num-samples-per-timestep", "2",
            "--batch-size", "50", "--no-progress"]  # fmt: skip
TRAIN = ["train", *TRAIN_TINY, "--max-steps", "2", "--checkpoint-every", "2", "--output-dir", "{work}/run"]

HUGE = "1000000000"
STRINGS = ("nan", "1e9", "", "abc")  # rotated over the integer options: argparse must refuse each cleanly
FLOAT_STRINGS = ("abc", "")  # rotated over the float options ("nan" and "1e9" are floats)
FLOAT_OPTIONS = {"--eta", "--lr", "--grad-clip", "--ema-decay", "--dropout", "--vlb-weight", "--snr-gamma"}


def _copy_tiny(work: Path, fx) -> None:
    shutil.copytree(fx.paths["tiny"], work / "m")


# ---------------------------------------------------------------------------------------------------------------
# Checks of successful runs
# ---------------------------------------------------------------------------------------------------------------
def npz_count(name: str, n: int, shape: tuple | None = None):
    def check(work: Path, fx, run) -> str | None:
        path = work / name
        if not path.is_file():
            return f"{name} was not written"
        with np.load(path) as data:
            images = data["images"]
        if images.shape[0] != n:
            return f"{name} holds {images.shape[0]} images, {n} asked for"
        if images.dtype != np.uint8:
            return f"{name} images are {images.dtype}, not uint8"
        if shape is not None and images.shape[1:] != shape:
            return f"{name} images are {images.shape[1:]}, expected {shape}"
        return None

    return check


def files_exist(*names: str):
    def check(work: Path, fx, run) -> str | None:
        missing = [n for n in names if not (work / n).exists()]
        return f"not written: {', '.join(missing)}" if missing else None

    return check


def warns(work: Path, fx, run) -> str | None:
    if not warned(run.stderr):
        return "accepted without a warning: " + (run.stdout.strip().splitlines() or [""])[-1][:150]
    return None


def notice(old: str, then=None):
    """A deprecated spelling (issue #17) still works, with its one-line notice on stderr; ``then``: the result's
    check."""

    def check(work: Path, fx, run) -> str | None:
        if f"{old} is deprecated" not in run.stderr:
            return f"{old} accepted without its deprecation notice"
        return then(work, fx, run) if then is not None else None

    return check


def _finished_run(work: Path, fx) -> None:
    """A copy of a finished 4-step tiny run in ``work/run`` (for ``ddpm export``)."""
    scenarios._base_run(fx, work)


def _finished_run_and_full_folder(work: Path, fx) -> None:
    _finished_run(work, fx)
    (work / "full").mkdir()
    (work / "full" / "keep.txt").write_text("not a pipeline")


def _kept(name: str):
    def check(work: Path, fx, run) -> str | None:
        return None if (work / name).is_file() else f"{name} was removed by a refused command"

    return check


def finite_exports(work: Path, fx, run) -> str | tuple[str, str] | None:
    """No non-finite weight in the run's export or in any checkpoint (a NaN run must not be saved as good)."""
    import torch
    from safetensors.torch import load_file

    out = work / "run"
    bad = []
    export = out / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"
    if export.is_file() and not all(torch.isfinite(v).all() for v in load_file(export).values()):
        bad.append("pipeline/ export")
    for ckpt in sorted((out / "checkpoints").glob("checkpoint-*.pt")):
        try:
            from ddpm.training.checkpoint import load_checkpoint

            state = load_checkpoint(ckpt)
        except Exception:  # an unreadable checkpoint is not a NaN one
            continue
        if not all(torch.isfinite(v).all() for v in state["model"].values() if torch.is_tensor(v)):
            bad.append(ckpt.name)
    return ("silent-wrong", f"non-finite weights saved: {', '.join(bad)}") if bad else None


def early_error(full: list[str], startup: list[str], key: str):
    """A clean error must come before the work: lost-work when it cost more than start-up plus half the CPU time of
    the same request done to a writable place (``full``); ``startup`` is a request with almost no work."""

    def check(work: Path, fx, run) -> str | None:
        how = "forked" if run.forked else "process"  # the references are run the way the attempt was

        def make():
            folder = fx.root / "refs" / f"early-{key}-{how}"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)

            def one(args):
                args = [fx.fill(x, folder) for x in args]
                if run.forked:
                    return run_cli(args, folder, 600).cpu
                return run_process(ddpm_argv(args), folder, 600).cpu

            return one(startup), one(full)

        s, r = fx.reference(f"early-{key}-{how}", make)
        if r - s > 1.0 and run.cpu > s + 0.5 * (r - s):
            return f"error only after the work ({run.cpu:.1f} s CPU; the whole job {r:.1f} s, start-up {s:.1f} s)"
        return None

    return check


# ---------------------------------------------------------------------------------------------------------------
# valid
# ---------------------------------------------------------------------------------------------------------------
def valid_attempts() -> list[Attempt]:
    a = []

    def add(name, cmd, what, check=None, setup=None, expect="ok", **kw):
        a.append(Attempt(f"valid/{name}", "valid", "-", cmd, expect, what, check=check, setup=setup, **kw))

    add("sample-npz", SAMPLE, "2 images in s.npz", npz_count("s.npz", 2, (8, 8, 3)))
    add("sample-bundled", ["sample", "--num-samples", "3", "--no-progress", "--threads", "1", "--out", "{work}/b.npz"],
        "the bundled model: 3 images 28x28x1", npz_count("b.npz", 3, (28, 28, 1)))  # fmt: skip
    add("sample-png", [*SAMPLE[:-1], "{work}/s.png"], "a PNG grid", files_exist("s.png"))
    add("sample-folder", [*SAMPLE[:-1], "{work}/imgs"], "one PNG per image", files_exist("imgs/000000.png"))
    # the old spellings of issue #17 work for one release, with a notice (the other attempts use the new ones)
    add("sample-steps-alias", [*SAMPLE, "--steps", "2"], "deprecated --steps still works",
        notice("--steps", npz_count("s.npz", 2)))  # fmt: skip
    add("sample-num-images-alias", [*SAMPLE, "--num-images", "3"], "deprecated --num-images still works",
        notice("--num-images", npz_count("s.npz", 3)))  # fmt: skip
    add("nll-num-images-alias", [*NLL, "--num-images", "3"], "deprecated --num-images still works",
        notice("--num-images"))  # fmt: skip
    add("train-quiet-alias", [*TRAIN, "--quiet"], "deprecated --quiet still works",
        notice("--quiet", files_exist("run/pipeline/model_index.json")))  # fmt: skip
    add("train-sample-steps-alias", [*TRAIN, "--sample-every", "2", "--sample-steps", "3"],
        "deprecated --sample-steps still works", notice("--sample-steps", files_exist("run/samples")))  # fmt: skip
    add("export", ["export", "--checkpoint", "{work}/run", "--out", "{work}/e"], "a pipeline folder from a run",
        files_exist("e/model_index.json", "e/unet/config.json"), _finished_run, timeout=300)  # fmt: skip
    for sampler in ("ddim", "dpm-solver++"):
        add(f"sample-{sampler}", [*SAMPLE, "--sampler", sampler], f"{sampler} sampler", npz_count("s.npz", 2))
    add("generate", GENERATE, "2 images in g.npz", npz_count("g.npz", 2, (8, 8, 3)))
    add("generate-batch-3", [*GENERATE, "--num-samples", "5", "--batch-size", "3"], "5 images, batch 3",
        npz_count("g.npz", 5))  # fmt: skip
    add("nll", [*NLL, "--out", "{work}/n.npz", "--json", "{work}/n.json"], "a finite bound, n.npz and n.json",
        files_exist("n.npz", "n.json"))  # fmt: skip
    add("fid-stats", ["eval", "fid", "{stats}", "{stats2}"], "FID of two statistics files of 2048 features",
        timeout=600)  # fmt: skip
    add("fid-stats-8-features", FID, "statistics of 8 features (another network): a FID with a warning", warns)
    add("is-no-classifier", IS, "a clean 'skipped: needs --inception-logits'", expect="error")
    add("progressive", PROGRESSIVE, "p.png", files_exist("p.png"))
    add("shared-latent", SHARED, "sl.png", files_exist("sl.png"))
    add("interpolate", INTERP, "i.png", files_exist("i.png"))
    add("rate-distortion", RATE, "rd.png, rd.csv, rd.json", files_exist("rd.png", "rd.csv", "rd.json"))
    add("analytic-dpm", ANALYTIC, "m/analytic_dpm.json", files_exist("m/analytic_dpm.json"), _copy_tiny)
    add("train", TRAIN, "a 2-step run with an export", files_exist("run/pipeline/model_index.json"))
    add("train-dry-run", ["train", "--config", "cifar10", "--dry-run"], "the resolved config")
    add("train-png-folder", [*TRAIN, "--data", "{png_folder}"], "a run on a PNG folder",
        files_exist("run/pipeline/model_index.json"))  # fmt: skip
    return a


# ---------------------------------------------------------------------------------------------------------------
# options: each sub-command x each option x bad values
# ---------------------------------------------------------------------------------------------------------------
def _int_values(minimum: int, huge: str | None, huge_expect: str, extra=()) -> list[tuple[str, str]]:
    values = [(str(minimum - 1), "error")]
    if minimum - 1 != -1:
        values.append(("-1", "error"))
    if huge:
        values.append((huge, huge_expect))
    return values + list(extra)


def _float_values(*, negative=True, nan=True, inf=True, extra=()) -> list[tuple[str, str]]:
    values = [("-1", "error")] if negative else []
    values += [("nan", "error")] if nan else []
    values += [("inf", "error")] if inf else []
    return values + list(extra)


#: sub-command -> (base command, [(option, values, setup)]); integer options also get one rotated bad string.
def _option_table():
    steps = lambda: _int_values(1, "5000", "error")  # noqa: E731 - T = 50 for the tiny model
    seed = lambda: _int_values(0, str(10**20), "either")  # noqa: E731
    batch = lambda: _int_values(1, HUGE, "either")  # noqa: E731
    devices = [("tpu", "error"), ("cuda", "error"), ("cuda:7", "error"), ("", "error")]
    return {
        "sample": (SAMPLE, None, [
            ("--num-samples", _int_values(1, HUGE, "error")),
            ("--batch-size", batch()),
            ("--num-inference-steps", steps()),
            ("--seed", seed()),
            ("--threads", _int_values(1, "100000", "either")),
            ("--eta", _float_values(extra=[("0.5", "error")])),  # eta with the tiny model's ddpm sampler
            ("--device", [("tpu", "error"), ("cuda", "error")]),
            ("--dtype", [("float64", "error")]),
            ("--sampler", [("foo", "error"), ("analytic-ddpm", "error")]),
            ("--out", [("{work}/s.jpg", "error"), ("{work}", "either")]),
            ("--weights", [("raw", "error")]),  # a pipeline folder has one set of weights; --weights is for runs
            ("--scale", [("0", "error"), ("-1", "error")]),
        ]),
        "generate": (GENERATE, None, [
            ("--num-samples", _int_values(1, HUGE, "error")),
            ("--batch-size", batch()),
            ("--num-inference-steps", steps()),
            ("--seed", seed()),
            ("--threads", _int_values(1, "100000", "either")),
            ("--eta", _float_values(negative=False, extra=[("-0.5", "error")])),
            ("--device", devices),
            ("--sampler", [("foo", "error")]),
            ("--out", [("{work}/g.png", "error"), ("{work}", "error")]),
        ]),
        "nll": (NLL, None, [
            ("--num-samples", _int_values(0, HUGE, "either")),
            ("--batch-size", batch()),
            ("--t-batch", _int_values(1, HUGE, "either")),
            ("--seed", seed()),
            ("--device", devices),
            ("--threads", [("100000", "either")]),
        ]),
        "fid": (FID, None, [
            ("--num-samples", _int_values(1, HUGE, "either")),
            ("--batch-size", _int_values(1, None, "either")),
            ("--resolution", _int_values(1, None, "either")),
            ("--subset-seed", [("-1", "error")]),
            ("--gen-batch-size", _int_values(1, None, "either")),
            ("--num-inference-steps", _int_values(1, None, "either")),
            ("--seed", _int_values(0, None, "either")),
            ("--device", [("tpu", "error")]),
            ("--method", [("foo", "error")]),
        ]),
        "is": (IS, None, [
            ("--splits", _int_values(1, None, "either")),
            ("--num-samples", _int_values(1, None, "either")),
            ("--batch-size", _int_values(1, None, "either")),
        ]),
        "progressive": (PROGRESSIVE, None, [
            ("--num-samples", _int_values(1, HUGE, "error")),
            ("--every", _int_values(1, HUGE, "either")),
            ("--num-inference-steps", steps()),
            ("--seed", _int_values(0, None, "either")),
            ("--device", [("tpu", "error")]),
        ]),
        "shared-latent": (SHARED, None, [
            ("--num-samples", _int_values(1, HUGE, "error")),
            ("--timesteps", [("50", "error"), ("-1", "error"), ("a,b", "error"), ("", "either")]),
            ("--index", [("-1", "error")]),
        ]),
        "shared-latent-data": ([*SHARED, "--data", "{npz}"], None, [
            ("--index", [("1000", "error")]),
        ]),
        "interpolate": (INTERP, None, [
            ("--pairs", [("a,b", "error"), ("0", "error"), ("0,1,2", "error"), ("0,1000", "error"),
                         ("-1,0", "error"), ("", "error")]),
            ("--t", [("-1", "error"), ("50", "error"), ("5000", "error")]),
            ("--lambdas", [("nan", "error"), ("x", "error"), ("-1,2", "either"), ("", "either")]),
        ]),
        "rate-distortion": (RATE, None, [
            ("--num-samples", _int_values(0, None, "either")),
            ("--t-batch", _int_values(1, None, "either")),
            ("--batch-size", _int_values(1, None, "either")),
        ]),
        "analytic-dpm": (ANALYTIC, _copy_tiny, [
            ("--num-samples-per-timestep", _int_values(2, HUGE, "error", extra=[("0", "error")])),
            ("--batch-size", _int_values(1, HUGE, "either")),
            ("--seed", _int_values(0, None, "either")),
            ("--device", [("tpu", "error")]),
        ]),
        "train": (TRAIN, None, [
            ("--resolution", _int_values(1, "1000000", "error")),
            ("--channels", [("2", "error"), ("0", "error")]),
            ("--batch-size", _int_values(1, HUGE, "error")),
            ("--lr", _float_values(extra=[("0", "either")])),
            ("--warmup-steps", [("-1", "error")]),
            ("--grad-clip", _float_values(inf=False)),
            ("--ema-decay", _float_values(inf=False, extra=[("1.5", "error")])),
            ("--dropout", _float_values(inf=False, extra=[("1.5", "error")])),
            ("--max-steps", _int_values(1, None, "either")),
            ("--checkpoint-every", _int_values(1, None, "either")),
            ("--sample-every", [("-1", "error")]),
            ("--num-inference-steps", _int_values(1, "5000", "error")),
            ("--num-samples", _int_values(1, None, "either")),
            ("--keep-checkpoints", _int_values(1, None, "either")),
            ("--seed", [("-1", "either"), (str(10**20), "either"), ("1e20", "error")]),
            ("--num-workers", [("-1", "error")]),
            ("--log-every", _int_values(1, None, "either")),
            ("--device", [("tpu", "error"), ("cuda", "error"), ("", "error")]),
            ("--vlb-weight", _float_values(inf=False)),
            ("--snr-gamma", _float_values(inf=False)),
            ("--precision", [("fp8", "error")]),
            ("--lr-schedule", [("foo", "error")]),
            ("--config", [("nosuchpreset", "error"), ("{a_file}", "error"), ("{npz}", "error")]),
            ("--model-config", [("{work}/missing.json", "error"), ("{a_file}", "error"),
                                ("{work}/keys.json", "error"), ("{npz}", "error"), ("{work}/list.json", "error"),
                                ("{work}/types.json", "error"), ("/dev/zero", "error")]),
            # what this round added (so that a rerun guards it)
            ("--grad-accum", _int_values(1, HUGE, "error", extra=[("1e9", "error")])),
            ("--report-to", [("mlflow", "error")]),
            ("--fid-every", [("5", "error")]),  # without --fid-ref-stats
            ("--data", [("hf:", "error")]),
            ("--threads", [("100000", "error")]),
        ]),
    }  # fmt: skip


INT_OPTIONS_WITHOUT_STRING = {
    "--timesteps",
    "--pairs",
    "--lambdas",
    "--out",
    "--device",
    "--sampler",
    "--dtype",
    "--weights",
    "--report-to",
    "--data",
}
#: Options added after the baseline that get no rotated string: the rotation of the others, hence their ids, stays.
NEW_WITHOUT_STRING = {
    ("sample", "--scale"),
    ("nll", "--threads"),
    ("train", "--threads"),
    ("train", "--fid-every"),
    ("train", "--grad-accum"),
}


def _write_bad_keys(work: Path, fx) -> None:
    import json

    from .fixtures import TINY_TRAIN_UNET

    (work / "keys.json").write_text('{"no_such_key": 1, "block_out_channels": "wide"}')
    (work / "list.json").write_text("[8, 16]")
    (work / "types.json").write_text(json.dumps(dict(TINY_TRAIN_UNET, layers_per_block="1", norm_eps="small")))


def option_attempts() -> list[Attempt]:
    attempts, rotation = [], 0
    for sub, (base, setup, options) in _option_table().items():
        for option, values in options:
            values = list(values)
            numeric = option not in INT_OPTIONS_WITHOUT_STRING and not any(v == "foo" for v, _ in values)
            numeric = numeric and (sub, option) not in NEW_WITHOUT_STRING
            if numeric and option not in ("--config", "--model-config", "--precision", "--lr-schedule"):
                pool = FLOAT_STRINGS if option in FLOAT_OPTIONS else STRINGS
                values.append((pool[rotation % len(pool)], "error"))
                rotation += 1
            for value, expect in values:
                cmd = [*base, option, value]
                huge = value in (HUGE, "100000", "1000000", str(10**20))
                if sub == "sample" and option == "--eta":
                    cmd = [*base, "--sampler", "ddim", option, value] if value != "0.5" else [*base, option, value]
                label = value.replace("{work}/", "").replace("{", "").replace("}", "") or "empty"
                attempts.append(Attempt(
                    f"options/{sub}/{option.lstrip('-')}={label}", "options", "11" if huge else "12", cmd, expect,
                    f"{option} {value!r}: " + ("a clean error" if expect == "error" else "a clean error or success"),
                    timeout=25 if huge else 120,
                    setup=_write_bad_keys if option == "--model-config" else setup,
                ))  # fmt: skip
    return attempts


# ---------------------------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------------------------
SAMPLE_WORK = ["sample", "--num-samples", "6", "--batch-size", "6", "--sampler", "ddpm", "--num-inference-steps",
               "250", "--threads", "1", "--no-progress"]  # fmt: skip
NLL_WORK = ["eval", "nll", "--model", "{tiny}", "--data", "{npz_many}", "--num-samples", "48", "--batch-size", "2",
            "--t-batch", "1"]  # fmt: skip


def _read_only_dir(work: Path, fx) -> None:
    (work / "ro").mkdir()
    (work / "ro").chmod(0o555)


def _read_only_model(work: Path, fx) -> None:
    shutil.copytree(fx.paths["tiny"], work / "m")
    for p in [work / "m", *(work / "m").rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)


def file_attempts() -> list[Attempt]:
    a = []

    def add(name, issue, cmd, expect, what, **kw):
        a.append(Attempt(f"files/{name}", "files", issue, cmd, expect, what, **kw))

    models = ["{work}/nope", "{a_file}", "{empty_dir}", "{tiny_no_weights}", "{tiny_cut_weights}", "{tiny_bad_index}",
              "{tiny_empty_config}"]  # fmt: skip
    for model in models:
        label = model.strip("{}").replace("work}/", "")
        add(f"sample-model-{label}", "4", [*SAMPLE, "--model", model], "error", f"--model {label}: a clean error")
        add(f"generate-model-{label}", "4", [*GENERATE, "--model", model], "error", f"--model {label}: a clean error")
    add("nll-model-cut-weights", "4", [*NLL, "--model", "{tiny_cut_weights}"], "error", "a clean error")
    add("analytic-model-file", "4", [*ANALYTIC, "--model", "{a_file}"], "error", "a clean error")

    datas = ["{work}/nope.npz", "{a_file}", "{empty_dir}", "{zero_byte}", "{truncated_npz}", "{text_npz}",
             "{npz_float}", "{npz_empty_array}", "{npz_two_keys}", "{all_broken}", "{idx_truncated}",
             "{npz_10px}"]  # fmt: skip
    for data in datas:
        label = data.strip("{}").replace("work}/", "")
        add(f"train-data-{label}", "5,7", [*TRAIN, "--data", data], "error", f"--data {label}: a clean error")
        add(f"nll-data-{label}", "5,7", [*NLL, "--data", data], "error", f"--data {label}: a clean error")
    add(
        "train-data-idx-gz",
        "5",
        [*TRAIN, "--data", "{idx}", "--channels", "1"],
        "ok",
        "an idx.gz file trains",
        check=files_exist("run/pipeline/model_index.json"),
    )
    add(
        "train-truncated-jpeg",
        "5",
        [*TRAIN, "--data", "{jpeg_truncated}", "--batch-size", "8"],
        "either",
        "a truncated JPEG among good ones: skipped with a warning, or a clean error",
    )
    add(
        "nll-truncated-jpeg",
        "5",
        [*NLL, "--data", "{jpeg_truncated}", "--num-samples", "8"],
        "either",
        "a truncated JPEG: skipped with a warning, or a clean error",
    )
    add(
        "train-data-zero-one",
        "7",
        [*TRAIN, "--data", "{npz_01}"],
        "either",
        "uint8 images holding only 0 and 1 (a [0, 1] set saved as uint8): a warning",
        check=warns,
    )
    add("nll-data-zero-one", "7", [*NLL, "--data", "{npz_01}"], "either", "uint8 0/1 images: a warning", check=warns)
    add(
        "fid-source-zero-one",
        "7",
        ["eval", "fid", "{npz_01}", "{samples}", "--method", "eigh"],
        "either",
        "uint8 0/1 images scored: a warning",
        check=warns,
        timeout=400,
    )
    for src in ("{zero_byte}", "{truncated_npz}", "{text_npz}", "{npz_float}", "{work}/nope.npz", "{empty_dir}"):
        label = src.strip("{}").replace("work}/", "")
        add(f"fid-source-{label}", "7", ["eval", "fid", src, "{stats}"], "error", "a clean error", timeout=300)
    add(
        "fid-ref-stats-zero-byte",
        "7",
        ["eval", "fid", "{stats}", "--ref-stats", "{zero_byte}"],
        "error",
        "a clean error",
    )
    add(
        "fid-ref-stats-missing",
        "7",
        ["eval", "fid", "{stats}", "--ref-stats", "{work}/none.npz"],
        "error",
        "no reference and no cache: a clean error",
    )
    # ddpm export (this round): inputs that are not checkpoints, an output folder that holds something else
    export = ["export", "--out", "{work}/e", "--checkpoint"]
    for name, checkpoint, setup in (
        ("export-checkpoint-missing", "{work}/nope", None),
        ("export-checkpoint-file", "{a_file}", None),
        ("export-checkpoint-empty-dir", "{empty_dir}", None),
        ("export-checkpoint-is-pipeline", "{work}/run/pipeline", _finished_run),
        ("export-checkpoint-is-tiny-pipeline", "{tiny}", None),
        ("export-checkpoint-zero-byte", "{zero_byte}", None),
    ):
        add(name, "4,5", [*export, checkpoint], "error", "not a checkpoint: a clean error", setup=setup, timeout=300)
    add("export-out-not-empty", "4", ["export", "--checkpoint", "{work}/run", "--out", "{work}/full"], "error",
        "a non-empty --out without --overwrite: refused, its file kept", setup=_finished_run_and_full_folder,
        check=_kept("full/keep.txt"), tags=("error-check",), timeout=300)  # fmt: skip
    add("export-out-under-file", "4", ["export", "--checkpoint", "{work}/run", "--out", "{a_file}/e"], "error",
        "an output under a file: a clean error", setup=_finished_run, timeout=300)  # fmt: skip
    for src in ("{zero_byte}", "{npz}", "{work}/nope.npz"):
        label = src.strip("{}").replace("work}/", "")
        add(f"rate-distortion-from-{label}", "7", ["eval", "rate-distortion", "--from", src, "--out", "{work}/rd"],
            "error", "a clean error")  # fmt: skip

    # Outputs that cannot be written: the error must come before the work (issue #15 class 4).
    sample_full = [*SAMPLE_WORK, "--out", "{work}/s.png"]
    sample_small = [
        "sample",
        "--num-samples",
        "1",
        "--num-inference-steps",
        "1",
        "--no-progress",
        "--out",
        "{work}/x.png",
    ]
    nll_full = NLL_WORK
    nll_small = [*NLL_WORK, "--num-samples", "1", "--t-batch", "50"]
    early_sample = early_error(sample_full, sample_small, "sample")
    early_nll = early_error(nll_full, nll_small, "nll")
    outs = [
        ("sample-out-under-file", [*SAMPLE_WORK, "--out", "{a_file}/s.png"], early_sample, None),
        ("sample-out-proc", [*SAMPLE_WORK, "--out", "/proc/ddpm-campaign/s.npz"], early_sample, None),
        ("sample-out-read-only", [*SAMPLE_WORK, "--out", "{work}/ro/s.png"], early_sample, _read_only_dir),
        ("sample-out-folder-under-file", [*SAMPLE_WORK, "--out", "{a_file}/imgs"], early_sample, None),
        ("nll-out-under-file", [*NLL_WORK, "--out", "{a_file}/n.npz"], early_nll, None),
        ("nll-json-under-file", [*NLL_WORK, "--json", "{a_file}/n.json"], early_nll, None),
        ("nll-out-read-only", [*NLL_WORK, "--out", "{work}/ro/n.npz"], early_nll, _read_only_dir),
    ]
    for name, cmd, check, setup in outs:
        tags = ("error-check", "nobody") if setup else ("error-check",)
        add(name, "4", cmd, "error", "a clean error before any work", check=check, setup=setup, tags=tags)
    for name, cmd, setup in (
        ("generate-out-under-file", [*GENERATE, "--out", "{a_file}/g.npz"], None),
        ("generate-out-read-only", [*GENERATE, "--out", "{work}/ro/g.npz"], _read_only_dir),
        ("fid-json-under-file", [*FID, "--json", "{a_file}/f.json"], None),
        ("progressive-out-under-file", [*PROGRESSIVE, "--out", "{a_file}/p.png"], None),
        ("progressive-out-txt", [*PROGRESSIVE, "--out", "{work}/p.txt"], None),
        ("shared-latent-out-read-only", [*SHARED, "--out", "{work}/ro/sl.png"], _read_only_dir),
        ("rate-distortion-out-under-file", [*RATE, "--out", "{a_file}/rd"], None),
        ("train-output-dir-is-file", [*TRAIN, "--output-dir", "{a_file}"], None),
        ("train-output-dir-read-only", [*TRAIN, "--output-dir", "{work}/ro/run"], _read_only_dir),
        ("train-output-dir-proc", [*TRAIN, "--output-dir", "/proc/ddpm-campaign"], None),
        ("analytic-read-only-model", [*ANALYTIC], _read_only_model),
    ):
        add(name, "4", cmd, "error", "a clean error (before the work)", setup=setup,
            tags=("nobody",) if setup else ())  # fmt: skip
    return a


# ---------------------------------------------------------------------------------------------------------------
# numerics and sizes
# ---------------------------------------------------------------------------------------------------------------
def numeric_attempts() -> list[Attempt]:
    a = []

    def add(name, issue, cmd, expect, what, **kw):
        a.append(Attempt(f"numerics/{name}", "numerics", issue, cmd, expect, what, **kw))

    for lr in ("inf", "1e30"):
        add(f"train-lr-{lr}", "10", [*TRAIN, "--lr", lr, "--max-steps", "3", "--checkpoint-every", "1",
            "--grad-clip", "0"], "error", "the NaN guard stops the run and saves no non-finite weights",
            check=finite_exports, tags=("error-check",))  # fmt: skip
    add(
        "train-lr-inf-clipped",
        "10",
        [*TRAIN, "--lr", "inf", "--max-steps", "3", "--checkpoint-every", "1"],
        "error",
        "with clipping too",
        check=finite_exports,
        tags=("error-check",),
    )
    for stats, what in (
        ("stats_nan", "NaN mean"),
        ("stats_inf", "infinite covariance"),
        ("stats_neg", "covariance not PSD"),
        ("stats_dim4", "other feature size"),
    ):
        add(f"fid-{stats}", "7", ["eval", "fid", "{stats8}", "{" + stats + "}"], "error", f"{what}: a clean error")
        add(f"fid-{stats}-eigh", "7", ["eval", "fid", "{stats8}", "{" + stats + "}", "--method", "eigh"], "error",
            f"{what}: a clean error (eigh)")  # fmt: skip
    add(
        "sample-nan-weights",
        "7",
        [*SAMPLE, "--model", "{tiny_nan_weights}"],
        "error",
        "a model of NaN weights: an error, not black images",
    )
    add("generate-nan-weights", "7", [*GENERATE, "--model", "{tiny_nan_weights}"], "error", "NaN weights: an error")
    add("nll-nan-weights", "7", [*NLL, "--model", "{tiny_nan_weights}"], "error", "NaN weights: no 'NLL nan'")
    add(
        "train-resolution-not-divisible",
        "11",
        [*TRAIN, "--data", "{png_folder}", "--resolution", "9"],
        "error",
        "a resolution the UNet cannot halve: a clean error before training",
    )
    add(
        "train-resolution-6",
        "11",
        [*TRAIN, "--data", "{png_folder}", "--resolution", "6"],
        "either",
        "resolution 6 (halves once to 3): trains or a clean error",
    )
    add(
        "train-batch-larger-than-data",
        "11",
        [*TRAIN, "--batch-size", "64"],
        "either",
        "batch 64 of 24 images: trains with a warning (images repeat in a batch) or a clean error",
        check=warns,
    )
    add(
        "train-channels-mismatch",
        "11",
        [*TRAIN, "--data", "{npz_gray}", "--channels", "3"],
        "either",
        "grey images for a 3-channel run: converted, or a clean error",
    )
    add("sample-threads-huge", "11,14", [*SAMPLE, "--threads", "100000"], "either", "no segfault", timeout=60)
    add(
        "sample-num-images-huge-npz",
        "11",
        [*SAMPLE, "--num-samples", "100000000000"],
        "error",
        "an impossible count: refused before the work",
        timeout=45,
    )
    add(
        "generate-num-samples-huge",
        "11",
        [*GENERATE, "--num-samples", "100000000000"],
        "error",
        "an impossible count: refused before the work",
        timeout=45,
    )
    add("nll-num-samples-0-all", "11", [*NLL, "--num-samples", "0"], "ok", "0 means all 24 images")
    add(
        "sample-eta-1e300",
        "12",
        [*SAMPLE, "--sampler", "ddim", "--eta", "1e300"],
        "either",
        "no NaN images",
        check=npz_count("s.npz", 2),
    )
    add(
        "train-sample-steps-0",
        "12",
        [*TRAIN, "--sample-every", "1", "--sample-steps", "0"],
        "error",
        "--sample-steps 0: a clean error, not a silent other number",
    )
    add("progressive-steps-0", "12", [*PROGRESSIVE, "--num-inference-steps", "0"], "error", "a clean error")
    add("fid-num-inference-steps-0", "12", ["eval", "fid", "{tiny}", "{stats}", "--num-samples", "2",
        "--num-inference-steps", "0"], "error", "a clean error, not the default steps")  # fmt: skip
    return a


# ---------------------------------------------------------------------------------------------------------------
# kills, interference, caches
# ---------------------------------------------------------------------------------------------------------------
def kill_attempts() -> list[Attempt]:
    a = []

    def add(name, issue, custom, what, text):
        a.append(Attempt(f"kills/{name}", "kills", issue, text, "ok", what, kind="custom", custom=custom,
                         exclusive=True, timeout=900))  # fmt: skip

    train = "ddpm train (tiny, 12 steps, checkpoint every 3) killed, then ddpm train --output-dir RUN --resume"
    for i in range(3):
        add(
            f"train-sigkill-mid-{i}",
            "1,13",
            scenarios.make_train_kill("mid", seed=i),
            "resume equals an uninterrupted run bit for bit",
            f"{train} (SIGKILL at a random moment, seed {i})",
        )
    for moment, issue in (("ckpt-write", "13"), ("export", "1,13"), ("final-ckpt", "1")):
        add(
            f"train-sigkill-{moment}",
            issue,
            scenarios.make_train_kill(moment),
            "resume equals an uninterrupted run; no temporary files left",
            f"{train} (SIGKILL at {moment})",
        )
    for sig in (signal.SIGINT, signal.SIGTERM):
        add(
            f"train-{sig.name.lower()}",
            "3",
            scenarios.make_train_interrupt(sig),
            "a checkpoint at the signal, the resume command printed, then an exact resume",
            f"ddpm train (40 steps, no checkpoint due) sent {sig.name} after 6 steps, then --resume",
        )
    for job in ("generate", "nll"):
        for sig in (signal.SIGKILL, signal.SIGINT):
            add(
                f"eval-{job}-{sig.name.lower()}",
                "2,13",
                scenarios.make_eval_kill(job, sig),
                "the rerun gives the uninterrupted result and does not redo the finished part",
                f"ddpm eval {job} killed ({sig.name}) at ~60 % of its work, then the same command again",
            )
    return a


def interference_attempts() -> list[Attempt]:
    a = []

    def add(name, issue, custom, what, text):
        a.append(Attempt(f"interference/{name}", "interference", issue, text, "ok", what, kind="custom",
                         custom=custom, exclusive=name.startswith("two-trains"), timeout=900))  # fmt: skip

    add(
        "two-trains-one-folder",
        "8",
        scenarios.make_two_trains(),
        "the second is refused; the first ends as if alone",
        "a second ddpm train into a running one's --output-dir",
    )
    add(
        "two-trains-same-moment",
        "8",
        scenarios.make_two_trains(after_steps=0),
        "one is refused; the other ends as if alone",
        "two ddpm train started at once into one --output-dir",
    )
    add(
        "train-again-without-resume",
        "8",
        _train_again(),
        "refused: the folder holds a run",
        "ddpm train into a finished run's folder without --resume",
    )
    changes = [
        ("ema-warmup", ["--no-ema-warmup"], "notice", "9"),  # the warm-up is on by default (issue #17)
        ("other-data", ["--data", "{npz2}"], "notice", "9"),
        ("threads", ["--threads", "2"], "either", "9,14"),
        ("seed", ["--seed", "5"], "notice", "9"),
        ("lr", ["--lr", "5e-4"], "notice", "9"),
        ("ema-decay", ["--ema-decay", "0.5"], "notice", "9"),
        ("resolution", ["--resolution", "16"], "refuse", "9"),
        ("model-config", ["--model-config", "{work}/wide.json"], "refuse", "9"),
        ("num-workers", ["--num-workers", "1"], "either", "9"),
    ]
    for name, extra, expect, issue in changes:
        custom = scenarios.make_changed_resume(extra, expect)
        if name == "model-config":
            custom = _with_wide_config(custom)
        add(f"resume-changed-{name}", issue, custom,
            {"notice": "a warning or a refusal", "refuse": "a clean refusal", "either": "anything clean"}[expect],
            f"ddpm train --output-dir RUN --resume --max-steps 6 {' '.join(extra)}")  # fmt: skip
    for damage, issue, what in (
        ("config", "9", "config.json deleted: the checkpoint's own config, or a clean error"),
        ("newest", "13", "newest checkpoint cut short: the previous one, exactly"),
        ("zero", "13", "newest checkpoint zero bytes: the previous one, exactly"),
        ("all", "13", "every checkpoint cut short: a clean error or a fresh start with a warning"),
        ("export", "1", "pipeline/ deleted after the end: resume re-exports"),
    ):
        add(
            f"resume-damaged-{damage}",
            issue,
            scenarios.make_damaged_resume(damage),
            what,
            f"ddpm train --output-dir RUN --resume after damage: {damage}",
        )
    return a


def _train_again():
    def custom(work: Path, fx):
        out = scenarios._base_run(fx, work)
        run = fx.run_ddpm(scenarios._train_args(4, 2, str(out)), work)
        if "Traceback" in run.stderr:
            return "traceback", scenarios.traceback_evidence(run.stderr)
        if run.rc == 0:
            return "silent-wrong", "a second run overwrote the finished one"
        return "ok", scenarios.last_line(run.stderr)

    return custom


def _with_wide_config(custom):
    def wrapped(work: Path, fx):
        import json

        from .fixtures import TINY_TRAIN_UNET

        (work / "wide.json").write_text(json.dumps(dict(TINY_TRAIN_UNET, block_out_channels=[16, 16])))
        return custom(work, fx)

    return wrapped


def cache_attempts() -> list[Attempt]:
    return [
        Attempt("cache/two-archives-one-name", "cache", "6", "ddpm eval nll --data cifar10:A/cifar10-jpeg.tar.gz@test, "
                "then B/cifar10-jpeg.tar.gz, one DDPM_CACHE", "ok", "the second archive's own images",
                kind="custom", custom=scenarios.make_archive_cache(), timeout=600),
        Attempt("cache/stale-fid-reference", "cache", "6", "ddpm eval fid S REF.npz --ref-stats C twice, REF.npz "
                "rewritten in between", "ok", "the cache is not used for other images", kind="custom",
                custom=scenarios.make_stale_fid_cache(), timeout=1200),
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# api
# ---------------------------------------------------------------------------------------------------------------
_TINY_UNET = ("unet = ddpm.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), "
              "layers_per_block=1, down_block_types=('DownBlock2D', 'DownBlock2D'), up_block_types=('UpBlock2D', "
              "'UpBlock2D'), norm_num_groups=4)\n")  # fmt: skip
_PIPE = "pipe = ddpm.DDPMPipeline.from_pretrained('{tiny}')\n"
_SCHED = "s = ddpm.DDPMScheduler(num_train_timesteps=50)\n"

API_PROBES = [
    # DDPMScheduler
    ("scheduler-T-0", "ddpm.DDPMScheduler(num_train_timesteps=0)", "error"),
    ("scheduler-T-negative", "ddpm.DDPMScheduler(num_train_timesteps=-5)", "error"),
    ("scheduler-T-float", "ddpm.DDPMScheduler(num_train_timesteps=10.5)", "error"),
    ("scheduler-beta-negative", "ddpm.DDPMScheduler(beta_start=-1.0)", "error"),
    ("scheduler-beta-above-1", "s = ddpm.DDPMScheduler(beta_end=2.0)\ncheck(torch.isfinite(s.alphas_cumprod).all() "
     "and (s.alphas_cumprod >= 0).all(), 'alphas_cumprod not in [0, 1]')", "error"),
    ("scheduler-schedule-name", "ddpm.DDPMScheduler(beta_schedule='foo')", "error"),
    ("scheduler-variance-name", "ddpm.DDPMScheduler(variance_type='foo')", "error"),
    ("scheduler-prediction-name", "ddpm.DDPMScheduler(prediction_type='foo')", "error"),
    ("scheduler-spacing-name", "ddpm.DDPMScheduler(timestep_spacing='foo')", "error"),
    ("scheduler-trained-betas-nan", "ddpm.DDPMScheduler(num_train_timesteps=3, trained_betas=[0.1, float('nan'), "
     "0.2])", "error"),
    ("scheduler-set-timesteps-0", _SCHED + "s.set_timesteps(0)", "error"),
    ("scheduler-set-timesteps-negative", _SCHED + "s.set_timesteps(-1)", "error"),
    ("scheduler-set-timesteps-too-many", _SCHED + "s.set_timesteps(5000)", "error"),
    ("scheduler-set-timesteps-string", _SCHED + "s.set_timesteps('10')", "error"),
    ("scheduler-step-shape", _SCHED + "s.set_timesteps(10)\ns.step(torch.zeros(1, 3, 8, 8), 5, torch.zeros(1, 3, 4, "
     "4))", "error"),
    ("scheduler-step-t-out-of-range", _SCHED + "s.set_timesteps(10)\nout = s.step(torch.zeros(1, 3, 8, 8), 5000, "
     "torch.zeros(1, 3, 8, 8)).prev_sample\ncheck(torch.isfinite(out).all(), 'non-finite')", "error"),
    ("scheduler-add-noise-t-out-of-range", _SCHED + "s.add_noise(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8), "
     "torch.tensor([0, 50]))", "error"),
    ("scheduler-add-noise-t-negative", _SCHED + "s.add_noise(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8), "
     "torch.tensor([0, -1]))", "error"),
    ("scheduler-add-noise-shapes", _SCHED + "s.add_noise(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 4, 4), "
     "torch.tensor([0, 1]))", "error"),
    ("scheduler-add-noise-t-batch", _SCHED + "s.add_noise(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8), "
     "torch.tensor([0, 1, 2]))", "error"),
    ("scheduler-add-noise-numpy", _SCHED + "s.add_noise(np.zeros((2, 3, 8, 8)), np.zeros((2, 3, 8, 8)), "
     "np.array([0, 1]))", "error"),
    # UNet2DModel
    ("unet-groups-not-dividing", "ddpm.UNet2DModel(sample_size=8, block_out_channels=(8, 16), layers_per_block=1, "
     "down_block_types=('DownBlock2D', 'DownBlock2D'), up_block_types=('UpBlock2D', 'UpBlock2D'), "
     "norm_num_groups=3)", "error"),
    ("unet-block-count-mismatch", "ddpm.UNet2DModel(sample_size=8, block_out_channels=(8, 16, 16), "
     "down_block_types=('DownBlock2D', 'DownBlock2D'), up_block_types=('UpBlock2D', 'UpBlock2D'), "
     "norm_num_groups=4)", "error"),
    ("unet-block-type-name", "ddpm.UNet2DModel(sample_size=8, block_out_channels=(8,), down_block_types=('Foo',), "
     "up_block_types=('UpBlock2D',), norm_num_groups=4)", "error"),
    ("unet-sample-size-0", "ddpm.UNet2DModel(sample_size=0, block_out_channels=(8,), down_block_types="
     "('DownBlock2D',), up_block_types=('UpBlock2D',), norm_num_groups=4)", "error"),
    ("unet-wrong-channels", _TINY_UNET + "unet(torch.zeros(1, 1, 8, 8), 3)", "error"),
    ("unet-odd-size", _TINY_UNET + "unet(torch.zeros(1, 3, 7, 7), 3)", "error"),
    ("unet-3d-input", _TINY_UNET + "unet(torch.zeros(3, 8, 8), 3)", "error"),
    ("unet-t-batch-mismatch", _TINY_UNET + "unet(torch.zeros(2, 3, 8, 8), torch.tensor([1, 2, 3]))", "error"),
    ("unet-t-string", _TINY_UNET + "unet(torch.zeros(1, 3, 8, 8), 'ten')", "error"),
    ("unet-from-missing", "ddpm.UNet2DModel.from_pretrained('{work}/nope')", "error"),
    ("unet-from-cut-weights", "ddpm.UNet2DModel.from_pretrained('{tiny_cut_weights}/unet')", "error"),
    # DDPMPipeline
    ("pipeline-batch-0", _PIPE + "pipe(batch_size=0, num_inference_steps=2)", "error"),
    ("pipeline-batch-negative", _PIPE + "pipe(batch_size=-1, num_inference_steps=2)", "error"),
    ("pipeline-steps-0", _PIPE + "out = pipe(batch_size=1, num_inference_steps=0, output_type='np').images\n"
     "note(f'{{len(out)}} image(s)')", "error"),
    ("pipeline-steps-too-many", _PIPE + "pipe(batch_size=1, num_inference_steps=5000)", "error"),
    ("pipeline-generators-count", _PIPE + "pipe(batch_size=3, num_inference_steps=2, generator=[torch.Generator()] "
     "* 2)", "error"),
    ("pipeline-output-type", _PIPE + "pipe(batch_size=1, num_inference_steps=2, output_type='foo')", "error"),
    ("pipeline-sampler-name", _PIPE + "pipe.set_sampler('foo')", "error"),
    ("pipeline-none-unet", "ddpm.DDPMPipeline(None, ddpm.DDPMScheduler())(batch_size=1, num_inference_steps=2)",
     "error"),
    ("pipeline-from-empty-dir", "ddpm.DDPMPipeline.from_pretrained('{empty_dir}')", "error"),
    ("pipeline-from-bad-index", "ddpm.DDPMPipeline.from_pretrained('{tiny_bad_index}')", "error"),
    ("pipeline-to-tpu", _PIPE + "pipe.to('tpu')", "error"),
    ("pipeline-valid", _PIPE + "out = pipe(batch_size=2, num_inference_steps=3, output_type='np').images\n"
     "check(len(out) == 2 and np.isfinite(np.asarray(out)).all(), 'two finite images')", "ok"),
]  # fmt: skip


def api_attempts() -> list[Attempt]:
    return [
        Attempt(f"api/{name}", "api", "-", code, expect, "a ValueError/TypeError naming the argument"
                if expect == "error" else "works", kind="api", timeout=90)
        for name, code, expect in API_PROBES
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
def all_attempts() -> list[Attempt]:
    attempts = [
        *valid_attempts(), *option_attempts(), *file_attempts(), *numeric_attempts(), *kill_attempts(),
        *interference_attempts(), *cache_attempts(), *api_attempts(),
    ]  # fmt: skip
    ids = [a.id for a in attempts]
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        raise ValueError(f"duplicate attempt ids: {sorted(duplicates)}")
    return attempts


__all__ = ["CLASSES", "all_attempts", "ddpm_argv"]
