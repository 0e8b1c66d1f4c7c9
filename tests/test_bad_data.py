"""Bad data and stale caches: image files that fail to decode late (training skips them and resumes exactly, FID
leaves them out and counts them), archives and reference statistics keyed on content, damaged or meaningless
statistics files, the small-set warning, and no search of folders the user did not name."""

import io
import json
import os
import struct
import tarfile
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.cli import main
from ddpm.data import DataError, ImageFolderDataset, data_fingerprint, open_dataset, read_npz_images
from ddpm.evaluation.fid import (
    FeatureStatistics,
    StatisticsFileError,
    compute_statistics,
    fid_from_statistics,
    parse_source,
    reference_statistics,
    source_statistics,
    statistics_warnings,
)
from ddpm.training import checkpoint as ckpt
from ddpm.training.config import resolve_config
from ddpm.training.trainer import Trainer

TINY_UNET = {
    "block_out_channels": [8, 16],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "attention_head_dim": None,
}


# ---------------------------------------------------------------------------------------------------------------
# Bad image files that pass the quick check
# ---------------------------------------------------------------------------------------------------------------
def truncated_jpeg(path: Path, seed: int = 0) -> Path:
    """A JPEG cut at two thirds: its headers are whole (PIL's verify passes), its scan data is not."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    data = buf.getvalue()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def corrupt_png(path: Path) -> Path:
    """A PNG whose chunks all have correct CRCs (verify passes) but whose IDAT is not a valid zlib stream."""

    def chunk(tag: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0))
    data = chunk(b"IDAT", b"\x78\x9c" + bytes(range(200)))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + header + data + chunk(b"IEND", b""))
    return path


def image_folder(path: Path, n: int = 12, seed: int = 0, size: int = 10) -> Path:
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path / f"{i:03d}.png")
    return path


def bad_folder(path: Path, n: int = 12) -> Path:
    """``n`` good PNGs, a truncated JPEG (file 005a), a PNG with a broken stream (010a) and a garbage PNG."""
    image_folder(path, n)
    truncated_jpeg(path / "005a.jpg")
    corrupt_png(path / "010a.png")
    (path / "zz.png").write_bytes(b"\x89PNG garbage")  # rejected by the quick check when the folder is opened
    return path


def test_the_bad_files_pass_the_quick_check_and_fail_to_decode(tmp_path):
    for path in (truncated_jpeg(tmp_path / "a.jpg"), corrupt_png(tmp_path / "b.png")):
        with Image.open(path) as img:
            img.verify()
        with pytest.raises(OSError), Image.open(path) as img:
            img.convert("RGB")


def test_a_file_that_fails_to_decode_is_replaced_by_the_next_decodable_one(tmp_path):
    folder = bad_folder(tmp_path / "data")
    with pytest.warns(UserWarning, match="skipped 1 unreadable image file"):
        ds = open_dataset(folder, resolution=8, channels=3)
    assert isinstance(ds, ImageFolderDataset) and len(ds) == 14 and [p.name for p in ds.unreadable] == ["zz.png"]
    names = [p.name for p in ds.files]
    jpg, png = names.index("005a.jpg"), names.index("010a.png")
    with pytest.warns(UserWarning, match="005a.jpg: cannot decode it"):
        assert torch.equal(ds[jpg], ds[jpg + 1])
    with pytest.warns(UserWarning, match="010a.png: cannot decode it .*2 file"):
        assert torch.equal(ds[png], ds[png + 1])
    assert [p.name for p in ds.skipped] == ["005a.jpg", "010a.png"] and ds.decode(jpg) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # each bad file is reported once per process
        assert torch.equal(ds[jpg], ds[jpg + 1]) and torch.equal(ds[-len(ds) + jpg], ds[jpg + 1])
    # The last file wraps around to the first; a fresh data set makes the same choices (no hidden state).
    (folder / "zzz.jpg").write_bytes(truncated_jpeg(tmp_path / "t.jpg").read_bytes())
    with pytest.warns(UserWarning):
        again = open_dataset(folder, resolution=8, channels=3)
        assert torch.equal(again[len(again) - 1], again[0]) and torch.equal(again[jpg], ds[jpg])
    with pytest.raises(IndexError):
        again[len(again)]


def test_training_runs_through_bad_files_and_resumes_bit_exactly(tmp_path):
    folder = bad_folder(tmp_path / "data")

    def cfg(out, steps, workers=0):
        return resolve_config(
            data=str(folder), resolution=8, channels=3, model=TINY_UNET, batch_size=4, max_steps=steps,
            checkpoint_every=2, sample_every=0, warmup_steps=2, log_every=2, num_workers=workers, dropout=0.1,
            output_dir=str(out), lr=1e-3, hflip=True,
        )  # fmt: skip

    # 14 images, batch 4: every file (both bad ones included) is drawn in the 4 steps. The resumed part runs with
    # two loader workers: each makes the substitutions on its own, and the same ones.
    with pytest.warns(UserWarning, match="cannot decode it"):
        Trainer(cfg(tmp_path / "ref", 4), progress=False).run()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Trainer(cfg(tmp_path / "run", 2), progress=False).run()
        result = Trainer(cfg(tmp_path / "run", 4, workers=2), resume=True, progress=False).run()
    assert result.step == 4 and result.resumed_from.name == "checkpoint-000000002.pt"
    a, _ = ckpt.load_latest_checkpoint(tmp_path / "ref" / "checkpoints")
    b, _ = ckpt.load_latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert a["step"] == b["step"] == 4
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["ema"]["params"]:
        assert torch.equal(a["ema"]["params"][key], b["ema"]["params"][key]), key


class FakeExtractor:
    """Stands in for the Inception network: deterministic features of the image bytes."""

    sha1 = "fake"

    def __call__(self, images, batch_size=50):
        x = torch.as_tensor(images).reshape(len(images), -1).double()
        return torch.cat([x[:, :4], x[:, :4] ** 2], 1).numpy()


def test_fid_statistics_leave_bad_files_out_and_count_them(tmp_path, capsys):
    folder = bad_folder(tmp_path / "data")
    with pytest.warns(UserWarning):
        stats = source_statistics(folder, FakeExtractor(), resolution=8)
    assert stats.n == 12 and stats.skipped == 3
    assert "skipped 3 image file(s) that could not be read" in capsys.readouterr().err
    clean = source_statistics(image_folder(tmp_path / "clean"), FakeExtractor(), resolution=8)
    np.testing.assert_allclose(stats.mu, clean.mu)  # the bad files are left out, not replaced
    assert clean.skipped == 0
    stats.save(tmp_path / "s.npz")
    assert FeatureStatistics.load(tmp_path / "s.npz").skipped == 3
    assert any("3 image file(s) could not be read" in m for m in statistics_warnings(stats, clean))


class FakeInception:
    """Stands in for :class:`~ddpm.evaluation.inception.InceptionFeatureExtractor` in ``fid()``: 2,048 features."""

    sha1 = "fake"

    def __init__(self, path=None, device="cpu"):
        self.weights = np.random.default_rng(0).standard_normal((8 * 8 * 3, 2048)) / 100

    def __call__(self, images, batch_size=50):
        return torch.as_tensor(images).reshape(len(images), -1).double().numpy() @ self.weights


def test_fid_command_reports_skips_and_the_small_set_warning(tmp_path, capsys, monkeypatch):
    from ddpm.evaluation import inception

    monkeypatch.setattr(inception, "InceptionFeatureExtractor", FakeInception)
    a, b = bad_folder(tmp_path / "a", n=3), image_folder(tmp_path / "b", n=3, seed=1)
    out = tmp_path / "fid.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["eval", "fid", str(a), str(b), "--method", "eigh", "--resolution", "8", "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["n_a"] == result["n_b"] == 3 and result["skipped_a"] == 3 and result["skipped_b"] == 0
    assert np.isfinite(result["fid"]) and result["fid"] > 0
    assert sum("rank-deficient" in m and "not comparable with published FIDs" in m for m in result["warnings"]) == 2
    assert any("3 image file(s) could not be read" in m for m in result["warnings"])
    err = capsys.readouterr().err
    assert "ddpm eval fid: warning:" in err and "3 images, fewer than the 2,048 features" in err


# ---------------------------------------------------------------------------------------------------------------
# The small-set warning on statistics
# ---------------------------------------------------------------------------------------------------------------
def test_fewer_images_than_features_warns():
    rng = np.random.default_rng(0)
    small, large = compute_statistics(rng.random((5, 8)), "small"), compute_statistics(rng.random((40, 8)), "large")
    with pytest.warns(UserWarning, match=r"small: 5 images, fewer than the 8 features.*rank <= 4"):
        fid_from_statistics(small, large)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isfinite(fid_from_statistics(large, large))
        fid_from_statistics(small, large, warn=False)
    assert statistics_warnings(large) == [] and len(statistics_warnings(small, small)) == 2


# ---------------------------------------------------------------------------------------------------------------
# Caches keyed on content
# ---------------------------------------------------------------------------------------------------------------
def cifar_archive(path: Path, n_train: int, seed: int) -> Path:
    src = path.parent / f"src-{seed}"
    for split, n in (("train", n_train), ("test", 2)):
        image_folder(src / "cifar10" / split / "cat", n, seed=seed, size=32)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src / "cifar10", arcname="cifar10")
    return path


def test_archives_of_the_same_name_do_not_share_an_extraction(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DDPM_CIFAR10", raising=False)
    big = cifar_archive(tmp_path / "one" / "cifar10-jpeg.tar.gz", 5, seed=0)
    small = cifar_archive(tmp_path / "two" / "cifar10-jpeg.tar.gz", 3, seed=1)
    assert len(open_dataset(f"cifar10:{big}")) == 5
    assert len(open_dataset(f"cifar10:{small}")) == 3
    assert len(open_dataset(f"cifar10:{big}")) == 5  # both extractions are kept
    folders = sorted(p.name for p in (tmp_path / "cache" / "data").iterdir())
    assert len(folders) == 2 and all(f.startswith("cifar10-jpeg-") for f in folders)
    # An archive replaced in place by another: a new extraction.
    cifar_archive(tmp_path / "three" / "x.tar.gz", 4, seed=2).replace(big)
    assert len(open_dataset(f"cifar10:{big}")) == 4
    # An extraction without its completion record (interrupted) is not trusted: extracted again.
    target = next(p for p in (tmp_path / "cache" / "data").iterdir() if len(list(p.rglob("train/cat/*.png"))) == 3)
    (target / ".complete").unlink()
    for f in list(target.rglob("*.png"))[:2]:
        f.unlink()
    assert len(open_dataset(f"cifar10:{small}")) == 3


def test_reference_statistics_are_recomputed_when_the_files_change(tmp_path, capsys):
    folder = image_folder(tmp_path / "ref", n=4, seed=0)
    cache = tmp_path / "ref.npz"
    first = reference_statistics(str(folder), cache, FakeExtractor())
    assert FeatureStatistics.load(cache).content == data_fingerprint(folder) != ""
    assert np.array_equal(reference_statistics(str(folder), cache, FakeExtractor()).mu, first.mu)
    assert "recomputing" not in capsys.readouterr().err
    # The folder now holds other images (same names, same count): the cache is stale.
    for f in folder.iterdir():
        f.unlink()
    image_folder(folder, n=4, seed=5)
    fresh = reference_statistics(str(folder), cache, FakeExtractor())
    assert "computed before its files changed; recomputing them and replacing the file" in capsys.readouterr().err
    expected = source_statistics(folder, FakeExtractor())
    np.testing.assert_allclose(fresh.mu, expected.mu)
    assert not np.allclose(fresh.mu, first.mu)
    np.testing.assert_allclose(FeatureStatistics.load(cache).mu, expected.mu)
    reference_statistics(str(folder), cache, FakeExtractor())
    assert "recomputing" not in capsys.readouterr().err
    # An .npz of images replaced by another.
    npz = tmp_path / "set.npz"
    np.savez(npz, images=np.random.default_rng(0).integers(0, 256, (6, 4, 4, 3), dtype=np.uint8))
    cache2 = tmp_path / "ref2.npz"
    old = reference_statistics(str(npz), cache2, FakeExtractor())
    np.savez(npz, images=np.random.default_rng(1).integers(0, 256, (6, 4, 4, 3), dtype=np.uint8))
    new = reference_statistics(str(npz), cache2, FakeExtractor())
    assert not np.allclose(old.mu, new.mu) and "files changed" in capsys.readouterr().err


def test_fingerprints(tmp_path):
    folder = image_folder(tmp_path / "f", n=2)
    fp = data_fingerprint(folder)
    assert len(fp) == 16 and data_fingerprint(folder) == fp
    (folder / "000.png").write_bytes((folder / "001.png").read_bytes())
    assert data_fingerprint(folder) != fp
    assert data_fingerprint(tmp_path / "missing") == "" and data_fingerprint("cifar10") in ("", data_fingerprint("x"))


# ---------------------------------------------------------------------------------------------------------------
# Bad statistics and image files
# ---------------------------------------------------------------------------------------------------------------
def stats_file(path: Path, dim: int = 2048, n: int = 5000, value: float = 0.0) -> Path:
    mu = np.full(dim, value)
    FeatureStatistics(mu, np.eye(dim), n, source="test").save(path)
    return path


def test_damaged_statistics_files_name_the_file_and_the_problem(tmp_path, capsys):
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    whole = stats_file(tmp_path / "whole.npz", dim=16)
    torn = tmp_path / "torn.npz"
    torn.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(StatisticsFileError, match=r"empty.npz: .*empty \(0 bytes\)"):
        FeatureStatistics.load(empty)
    with pytest.raises(StatisticsFileError, match=r"torn.npz: .*truncated"):
        FeatureStatistics.load(torn)
    for bad in (empty, torn):
        with pytest.raises(StatisticsFileError, match=bad.name):
            parse_source(bad)
        assert main(["eval", "fid", str(bad), "--ref-stats", str(whole)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("ddpm eval fid: error:") and bad.name in err
        with pytest.raises(DataError, match=bad.name):
            read_npz_images(bad)
    np.savez(tmp_path / "other.npz", mu=np.zeros(3), sigma=np.eye(4))
    with pytest.raises(StatisticsFileError, match=r"other.npz: mu \(3,\) and sigma \(4, 4\) do not fit"):
        FeatureStatistics.load(tmp_path / "other.npz")


def test_non_finite_statistics_never_give_a_fid(tmp_path, capsys):
    good = stats_file(tmp_path / "good.npz", dim=2048)
    nan = tmp_path / "nan.npz"
    mu = np.zeros(2048)
    mu[7] = np.nan
    np.savez(nan, mu=mu, sigma=np.eye(2048), n=np.int64(5000))
    with pytest.raises(StatisticsFileError, match=r"nan.npz: the statistics are not finite \(mu has 1 non-finite"):
        FeatureStatistics.load(nan)
    out = tmp_path / "r.json"
    assert main(["eval", "fid", str(nan), str(good), "--json", str(out)]) == 1
    captured = capsys.readouterr()
    assert "FID" not in captured.out and "nan.npz" in captured.err and "not finite" in captured.err
    assert not out.exists()
    small = FeatureStatistics(np.zeros(4), np.diag([1.0, np.inf, 1.0, 1.0]), 10, "inf set")
    with pytest.raises(ValueError, match="inf set: the statistics are not finite"):
        fid_from_statistics(small, small)
    from ddpm.evaluation.fid import frechet_distance

    with pytest.raises(ValueError, match="not finite"):
        frechet_distance(np.zeros(2), np.eye(2), np.array([0.0, np.inf]), np.eye(2))


def test_statistics_of_another_feature_size_are_an_error(tmp_path, capsys):
    small, good = stats_file(tmp_path / "pool64.npz", dim=64), stats_file(tmp_path / "good.npz")
    assert main(["eval", "fid", str(small), str(good)]) == 1
    err = capsys.readouterr().err
    assert "pool64.npz: statistics of 64 features; the FID uses the 2048 pool3 features" in err
    assert main(["eval", "fid", str(good), "--ref-stats", str(small)]) == 1
    assert "pool64.npz: statistics of 64 features" in capsys.readouterr().err
    a = FeatureStatistics.load(small)
    with pytest.raises(ValueError, match=r"64 features \(.*pool64.npz\), 2048 features \(.*good.npz\)"):
        fid_from_statistics(a, FeatureStatistics.load(good))


def test_images_of_only_zeros_and_ones_warn(tmp_path):
    mask = tmp_path / "mask.npz"
    np.savez(mask, images=np.random.default_rng(0).integers(0, 2, (4, 8, 8), dtype=np.uint8))
    with pytest.warns(UserWarning, match=r"mask.npz: the uint8 images hold only the values 0 and 1.*multiply"):
        assert len(open_dataset(mask)) == 4
    fine = tmp_path / "fine.npz"
    np.savez(fine, images=np.random.default_rng(0).integers(0, 256, (4, 8, 8), dtype=np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        open_dataset(fine)


# ---------------------------------------------------------------------------------------------------------------
# No search outside the user's paths
# ---------------------------------------------------------------------------------------------------------------
def test_no_folder_outside_the_given_paths_is_searched(tmp_path, monkeypatch):
    monkeypatch.delenv("DDPM_CIFAR10", raising=False)
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    work = tmp_path / "proj" / "work"
    work.mkdir(parents=True)
    for base in (tmp_path / "proj" / "shared" / "data", work / "shared" / "data"):
        cifar_archive(base / "cifar10-jpeg.tar.gz", 2, seed=0)
    monkeypatch.chdir(work)
    with pytest.raises(DataError) as info:
        open_dataset("cifar10")
    message = str(info.value)
    assert "shared" not in message and "cifar10:PATH" in message and "DDPM_CIFAR10" in message
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        open_dataset(tmp_path / "nothing-here")
    import ddpm

    src = Path(ddpm.__file__).parent
    for path in src.rglob("*.py"):
        text = path.read_text()
        assert "../shared" not in text and "shared/data" not in text, path
        assert not any(f"/{root}/" in text for root in ("work", "home")), path  # no machine's folders
    assert os.getcwd() == str(work)


def test_non_finite_logits_give_no_inception_score():
    from ddpm.evaluation.inception_score import inception_score

    logits = np.zeros((10, 5))
    logits[3, 1] = np.nan
    with pytest.raises(ValueError, match="logits of 1 of 10 images are not finite"):
        inception_score(logits, splits=2)
