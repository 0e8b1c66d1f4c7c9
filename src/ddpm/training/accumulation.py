"""Gradient accumulation that is exact: K micro-batches give the update of one batch K times larger.

The loss of a batch of ``M = K * m`` images is the mean of the per-sample losses,

    L = (1/M) sum_i l_i = (1/K) sum_k L_k,    L_k = (1/m) sum_{i in slice k} l_i,

so backpropagating ``L_k / K`` for each of the K equal consecutive slices sums to the gradient of ``L``. The images,
timesteps, noise and flips of the whole batch are drawn first (the trainer draws them for the global batch of the
update, as a run with batch ``K * batch_size`` would), then split; the only difference from the big batch is the
order of the floating-point sums (and dropout masks, which are drawn per forward pass).

Under DDP the gradient all-reduce runs once, on the last micro-batch: the others run inside ``model.no_sync()``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch


def accumulate_gradients(
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]],
    model: torch.nn.Module,
    x0: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    micro_batches: int,
    scale: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Backpropagate the mean loss of ``(x0, noise, t)`` in ``micro_batches`` equal slices; the gradients are left
    in ``.grad`` for the optimiser. ``loss_fn(x0, noise, t)`` returns per-sample terms with a ``loss`` entry;
    ``scale`` (a gradient scaler's ``scale``) is applied to each slice's loss before its backward.

    Returns the per-sample terms of the whole batch (detached) and the batch's mean loss (detached).
    """
    n = x0.shape[0]
    if micro_batches < 1 or n % micro_batches:
        raise ValueError(f"micro_batches={micro_batches}: must be >= 1 and divide the batch of {n} images")
    size = n // micro_batches
    no_sync = getattr(model, "no_sync", None)
    pieces: dict[str, list[torch.Tensor]] = {}
    total = None
    for k in range(micro_batches):
        rows = slice(k * size, (k + 1) * size)
        last = k == micro_batches - 1
        sync = contextlib.nullcontext() if last or no_sync is None else no_sync()
        with sync:
            terms = loss_fn(x0[rows], noise[rows], t[rows])
            loss = terms["loss"].mean() / micro_batches
            (scale(loss) if scale is not None else loss).backward()
        for key, value in terms.items():
            pieces.setdefault(key, []).append(value.detach())
        total = loss.detach() if total is None else total + loss.detach()
    return {key: torch.cat(values) for key, values in pieces.items()}, total
