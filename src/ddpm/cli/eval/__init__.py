"""``ddpm eval``: the paper's evaluation (see docs/evaluation.md).

One module per family of sub-commands; the library work they call lives in :mod:`ddpm.evaluation`:

* :mod:`.scores`: ``fid``, ``is`` (image sets on the Inception network);
* :mod:`.generate`: ``generate`` (samples at scale, sharded under torchrun);
* :mod:`.nll`: ``nll`` (the bound in bits/dim);
* :mod:`.figures`: ``progressive``, ``shared-latent``, ``interpolate``, ``rate-distortion``.

Registration is explicit: :data:`SUBCOMMANDS` maps each name to ``"module:function"``, and ``function(subparsers,
name)`` adds that sub-command's parser. A name that does not resolve is an error when the parser is built, never a
sub-command silently missing. The options every model-driven sub-command shares, and the one error path, are in
:mod:`.common`.
"""

from __future__ import annotations

import importlib

#: ``ddpm eval`` sub-commands, in --help order: name -> "module:function" adding its parser.
SUBCOMMANDS = {
    "fid": "ddpm.cli.eval.scores:add_fid",
    "is": "ddpm.cli.eval.scores:add_is",
    "nll": "ddpm.cli.eval.nll:add_nll",
    "generate": "ddpm.cli.eval.generate:add_generate",
    "progressive": "ddpm.cli.eval.figures:add_progressive",
    "shared-latent": "ddpm.cli.eval.figures:add_shared_latent",
    "interpolate": "ddpm.cli.eval.figures:add_interpolate",
    "rate-distortion": "ddpm.cli.eval.figures:add_rate_distortion",
}


class RegistrationError(LookupError):
    """A :data:`SUBCOMMANDS` entry that names no function (a misspelled module or function name)."""


def resolve(name: str, target: str):
    """The function of ``target`` (``"module:function"``) that adds sub-command ``name``; :class:`RegistrationError`
    naming both when the module or the function does not exist."""
    module_name, sep, func_name = target.partition(":")
    if not sep or not func_name:
        raise RegistrationError(f"ddpm eval {name}: {target!r} is not 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise RegistrationError(f"ddpm eval {name}: no module {module_name!r} ({err})") from None
    adder = getattr(module, func_name, None)
    if not callable(adder):
        raise RegistrationError(f"ddpm eval {name}: {module_name} has no function {func_name!r}")
    return adder


def add_parser(subparsers) -> None:
    from ddpm.cli import HelpFormatter

    p = subparsers.add_parser(
        "eval",
        help="evaluate: FID, NLL in bits/dim, Inception Score, generation at scale, the paper's figures",
        description="The paper's evaluation (protocol and examples: docs/evaluation.md). Timesteps are ours, "
        "0..T-1 (the paper's t - 1).",
        formatter_class=HelpFormatter,
    )
    sub = p.add_subparsers(dest="eval_command", metavar="EVAL_COMMAND")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    for name, target in SUBCOMMANDS.items():
        resolve(name, target)(sub, name)
