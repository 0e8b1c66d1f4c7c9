"""Fréchet Inception Distance (Heusel et al. 2017) between two image sets, as TTUR / pytorch-fid compute it.

    FID = |mu_1 - mu_2|^2 + tr(S_1) + tr(S_2) - 2 tr((S_1 S_2)^(1/2))

over the Inception-v3 pool3 features (see :mod:`ddpm.evaluation.inception`) of each set. Statistics are accumulated in
float64 (sum and sum of outer products, so the result does not depend on the batch size and shards can be merged);
the covariance is the unbiased one (``np.cov``). The distance is computed in float64 with ``scipy.linalg.sqrtm``.

An image set ("source") is one of:

* a folder of images (any size; each is resized to the first image's shorter side and centre-cropped unless a
  ``resolution`` is given, then resized to 299 for the network);
* an ``.npz`` of uint8 images (e.g. from ``ddpm eval generate``), or an ``.npz`` of statistics (``mu``, ``sigma``);
* a named data set as in ``ddpm train --data``: ``fashion-mnist``, ``cifar10[:PATH]``, an idx file; a trailing
  ``@train`` / ``@test`` picks the split (default train), e.g. ``cifar10@test``;
* a pipeline folder (holding ``model_index.json``): ``num_samples`` images are generated from it first.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ddpm.io import atomic_save

STATS_FORMAT = "ddpm-fid-stats-v1"


# ---------------------------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class FeatureStatistics:
    """Mean and covariance of a set's features; ``source`` describes the set and ``source_hash`` identifies it
    (what it is: spec, split, size, network); ``content`` is a fingerprint of the set's files
    (:func:`ddpm.data.data_fingerprint`, "" when unknown), ``skipped`` the number of its image files that could not
    be read, ``file`` the statistics file it was loaded from ("" when computed)."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    source: str = ""
    source_hash: str = ""
    content: str = ""
    skipped: int = 0
    file: str = ""

    @property
    def label(self) -> str:
        """The statistics file, else the source: what an error message names."""
        return self.file or self.source or "statistics"

    def save(self, path: str | os.PathLike) -> None:
        def write(f):
            np.savez(
                f,
                mu=self.mu,
                sigma=self.sigma,
                n=np.int64(self.n),
                source=np.str_(self.source),
                source_hash=np.str_(self.source_hash),
                content=np.str_(self.content),
                skipped=np.int64(self.skipped),
                format=np.str_(STATS_FORMAT),
            )

        atomic_save(path, write)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureStatistics:
        """Read a statistics file. ``ValueError`` naming the file for an empty, truncated or damaged file, a file
        without ``mu``/``sigma``, shapes that do not fit, and non-finite values."""
        try:
            with np.load(path) as data:
                if "mu" not in data or "sigma" not in data:
                    raise StatisticsFileError(
                        f"{path}: not a statistics file (needs arrays 'mu' and 'sigma'; it holds {sorted(data.keys())})"
                    )
                mu = data["mu"].astype(np.float64)
                sigma = data["sigma"].astype(np.float64)
                n = int(data["n"]) if "n" in data else 0
                source = str(data["source"]) if "source" in data else str(path)
                source_hash = str(data["source_hash"]) if "source_hash" in data else ""
                content = str(data["content"]) if "content" in data else ""
                skipped = int(data["skipped"]) if "skipped" in data else 0
        except StatisticsFileError:
            raise
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such statistics file") from None
        except Exception as err:  # OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, TypeError
            raise StatisticsFileError(f"{path}: cannot read the statistics file ({_npz_problem(path, err)})") from None
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
            raise StatisticsFileError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not fit")
        _check_finite(mu, sigma, str(path))
        return cls(mu, sigma, n, source, source_hash, content, skipped, str(path))


class StatisticsFileError(ValueError):
    """A statistics file is damaged or holds values that cannot give a FID; the message names the file."""


def _npz_problem(path, err: Exception) -> str:
    from ddpm.data import _npz_problem as problem

    return problem(Path(path), err)


