"""Pictures a person can read: grids enlarged by an integer factor with exact pixel replication, figures with their
labels drawn in, plots with tick labels and axis titles, and clear errors for bad scales."""

import numpy as np
import pytest
from PIL import Image

import ddpm
from _helpers import tiny_unet
from ddpm import images
from ddpm.cli import main
from ddpm.evaluation.figure_rows import interpolation_labels, progressive_labels, shared_latent_labels
from ddpm.evaluation.figures import rate_distortion, save_rows, write_rate_distortion
from ddpm.training.plot import draw_loss_curve

T = 12


def _images(n, h=8, w=8, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def _png(path):
    with Image.open(path) as im:
        return np.asarray(im)


def _dark(array) -> int:
    """How many pixels are dark (text or lines are drawn in black on white)."""
    a = np.asarray(array).astype(int)
    return int((a.reshape(*a.shape[:2], -1).max(-1) < 128).sum())


def _placed(fig, plain) -> tuple[int, int]:
    """(top, left) where ``plain`` sits unchanged inside ``fig`` below the header band (a wide title may make the
    figure wider than its label band plus grid, on the right)."""
    top = fig.shape[0] - plain.shape[0]
    for left in range(fig.shape[1] - plain.shape[1] + 1):
        if np.array_equal(fig[top:, left : left + plain.shape[1]], plain):
            return top, left
    raise AssertionError("the grid's pixels are not in the figure unchanged")


# ---------------------------------------------------------------------------------------------------------------
# scale: exact replication, sizes, errors
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [1, 2, 3, 7])
def test_make_grid_scale_replicates_every_pixel(scale):
    raw = images.make_grid(_images(5))
    big = images.make_grid(_images(5), scale=scale)
    assert raw.shape == (2 * 8 + 3 * 2, 3 * 8 + 4 * 2, 3)
    assert big.shape == (raw.shape[0] * scale, raw.shape[1] * scale, 3) and big.dtype == np.uint8
    # every scale x scale block is one source pixel
    blocks = big.reshape(raw.shape[0], scale, raw.shape[1], scale, 3)
    for di in range(scale):
        for dj in range(scale):
            np.testing.assert_array_equal(blocks[:, di, :, dj], raw)
    if scale == 1:
        assert big.tobytes() == raw.tobytes()


def test_auto_scale_makes_the_long_side_at_least_512():
    # 16 Fashion-MNIST-sized images: 122 px raw, 5 x 122 = 610 px (4 x 122 = 488 would be too small)
    grid = images.make_grid(_images(16, 28, 28, 1), scale="auto")
    assert grid.shape == (610, 610, 1)
    assert images.auto_scale(122, 122) == 5 and images.auto_scale(600, 300) == 1 and images.auto_scale(256, 10) == 2
    assert images.auto_scale(40, 400, min_tile=64, tile=28) == 3  # labelled figures: tiles of at least 64 px
    assert images.auto_scale(2, 2) == images.MAX_SCALE


def test_save_grid_default_is_legible_and_scale_1_is_raw(tmp_path):
    x = _images(16, 28, 28, 1)
    images.save_grid(x, tmp_path / "auto.png")
    images.save_grid(x, tmp_path / "raw.png", scale=1)
    raw = _png(tmp_path / "raw.png")
    np.testing.assert_array_equal(raw, images.make_grid(x)[..., 0])
    assert max(_png(tmp_path / "auto.png").shape) >= images.MIN_GRID_SIDE
    np.testing.assert_array_equal(_png(tmp_path / "auto.png"), raw.repeat(5, 0).repeat(5, 1))


@pytest.mark.parametrize("bad", [0, -1, 65, 1.5, "x", "", True, None, "2.0"])
def test_bad_scales_are_refused(bad):
    with pytest.raises(ValueError, match=r"scale must be 'auto' or an integer in 1\.\.64"):
        images.check_scale(bad)
    with pytest.raises(ValueError, match="scale"):
        images.make_grid(_images(2), scale=bad)


def test_good_scales_are_accepted():
    assert images.check_scale("auto") == "auto" and images.check_scale(" AUTO ") == "auto"
    assert images.check_scale("3") == 3 and images.check_scale(np.int64(4)) == 4 and images.check_scale(64) == 64


