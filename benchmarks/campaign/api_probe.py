"""Runs one API attempt: ``python -m benchmarks.campaign.api_probe CODE``.

CODE runs with ``torch``, ``np``, ``ddpm`` and ``check(condition, message)`` in scope (``check`` records a property
of the result that failed: a silent wrong result). The last line of stdout is one JSON verdict:
``{"exception": name or null, "message": ..., "where": file of the innermost frame, "clean": bool,
"failed_check": message or null, "note": ...}``. An exception is *clean* when it is a ValueError, TypeError, OSError
or NotImplementedError (a KeyError or IndexError is not a clean answer) raised by ddpm's own code or at the call
itself, not deep inside torch or numpy.
"""

from __future__ import annotations

import json
import sys
import traceback

CLEAN = (ValueError, TypeError, OSError, NotImplementedError)
#: Messages of torch's and numpy's own argument errors: raised from C code, so their innermost Python frame is the
#: caller's, but the user was not told what was wrong in our terms.
TORCH_SIGNS = ("invalid combination of arguments", "must be Tensor", "not implemented for", "could not broadcast")


def _where(err: BaseException) -> str:
    frames = traceback.extract_tb(err.__traceback__)
    return frames[-1].filename if frames else "?"


def _clean(err: BaseException, where: str) -> bool:
    if not isinstance(err, CLEAN):
        return False
    if any(sign in str(err) for sign in TORCH_SIGNS):  # a torch/numpy message passed through a ddpm frame
        return False
    return "/ddpm/" in where or where == "<probe>"


def main(code: str) -> int:
    import numpy as np
    import torch

    import ddpm

    failed: list[str] = []
    notes: list[str] = []

    def check(condition, message: str) -> None:
        if not condition:
            failed.append(message)

    def note(message: str) -> None:
        notes.append(str(message))

    scope = {"torch": torch, "np": np, "ddpm": ddpm, "check": check, "note": note}
    verdict = {"exception": None, "message": "", "where": "", "clean": False, "failed_check": None, "note": ""}
    try:
        exec(compile(code, "<probe>", "exec"), scope)
    except Exception as err:  # what the library raised is what is being classified
        where = _where(err)
        verdict.update(exception=type(err).__name__, message=" ".join(str(err).split())[:300], where=where)
        verdict["clean"] = _clean(err, where)
    if failed:
        verdict["failed_check"] = "; ".join(failed)[:300]
    verdict["note"] = "; ".join(notes)[:200]
    sys.stdout.write("\n" + json.dumps(verdict) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