def _check_finite(mu: np.ndarray, sigma: np.ndarray, label: str) -> None:
    bad = [(name, a) for name, a in (("mu", mu), ("sigma", sigma)) if not np.isfinite(a).all()]
    if bad:
        detail = ", ".join(f"{name} has {int((~np.isfinite(a)).sum())} non-finite value(s)" for name, a in bad)
        raise StatisticsFileError(f"{label}: the statistics are not finite ({detail}); no FID can be computed")


class RunningStatistics:
    """Accumulates the float64 sum and sum of outer products of feature batches; mergeable across shards."""

    def __init__(self, dim: int | None = None):
        self.n = 0
        self.total = None if dim is None else np.zeros(dim, np.float64)
        self.outer = None if dim is None else np.zeros((dim, dim), np.float64)

    def update(self, features: np.ndarray) -> None:
        f = np.asarray(features, dtype=np.float64)
        if self.total is None and f.ndim == 2:
            self.total = np.zeros(f.shape[1], np.float64)
            self.outer = np.zeros((f.shape[1], f.shape[1]), np.float64)
        if f.ndim != 2 or f.shape[1] != self.total.shape[0]:
            raise ValueError(
                f"expected features [N, {self.total.shape[0] if self.total is not None else 'D'}], got {f.shape}"
            )
        self.n += f.shape[0]
        self.total += f.sum(axis=0)
        self.outer += f.T @ f

    def merge(self, other: RunningStatistics) -> None:
        self.n += other.n
        self.total += other.total
        self.outer += other.outer

    def finalize(self, source: str = "", source_hash: str = "") -> FeatureStatistics:
        if self.n < 2:
            raise ValueError(f"need at least 2 images for a covariance, got {self.n}")
        mu = self.total / self.n
        sigma = (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)
        sigma = (sigma + sigma.T) / 2
        _check_finite(mu, sigma, f"features of {source or 'the set'}")
        return FeatureStatistics(mu, sigma, self.n, source, source_hash)


