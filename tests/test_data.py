import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.data import DataError, load_uint8_images, open_dataset, read_idx_images, to_model_range

FASHION = Path("/usr/share/datasets/fashion-mnist")


def _write_idx(path, images):
    n, h, w = images.shape
    data = struct.pack(">IIII", 0x803, n, h, w) + images.tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(data)


def test_image_folder_resize_crop_channels_and_corrupt_files(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "a" / "b").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(tmp_path / "a" / "x.png")
    Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(tmp_path / "a" / "b" / "y.jpg")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("ignored")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        ds = open_dataset(tmp_path, resolution=16, channels=3)
    assert len(ds) == 2
    assert ds[0].shape == (3, 16, 16) and ds[0].dtype == torch.uint8
    ds1 = open_dataset(tmp_path / "a", resolution=8, channels=1)
    assert ds1[1].shape == (1, 8, 8)
    arr = load_uint8_images(tmp_path / "a", resolution=8, channels=3)
    assert arr.shape == (2, 8, 8, 3) and arr.dtype == np.uint8


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="no image files"):
        open_dataset(tmp_path, resolution=8)
    (tmp_path / "bad.jpg").write_bytes(b"xx")
    with pytest.raises(DataError, match="none of the 1 image files could be read"):
        open_dataset(tmp_path, resolution=8)
    with pytest.raises(DataError, match="does not exist"):
        open_dataset(tmp_path / "nope", resolution=8)
    with pytest.raises(DataError, match="channels must be 1 or 3"):
        open_dataset(tmp_path, resolution=8, channels=2)


def test_idx_and_npz(tmp_path):
    imgs = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", imgs)
    np.testing.assert_array_equal(read_idx_images(tmp_path / "train-images-idx3-ubyte.gz"), imgs)
    ds = open_dataset(tmp_path, resolution=28)
    assert len(ds) == 3 and torch.equal(ds[1][0], torch.from_numpy(imgs[1]))
    assert open_dataset(tmp_path, channels=3)[0].shape == (3, 28, 28)
    with pytest.raises(DataError, match="does not fit --resolution 32"):
        open_dataset(tmp_path / "train-images-idx3-ubyte.gz", resolution=32)
    (tmp_path / "t.idx3").write_bytes(struct.pack(">IIII", 0x803, 10, 28, 28) + b"\0" * 100)
    with pytest.raises(DataError, match="truncated"):
        read_idx_images(tmp_path / "t.idx3")
    nchw = np.random.default_rng(0).integers(0, 255, (4, 3, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "x.npz", images=nchw)
    ds = open_dataset(tmp_path / "x.npz")
    assert torch.equal(ds[2], torch.from_numpy(nchw[2]))
    np.savez(tmp_path / "f.npz", images=nchw.astype(np.float32))
    with pytest.raises(DataError, match="uint8"):
        open_dataset(tmp_path / "f.npz")


def test_model_range():
    x = torch.tensor([0, 255, 128], dtype=torch.uint8)
    torch.testing.assert_close(to_model_range(x), torch.tensor([-1.0, 1.0, 128 / 127.5 - 1]))


@pytest.mark.skipif(not FASHION.is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_named():
    ds = open_dataset("fashion-mnist", split="test")
    assert len(ds) == 10000 and ds[0].shape == (1, 28, 28)
