"""Scheduler interchange as in Diffusers 0.42.1: ``X.from_config(y.config)`` between our DDPMScheduler/DDIMScheduler
and Diffusers' DDPMScheduler/DDIMScheduler/DPMSolverMultistepScheduler, both directions, in memory and through
``scheduler_config.json``, gives the config Diffusers gives: the same values, the same ``_use_default_values``
(arguments never set, which take the target's own defaults) and the same keys carried along for a swap back.
"""

from __future__ import annotations

import inspect
import json
import warnings

import pytest

from ddpm import DDIMScheduler, DDPMScheduler
from ddpm.config import ConfigMixin, register_to_config

diffusers = pytest.importorskip("diffusers")

OURS = {"DDPMScheduler": DDPMScheduler, "DDIMScheduler": DDIMScheduler}
REFS = {name: getattr(diffusers, name) for name in ("DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler")}
UDV = "_use_default_values"

# Constructor arguments per source class: none, a few shared ones, and keys only that class takes.
SOURCES = [
    ("DDPMScheduler", {}),
    ("DDPMScheduler", {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction", "clip_sample": False}),
    ("DDPMScheduler", {"variance_type": "fixed_large", "timestep_spacing": "trailing", "steps_offset": 1}),
    ("DDIMScheduler", {}),
    ("DDIMScheduler", {"set_alpha_to_one": False, "timestep_spacing": "linspace", "beta_end": 0.012}),
    (
        "DDIMScheduler",
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "steps_offset": 1, "thresholding": True},
    ),
]


def canon(config) -> dict:
    """A config as a plain dict, ``_use_default_values`` as a set (Diffusers lists it in set order)."""
    return {k: (set(v) if k == UDV else v) for k, v in dict(config).items()}


def both(name: str, kwargs: dict):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return OURS[name](**kwargs), REFS[name](**kwargs)


@pytest.mark.parametrize("source, kwargs", SOURCES)
def test_constructor_records_unset_arguments(source, kwargs):
    ours, ref = both(source, kwargs)
    assert canon(ours.config) == canon(ref.config)
    assert set(ours.config[UDV]) == set(inspect.signature(OURS[source]).parameters) - set(kwargs)


@pytest.mark.parametrize("target", list(REFS))
@pytest.mark.parametrize("source, kwargs", SOURCES)
def test_from_config_in_memory(source, kwargs, target):
    ours_src, ref_src = both(source, kwargs)
    want = canon(REFS[target].from_config(ref_src.config).config)
    # a Diffusers scheduler built from our config equals one built from Diffusers' equivalent config
    assert canon(REFS[target].from_config(ours_src.config).config) == want
    if target in OURS:  # ours built from either config is what Diffusers builds
        assert canon(OURS[target].from_config(ours_src.config).config) == want
        assert canon(OURS[target].from_config(ref_src.config).config) == want


@pytest.mark.parametrize("target", list(REFS))
@pytest.mark.parametrize("source, kwargs", SOURCES)
def test_from_config_through_files(source, kwargs, target, tmp_path):
    ours_src, ref_src = both(source, kwargs)
    ours_src.save_pretrained(tmp_path / "ours")
    ref_src.save_pretrained(tmp_path / "ref")
    ours_file = json.loads((tmp_path / "ours" / "scheduler_config.json").read_text())
    ref_file = json.loads((tmp_path / "ref" / "scheduler_config.json").read_text())
    assert ours_file == ref_file and UDV not in ours_file  # the same file, without _use_default_values
    want = canon(REFS[target].from_pretrained(tmp_path / "ref").config)
    assert canon(REFS[target].from_pretrained(tmp_path / "ours").config) == want
    if target in OURS:
        assert canon(OURS[target].from_pretrained(tmp_path / "ours").config) == want
        assert canon(OURS[target].from_config(OURS[target].load_config(tmp_path / "ref")).config) == want


def test_from_dpm_solver_config():
    """Diffusers' DPMSolverMultistepScheduler config (its own keys, its own defaults) into ours, memory and file."""
    ref_src = REFS["DPMSolverMultistepScheduler"](
        solver_order=3, beta_schedule="scaled_linear", prediction_type="sample"
    )
    for target in OURS:
        want = canon(REFS[target].from_config(ref_src.config).config)
        got = OURS[target].from_config(ref_src.config)
        assert canon(got.config) == want
        # DPM-Solver's default linspace spacing was not set, so the target keeps its own default (leading)
        assert got.config.timestep_spacing == "leading" and got.config.solver_order == 3
        back = REFS["DPMSolverMultistepScheduler"].from_config(got.config)
        assert canon(back.config) == canon(REFS["DPMSolverMultistepScheduler"].from_config(want).config)


def test_unset_keys_take_the_target_default():
    """DDIM's set_alpha_to_one and DPM-Solver's linspace spacing survive a swap from a default DDPM config; keys the
    user did set travel; a swap back recovers the DDPM-only keys that were set."""
    ddpm = DDPMScheduler(variance_type="fixed_large", beta_schedule="squaredcos_cap_v2")
    ddim = DDIMScheduler.from_config(ddpm.config)
    assert ddim.config.set_alpha_to_one is True and ddim.config.beta_schedule == "squaredcos_cap_v2"
    assert ddim.config.variance_type == "fixed_large"  # carried along, unused by DDIM
    assert "set_alpha_to_one" in ddim.config[UDV] and "beta_schedule" not in ddim.config[UDV]
    assert DDPMScheduler.from_config(ddim.config).config.variance_type == "fixed_large"
    assert REFS["DPMSolverMultistepScheduler"].from_config(ddpm.config).config.timestep_spacing == "linspace"
    leading = DDPMScheduler(timestep_spacing="leading")  # set explicitly: it travels
    assert REFS["DPMSolverMultistepScheduler"].from_config(leading.config).config.timestep_spacing == "leading"
    # overrides win over both the config and the defaults
    assert DDIMScheduler.from_config(ddpm.config, set_alpha_to_one=False).config.set_alpha_to_one is False


def test_keys_missing_from_a_file_count_as_defaults(tmp_path):
    (tmp_path / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDPMScheduler", "beta_end": 0.01}))
    ours = DDIMScheduler.from_pretrained(tmp_path)
    ref = REFS["DDIMScheduler"].from_pretrained(tmp_path)
    assert canon(ours.config) == canon(ref.config)
    assert ours.config.beta_end == 0.01 and "beta_end" not in ours.config[UDV]
    assert ours.config._class_name == "DDIMScheduler"


def test_positional_arguments_count_as_given():
    """Diffusers lists positional arguments as defaults, so its swap forgets them (T = 500 becomes 1000); ours keeps
    them (docs/differences.md)."""
    ref = REFS["DDIMScheduler"](500)
    assert "num_train_timesteps" in ref.config[UDV]
    assert REFS["DDPMScheduler"].from_config(ref.config).config.num_train_timesteps == 1000
    ours = DDIMScheduler(500)
    assert "num_train_timesteps" not in ours.config[UDV]
    assert DDPMScheduler.from_config(ours.config).config.num_train_timesteps == 500
    assert canon(DDIMScheduler(num_train_timesteps=500).config) == canon(
        REFS["DDIMScheduler"](num_train_timesteps=500).config
    )


def test_every_argument_given_records_no_defaults():
    class Toy(ConfigMixin):
        config_name = "toy.json"

        @register_to_config
        def __init__(self, a: int = 1, b: int = 2):
            pass

    assert UDV not in Toy(1, b=2).config
    assert Toy(a=3).config[UDV] == ["b"]
    assert Toy.from_config(Toy(a=3).config).config[UDV] == ["b"]
    assert UDV not in Toy(a=3).to_json_string() and UDV not in Toy(a=3).to_json_dict()


@pytest.mark.parametrize("name", list(OURS))
def test_compatibles(name):
    ours, ref = both(name, {})
    classes = ours.compatibles
    names = [c.__name__ for c in classes]
    assert name in names and "DDPMScheduler" in names and "DDIMScheduler" in names
    assert set(names) <= {c.__name__ for c in ref.compatibles}  # a subset of Diffusers' list
    assert len(names) == len(set(names))
    for cls in classes:
        swapped = cls.from_config(ours.config)
        assert type(swapped).__name__ in REFS
        assert swapped.config.num_train_timesteps == ours.config.num_train_timesteps
