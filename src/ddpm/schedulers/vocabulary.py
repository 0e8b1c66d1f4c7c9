"""The vocabularies of the scheduler family, owned here and imported everywhere else (no torch import).

Each tuple lists the values a config key or a command-line option accepts; the schedulers check them
(:func:`ddpm.schedulers.common.check_choice`), and the training config and the CLI use them as their choices.
"""

from __future__ import annotations

#: σ_t² of the DDPM reverse step (see :class:`ddpm.DDPMScheduler`).
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")
#: The variance types whose UNet predicts a variance as well: twice the image channels (prediction, then variance).
LEARNED_VARIANCE_TYPES = ("learned", "learned_range")
#: What the network predicts: the paper's ε, the clean image x_0, or v (Salimans & Ho 2022).
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
#: How ``set_timesteps(n)`` picks n of the T training timesteps (arXiv:2305.08891, Table 2).
TIMESTEP_SPACINGS = ("leading", "linspace", "trailing")

#: Keys that Diffusers' schedulers (and this library's AnalyticDPMScheduler) write into ``scheduler_config.json``.
#: A scheduler loaded from another scheduler's file (the usual ``X.from_config(other.config)`` swap) drops the ones it
#: does not take without a warning, as Diffusers does; other keys get the "not expected and will be ignored" warning.
DIFFUSERS_SCHEDULER_KEYS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "variance_type",
    "clip_sample",
    "clip_sample_range",
    "prediction_type",
    "thresholding",
    "dynamic_thresholding_ratio",
    "sample_max_value",
    "timestep_spacing",
    "steps_offset",
    "rescale_betas_zero_snr",
    "predict_epsilon",
    "set_alpha_to_one",
    "skip_prk_steps",
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "use_flow_sigmas",
    "flow_shift",
    "interpolation_type",
    "sigma_min",
    "sigma_max",
    "final_sigmas_type",
    "timestep_type",
    "solver_order",
    "algorithm_type",
    "solver_type",
    "lower_order_final",
    "euler_at_final",
    "lambda_min_clipped",
    "use_lu_lambdas",
    # ddpm's own: AnalyticDPMScheduler's keys
    "mean_type",
    "clip_variance_steps",
    "clip_variance_pixels",
    "skip_steps",
    "eta",
    "use_dynamic_shifting",
    "time_shift_type",
)

#: The samplers of ``ddpm sample --sampler`` and of ``DDPMPipeline.set_sampler``; the scheduler each one runs is
#: chosen in :func:`ddpm.schedulers.samplers.make_scheduler`. ``analytic-*`` need the model's Analytic-DPM table.
SAMPLERS = ("ddpm", "ddim", "dpm-solver++", "analytic-ddpm", "analytic-ddim")