# ---------------------------------------------------------------------------------------------------------------
# labelled figures
# ---------------------------------------------------------------------------------------------------------------
def test_labelled_grid_adds_non_blank_bands_and_keeps_the_pixels():
    rows = [_images(4, seed=1), _images(4, seed=2)]
    plain = images.labelled_grid(rows, scale=3)
    np.testing.assert_array_equal(plain, images.make_grid(np.concatenate(rows), nrow=4, scale=3))
    fig = images.labelled_grid(rows, ["999", "500", "100", "0"], ["a", "b"], corner="t", title="a title", scale=3)
    top, left = _placed(fig, plain)  # the images themselves are untouched
    assert top > 10 and left > 5  # a header band (title + column labels) and a row-label band
    assert _dark(fig[:top]) > 20 and _dark(fig[top:, :left]) > 10  # the bands hold text
    # each column label sits above its own column: dark pixels over the middle of every column
    header = fig[top - 20 : top - 2, left:]
    pitch = (8 + 2) * 3
    for j in range(4):
        assert _dark(header[:, 2 * 3 + j * pitch : 2 * 3 + j * pitch + 8 * 3]) > 0, j


def test_labelled_grid_auto_scale_and_grey_images():
    rows = [_images(3, 28, 28, 1)]
    fig = images.labelled_grid(rows, ["a", "b", "c"])
    assert fig.ndim == 3 and fig.shape[-1] == 1  # one channel in, one channel out
    assert fig.shape[1] >= 3 * 64  # tiles of at least 64 px under "auto"


def test_labelled_grid_checks_its_labels():
    rows = [_images(3)]
    with pytest.raises(ValueError, match="col_labels: 2 labels for 3 columns"):
        images.labelled_grid(rows, ["a", "b"])
    with pytest.raises(ValueError, match="row_labels: 2 labels for 1 rows"):
        images.labelled_grid(rows, row_labels=["a", "b"])
    with pytest.raises(ValueError, match="same number of images"):
        images.labelled_grid([_images(3), _images(2)])
    with pytest.raises(ValueError, match="scale"):
        images.labelled_grid(rows, scale=0)


def test_figure_labels():
    assert progressive_labels([999, 499, 0])["col_labels"] == ["999", "499", "0"]
    shared = shared_latent_labels([999, 499], 2)
    assert shared["col_labels"] == ["x_t", "sample 1", "sample 2"] and shared["row_labels"] == ["t = 999", "t = 499"]
    interp = interpolation_labels(499, (0.0, 0.5, 1.0), [0, 1, 4, 5])
    assert interp["col_labels"] == ["A", "0", "0.5", "1", "B"] and interp["row_labels"] == ["#0, #1", "#4, #5"]
    assert interp["corner"] == "lambda" and "t = 499" in interp["title"]


def test_save_rows_default_is_the_raw_grid(tmp_path):
    rows = [_images(3, seed=1), _images(3, seed=2)]
    save_rows(rows, tmp_path / "raw.png")
    np.testing.assert_array_equal(_png(tmp_path / "raw.png"), images.make_grid(np.concatenate(rows), nrow=3))


# ---------------------------------------------------------------------------------------------------------------
# the commands
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model(tmp_path_factory):
    pipe = ddpm.DDPMPipeline(tiny_unet(3, 3), ddpm.DDPMScheduler(num_train_timesteps=T))
    pipe.recommended_num_inference_steps = 2
    folder = tmp_path_factory.mktemp("model") / "pipe"
    pipe.save_pretrained(folder)
    return folder


def test_sample_scale_option(model, tmp_path):
    base = ["sample", "--model", str(model), "--no-progress", "--num-images", "4", "--num-inference-steps", "2"]
    assert main([*base, "--scale", "1", "--out", str(tmp_path / "raw.png")]) == 0
    assert main([*base, "--scale", "3", "--out", str(tmp_path / "x3.png")]) == 0
    assert main([*base, "--out", str(tmp_path / "auto.png")]) == 0
    raw = _png(tmp_path / "raw.png")
    assert raw.shape == (2 * 8 + 3 * 2, 2 * 8 + 3 * 2, 3)
    np.testing.assert_array_equal(_png(tmp_path / "x3.png"), raw.repeat(3, 0).repeat(3, 1))
    k = images.auto_scale(*raw.shape[:2])
    assert max(_png(tmp_path / "auto.png").shape) >= 512
    np.testing.assert_array_equal(_png(tmp_path / "auto.png"), raw.repeat(k, 0).repeat(k, 1))