def compute_statistics(features: np.ndarray, source: str = "", source_hash: str = "") -> FeatureStatistics:
    """Mean and unbiased covariance (float64) of ``[N, D]`` features."""
    running = RunningStatistics()
    running.update(features)
    return running.finalize(source, source_hash)


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    eps: float = 1e-6,
    method: str = "sqrtm",
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    ``method="sqrtm"`` (the default, the protocol of TTUR / pytorch-fid): ``scipy.linalg.sqrtm(sigma1 @ sigma2)``;
    when it is not finite (a near-singular product), ``eps * I`` is added to both covariances; a small imaginary part
    (numerical) is dropped, a large one (|imag| > 1e-3 on the diagonal) is an error. It is slow for 2048 features,
    slowest when the covariances are singular, i.e. fewer images than features (timings: ``docs/benchmarks.md``).

    ``method="eigh"``: the same trace from symmetric eigenvalue problems, tr((S1 S2)^(1/2)) = sum sqrt(eig(R S2 R))
    with R = S1^(1/2) (S1, S2 positive semi-definite; negative round-off eigenvalues are set to 0). Equal to the
    ``sqrtm`` result to round-off and faster; not the reference protocol, offered for quick checks.
    """
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"means have different shapes: {mu1.shape} and {mu2.shape}")
    if sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0],) * 2:
        raise ValueError(f"covariances {sigma1.shape} and {sigma2.shape} do not fit means of shape {mu1.shape}")
    if method not in ("sqrtm", "eigh"):
        raise ValueError(f"method must be 'sqrtm' or 'eigh', got {method!r}")
    _check_finite(mu1, sigma1, "the first statistics")
    _check_finite(mu2, sigma2, "the second statistics")
    diff = mu1 - mu2
    if method == "eigh":
        value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * _trace_sqrt_product(sigma1, sigma2))
        return _finite(value, method)
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        print(f"fid: sqrtm(sigma1 @ sigma2) is singular; adding {eps} to the covariances' diagonals", file=sys.stderr)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            largest = np.max(np.abs(covmean.imag))
            raise ValueError(f"sqrtm(sigma1 @ sigma2) has a large imaginary component ({largest:.3g})")
        covmean = covmean.real
    return _finite(float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)), method)


def _finite(value: float, method: str) -> float:
    if not np.isfinite(value):
        raise ValueError(
            f"the Fréchet distance is not finite ({value}) with method={method!r} although the statistics are; "
            "the covariances are too ill-conditioned (try the other --method, or more images)"
        )
    return value


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    # numpy's eigh (LAPACK's divide-and-conquer syevd) was measured faster here than scipy's default (syevr).
    w, v = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    if w.min() < -1e-6 * max(1.0, abs(w).max()):
        raise ValueError(f"sigma1 is not positive semi-definite (eigenvalue {w.min():.3g})")
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = root @ sigma2 @ root
    lam = np.linalg.eigvalsh((inner + inner.T) / 2)
    if lam.min() < -1e-6 * max(1.0, abs(lam).max()):
        raise ValueError(f"sigma2 is not positive semi-definite (eigenvalue of the product {lam.min():.3g})")
    return float(np.sqrt(np.clip(lam, 0, None)).sum())


def fid_from_statistics(a: FeatureStatistics, b: FeatureStatistics, method: str = "sqrtm", warn: bool = True) -> float:
    """The FID of two sets' statistics. With ``warn``, a ``UserWarning`` for each of :func:`statistics_warnings`
    (e.g. a set of fewer images than features). ``ValueError`` naming the files for different feature sizes and
    non-finite statistics; the result is always finite."""
    if a.mu.shape != b.mu.shape:
        raise ValueError(
            f"statistics of different feature sizes: {a.mu.shape[0]} features ({a.label}), {b.mu.shape[0]} features "
            f"({b.label}); both must come from the same network and layer (the FID Inception network's pool3 gives "
            f"{_feature_dim()})"
        )
    _check_finite(a.mu, a.sigma, a.label)
    _check_finite(b.mu, b.sigma, b.label)
    if warn:
        for message in statistics_warnings(a, b):
            warnings.warn(message, UserWarning, stacklevel=2)
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma, method=method)


def statistics_warnings(*sets: FeatureStatistics) -> list[str]:
    """Why a FID of these sets may not be what it seems: a set of fewer images than features (D = 2,048 for the
    Inception network) has a rank-deficient covariance (rank <= n - 1 < D), and its FID is biased and not comparable
    with published FIDs (which use 50,000 images); and image files that were skipped because they could not be
    read. A set of unknown size (``n`` = 0, an old statistics file) gives no warning."""
    messages = []
    for s in sets:
        dim = s.mu.shape[0]
        if 0 < s.n < dim:
            messages.append(
                f"{s.label}: {s.n} images, fewer than the {dim:,} features: its covariance is rank-deficient "
                f"(rank <= {s.n - 1}), so the FID is biased upward and not comparable with published FIDs "
                "(computed on 50,000 images; use at least 2,048 and report the number)"
            )
        if s.skipped:
            messages.append(f"{s.source or s.label}: {s.skipped} image file(s) could not be read and were skipped")
    return messages


def _feature_dim() -> int:
    from ddpm.evaluation.inception import FEATURE_DIM

    return FEATURE_DIM


# ---------------------------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Source:
    """A parsed source spec: ``kind`` is "stats", "pipeline" or "data"."""

    spec: str
    kind: str
    path_or_name: str
    split: str = "train"


def parse_source(spec: str | os.PathLike) -> Source:
    text = str(spec)
    split = "train"
    for s in ("train", "test"):
        if text.endswith("@" + s) and not Path(text).exists():
            text, split = text[: -len(s) - 1], s
    path = Path(text)
    if path.is_file() and path.suffix == ".npz":
        try:
            with np.load(path) as data:
                keys = set(data.keys())
        except Exception as err:  # OSError, ValueError, EOFError, zipfile.BadZipFile
            raise StatisticsFileError(f"{path}: cannot read the .npz ({_npz_problem(path, err)})") from None
        if {"mu", "sigma"} <= keys:
            return Source(str(spec), "stats", text, split)
    if path.is_dir() and (path / "model_index.json").is_file():
        return Source(str(spec), "pipeline", text, split)
    return Source(str(spec), "data", text, split)


def source_hash(source: Source, num_samples: int | None, resolution: int | None, extra: dict | None = None) -> str:
    """A short hash of what defines a set's statistics: the spec (paths made absolute), the split, the number of
    images, the resolution and whatever ``extra`` holds (the Inception SHA-1, generation settings)."""
    name = source.path_or_name
    if Path(name).exists():
        name = str(Path(name).resolve())
    key = {"source": name, "kind": source.kind, "split": source.split, "num_samples": num_samples}
    key["resolution"] = resolution
    key.update(extra or {})
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _folder_resolution(folder: Path) -> int:
    from PIL import Image

    from ddpm.data import DataError, find_images

    files = find_images(folder)
    if not files:
        raise DataError(f"{folder}: no image files found")
    with Image.open(files[0]) as img:
        return min(img.size)


def iterate_source_images(
    source: Source,
    num_samples: int | None = None,
    resolution: int | None = None,
    chunk: int = 500,
    subset_seed: int | None = None,
    report: dict | None = None,
):
    """Yield uint8 NCHW tensors of a data source, ``chunk`` at a time: the first ``num_samples`` images, or with
    ``subset_seed`` a uniformly random subset of ``num_samples`` (drawn with that seed, kept in the set's order;
    useful for sets stored sorted by class, such as the CIFAR-10 folders).

    Image files that cannot be read are left out (not replaced): those the folder's quick check rejects and those
    that fail to decode (a truncated JPEG). ``report``, when given, receives ``skipped`` (their number) and
    ``skipped_files`` (their paths) once the iteration ends."""
    from ddpm.data import ArrayImageDataset, open_dataset

    path = Path(source.path_or_name)
    if resolution is None and path.is_dir() and not any(path.glob("*images-idx3-ubyte*")):
        resolution = _folder_resolution(path)
    dataset = open_dataset(source.path_or_name, resolution=resolution, split=source.split)
    n = len(dataset) if num_samples is None else min(num_samples, len(dataset))
    if num_samples is not None and n < num_samples:
        print(f"fid: {source.spec} holds only {n} images (asked for {num_samples})", file=sys.stderr)
    if subset_seed is not None and n < len(dataset):
        indices = np.sort(np.random.default_rng(subset_seed).choice(len(dataset), n, replace=False)).tolist()
    else:
        indices = list(range(n))
    if isinstance(dataset, ArrayImageDataset):
        if report is not None:
            report.update(skipped=0, skipped_files=[])
        for start in range(0, n, chunk):
            yield dataset.images[indices[start : start + chunk]]
        return
    failed = []
    loader = torch.utils.data.DataLoader(_Decoded(dataset, indices), batch_size=chunk, collate_fn=_stack_decoded)
    for images, bad in loader:
        failed += [str(dataset.files[i]) for i in bad]
        if images is not None:
            yield images
    skipped = [str(p) for p in getattr(dataset, "unreadable", [])] + failed
    if skipped:
        print(f"fid: {source.spec}: skipped {len(skipped)} image file(s) that could not be read", file=sys.stderr)
    if report is not None:
        report.update(skipped=len(skipped), skipped_files=skipped)


class _Decoded(torch.utils.data.Dataset):
    """The images at ``indices`` of an image folder, as (index, tensor or None when the file cannot be decoded)."""

    def __init__(self, dataset, indices: list[int]):
        self.dataset = dataset
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        index = self.indices[i]
        decode = getattr(self.dataset, "decode", None)
        return index, (decode(index) if decode is not None else self.dataset[index])


def _stack_decoded(items) -> tuple[torch.Tensor | None, list[int]]:
    kept = [x for _, x in items if x is not None]
    return (torch.stack(kept) if kept else None), [i for i, x in items if x is None]


def source_statistics(
    spec: str | os.PathLike,
    extractor=None,
    num_samples: int | None = None,
    batch_size: int = 50,
    resolution: int | None = None,
    generation: dict | None = None,
    progress: bool = False,
    subset_seed: int | None = None,
) -> FeatureStatistics:
    """Statistics of a source (see the module docstring). ``extractor``: an
    :class:`~ddpm.evaluation.inception.InceptionFeatureExtractor` (made on demand). ``generation``: keyword arguments
    of :func:`ddpm.evaluation.generate.generate_images` for a pipeline source (seed, batch_size,
    num_inference_steps, device)."""
    from ddpm.evaluation.inception import InceptionFeatureExtractor

    source = parse_source(spec)
    if source.kind == "stats":
        return FeatureStatistics.load(source.path_or_name)
    if extractor is None:
        extractor = InceptionFeatureExtractor()
    extra = {"inception": extractor.sha1}
    content, report = "", {}
    if source.kind == "pipeline":
        if not num_samples:
            raise ValueError(f"{spec}: a pipeline source needs --num-samples (how many images to generate)")
        from ddpm.evaluation.generate import generate_images, load_pipeline

        generation = dict(generation or {})
        extra["generation"] = {k: v for k, v in generation.items() if k != "device"}
        pipeline = load_pipeline(
            source.path_or_name,
            device=generation.pop("device", "cpu"),
            sampler=generation.pop("sampler", None),
            eta=generation.pop("eta", None),
        )
        images = generate_images(pipeline, num_samples, progress=progress, **generation)
        chunks = (torch.from_numpy(images[i : i + 500]) for i in range(0, len(images), 500))
    else:
        from ddpm.data import data_fingerprint

        content = data_fingerprint(source.path_or_name, source.split)
        chunks = iterate_source_images(source, num_samples, resolution, subset_seed=subset_seed, report=report)
        if subset_seed is not None:
            extra["subset_seed"] = subset_seed
    running = RunningStatistics()
    start = time.perf_counter()
    for images in chunks:
        running.update(extractor(images, batch_size=batch_size))
        if progress:
            rate = running.n / max(time.perf_counter() - start, 1e-9)
            print(f"fid: {source.spec}: {running.n} images ({rate:.1f} img/s)", file=sys.stderr)
    stats = running.finalize(source.spec, source_hash(source, num_samples, resolution, extra))
    stats.content, stats.skipped = content, report.get("skipped", 0)
    return stats


def reference_statistics(
    spec: str | None,
    cache: str | os.PathLike | None,
    extractor=None,
    num_samples: int | None = None,
    **kwargs,
) -> FeatureStatistics:
    """Statistics of the reference set, loaded from ``cache`` when it holds those of the same source (same hash)
    and the set's files are still those they were computed from (same :func:`ddpm.data.data_fingerprint`), computed
    and saved there when the file does not exist or the files changed since, and computed without saving when the
    file holds the statistics of another set or size (it is never replaced). With ``spec`` None the cache must
    exist."""
    cache = Path(cache) if cache is not None else None
    if spec is None:
        if cache is None or not cache.is_file():
            raise FileNotFoundError(f"no reference set given and no statistics file at {cache}")
        return FeatureStatistics.load(cache)
    source = parse_source(spec)
    if source.kind == "stats":
        return FeatureStatistics.load(source.path_or_name)
    if cache is not None and cache.is_file() and source.kind != "pipeline":
        from ddpm.data import data_fingerprint
        from ddpm.evaluation.inception import InceptionFeatureExtractor

        extractor = extractor or InceptionFeatureExtractor()
        stats = FeatureStatistics.load(cache)
        extra = {"inception": extractor.sha1}
        if kwargs.get("subset_seed") is not None:
            extra["subset_seed"] = kwargs["subset_seed"]
        expected = source_hash(source, num_samples, kwargs.get("resolution"), extra)
        if stats.source_hash == expected:
            content = data_fingerprint(source.path_or_name, source.split)
            if not stats.content or not content or stats.content == content:
                if not stats.content:
                    print(
                        f"fid: {cache} does not record the content of {spec} (an older file), so whether its "
                        "files changed since cannot be checked; using it. Delete it to recompute.",
                        file=sys.stderr,
                    )
                return stats
            print(
                f"fid: {cache} holds statistics of {spec} computed before its files changed; recomputing them and "
                "replacing the file.",
                file=sys.stderr,
            )
        else:
            # Never replace it: it may be the statistics of a whole reference set (costly: docs/benchmarks.md),
            # and a mismatch is often a flag meant for the other set (e.g. --num-samples, which applies to both).
            print(
                f"fid: {cache} holds statistics of another set ({stats.source}, {stats.n} images); computing those "
                f"of {spec} ({num_samples or 'all'} images) without saving them, and leaving the file as it is. "
                "Give another --ref-stats path to cache them, or delete the file to replace it.",
                file=sys.stderr,
            )
            return source_statistics(spec, extractor, num_samples=num_samples, **kwargs)
    stats = source_statistics(spec, extractor, num_samples=num_samples, **kwargs)
    if cache is not None:
        stats.save(cache)
    return stats


def fid(
    a: str | os.PathLike,
    b: str | os.PathLike | None,
    num_samples: int | None = None,
    batch_size: int = 50,
    inception: str | os.PathLike | None = None,
    device: str = "cpu",
    ref_stats: str | os.PathLike | None = None,
    resolution: int | None = None,
    generation: dict | None = None,
    progress: bool = False,
    method: str = "sqrtm",
    subset_seed: int | None = None,
    warn: bool = True,
) -> dict:
    """FID between source ``a`` (e.g. samples) and reference ``b`` (``ref_stats``: its cached statistics).

    Returns a dict with ``fid`` (always finite: a non-finite value is a ``ValueError``), the image counts
    ``n_a``/``n_b``, the sources, ``skipped_a``/``skipped_b`` (image files that could not be read and were left out)
    and ``warnings`` (:func:`statistics_warnings`: e.g. fewer than 2,048 images in a set). With ``warn`` each warning
    is also issued as a ``UserWarning``. Statistics files must hold the Inception network's 2,048 features, except
    when both sets are statistics files of one other feature size (another network or layer): their Fréchet
    distance is returned with a warning that it is not comparable with published FIDs."""
    from ddpm.evaluation.inception import FEATURE_DIM, InceptionFeatureExtractor

    needs_network = parse_source(a).kind != "stats" or (b is not None and parse_source(b).kind != "stats")
    # Statistics files are checked before any long computation.
    files = [x for x in (a, b) if x is not None and parse_source(x).kind == "stats"]
    files += [ref_stats] if b is None and ref_stats is not None and Path(ref_stats).is_file() else []
    loaded = [FeatureStatistics.load(parse_source(path).path_or_name) for path in files]
    # Two statistics files of one other feature size (another network or layer) give a well-defined Fréchet
    # distance, with a warning; a size other than the network's, next to the network's features, is an error.
    other_network = not needs_network and len(loaded) == 2 and loaded[0].mu.shape == loaded[1].mu.shape
    dim = loaded[0].mu.shape[0] if other_network else FEATURE_DIM
    for stats in loaded:
        _check_dimension(stats, dim)
    extractor = InceptionFeatureExtractor(inception, device=device) if needs_network else None
    common = {"batch_size": batch_size, "resolution": resolution, "progress": progress, "subset_seed": subset_seed}
    stats_a = source_statistics(a, extractor, num_samples=num_samples, generation=generation, **common)
    stats_b = reference_statistics(b, ref_stats, extractor, num_samples=num_samples, **common)
    # the sets must agree with each other (fid_from_statistics); the network's own features are its features
    dim = stats_a.mu.shape[0] if needs_network else dim
    _check_dimension(stats_b, dim)
    messages = statistics_warnings(stats_a, stats_b)
    if dim != FEATURE_DIM:
        messages.insert(
            0,
            f"statistics of {dim} features, not the {FEATURE_DIM} Inception pool3 features: this is the Fréchet "
            "distance of another network or layer, not an FID comparable with published FIDs",
        )
    for message in messages if warn else ():
        warnings.warn(message, UserWarning, stacklevel=2)
    return {
        "fid": fid_from_statistics(stats_a, stats_b, method=method, warn=False),
        "method": method,
        "n_a": stats_a.n,
        "n_b": stats_b.n,
        "a": stats_a.source,
        "b": stats_b.source,
        "skipped_a": stats_a.skipped,
        "skipped_b": stats_b.skipped,
        "warnings": messages,
    }


def _check_dimension(stats: FeatureStatistics, dim: int) -> None:
    if stats.mu.shape[0] != dim:
        raise StatisticsFileError(
            f"{stats.label}: statistics of {stats.mu.shape[0]} features; the FID uses the {dim} pool3 features of "
            "the Inception network (statistics of another network or layer cannot be compared)"
        )