@pytest.mark.parametrize(
    "argv",
    [
        ["sample", "--scale", "0"],
        ["sample", "--scale", "big"],
        ["eval", "progressive", "--model", "m", "--scale", "0"],
        ["eval", "shared-latent", "--model", "m", "--scale", "-2"],
        ["eval", "interpolate", "--model", "m", "--data", "d", "--scale", "1.5"],
    ],
)
def test_bad_scale_options_fail_before_any_work(argv, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ": error: --scale must be 'auto' or an integer in 1..64, got " in err
    assert not (tmp_path / "x.png").exists()


def test_sample_scale_needs_a_png_grid(tmp_path, capsys):
    for out in ("x.npz", "folder"):
        assert main(["sample", "--scale", "2", "--out", str(tmp_path / out)]) == 2
        assert "--scale 2 applies to a .png grid only" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_progressive_figure_has_its_t_labels(model, tmp_path):
    args = ["eval", "progressive", "--model", str(model), "--num-samples", "2", "--every", "4", "--seed", "3"]
    args += ["--num-inference-steps", "12"]  # the full chain (the default is the model's recommendation)
    assert main([*args, "--scale", "8", "--no-labels", "--out", str(tmp_path / "plain.png")]) == 0
    assert main([*args, "--scale", "8", "--out", str(tmp_path / "fig.png")]) == 0
    plain, fig = _png(tmp_path / "plain.png"), _png(tmp_path / "fig.png")
    assert plain.shape == (8 * (2 * 8 + 3 * 2), 8 * (4 * 8 + 5 * 2), 3)  # 4 columns: t = 11, 7, 3, 0
    top, left = _placed(fig, plain)
    assert top > 20 and left > 0
    assert _dark(fig[:top]) > 50


def test_shared_latent_and_interpolation_figures_have_labels(model, tmp_path):
    data = tmp_path / "images.npz"
    np.savez(data, images=_images(4, seed=9))
    for argv in (
        ["eval", "shared-latent", "--model", str(model), "--num-samples", "2", "--timesteps", "5,2"],
        ["eval", "interpolate", "--model", str(model), "--data", str(data), "--t", "3", "--lambdas", "0,1"],
    ):
        assert main([*argv, "--scale", "8", "--no-labels", "--out", str(tmp_path / "plain.png")]) == 0
        assert main([*argv, "--scale", "8", "--out", str(tmp_path / "fig.png")]) == 0
        plain, fig = _png(tmp_path / "plain.png"), _png(tmp_path / "fig.png")
        top, left = _placed(fig, plain)
        assert top > 20 and left > 20, argv  # column labels above, row labels (t, or the pair) on the left
        assert _dark(fig[top:, :left]) > 20 and _dark(fig[:top]) > 50, argv


# ---------------------------------------------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------------------------------------------
def test_loss_curve_has_ticks_titles_and_legend(tmp_path):
    records = [
        {"step": s, "loss": 1 / s, **{f"loss_q{q}": (q + 1) / (s * 2) for q in range(4)}} for s in range(10, 1010, 10)
    ]
    draw_loss_curve(records, tmp_path / "loss.png")
    draw_loss_curve([], tmp_path / "empty.png")
    img = _png(tmp_path / "loss.png")
    assert img.shape == (400, 640, 3)
    assert _dark(img[-50:, 80:450]) > 100  # x tick labels and the axis title under the plot
    assert _dark(img[40:340, :70]) > 100  # y tick labels and the vertical axis title
    legend = img[30:140, 470:]
    assert _dark(legend) > 100 and (np.abs(legend.astype(int) - [31, 119, 180]).sum(-1) < 30).any()
    assert _png(tmp_path / "empty.png").shape == (400, 640, 3)


def test_rate_distortion_plot_has_axis_labels(tmp_path):
    rng = np.random.default_rng(0)
    rd = rate_distortion(rng.random((2, 20)), rng.random((2, 20)), rng.random(2))
    png = write_rate_distortion(rd, tmp_path / "rd")[2]
    img = _png(png)
    assert img.shape == (320, 960, 3)
    for k in range(3):
        panel = img[:, k * 320 : (k + 1) * 320]
        assert _dark(panel[-50:, 70:]) > 50, k  # x ticks and title
        assert _dark(panel[:260, :70]) > 50, k  # y ticks and title


def test_tick_helpers():
    assert images.linear_ticks(0, 1000) == [0, 200, 400, 600, 800, 1000]
    assert images.linear_ticks(10, 5000, max_ticks=6) == [1000, 2000, 3000, 4000, 5000]
    assert images.log_ticks(0.0008, 1.2) == pytest.approx([1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1])
    assert images.log_ticks(1e-6, 20) == pytest.approx([1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.1, 1, 10])
    assert images.log_ticks(0.031, 0.034) == pytest.approx([0.031, 0.032, 0.033, 0.034])
    assert images.log_ticks(0.03, 0.09) == pytest.approx([0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09])
    assert [images.tick_label(v) for v in (0, 1000, 0.05, 2.5, 1e-5)] == ["0", "1000", "0.05", "2.5", "1e-5"]
