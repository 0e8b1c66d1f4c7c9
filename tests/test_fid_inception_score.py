"""Inception Score: the formula against closed forms on synthetic logits; the FID network is refused."""

import numpy as np
import pytest
import torch

from ddpm.cli import main
from ddpm.evaluation.inception_score import InceptionLogits, inception_score


def test_confident_and_balanced_predictions_score_the_number_of_classes():
    k, n = 5, 100
    logits = np.full((n, k), -50.0)
    logits[np.arange(n), np.arange(n) % k] = 50.0  # each split holds every class equally often
    mean, std = inception_score(logits, splits=10)
    assert mean == pytest.approx(k, rel=1e-9) and std == pytest.approx(0, abs=1e-9)


def test_identical_predictions_score_one():
    logits = np.tile(np.array([[1.0, 2.0, -3.0, 0.5]]), (40, 1))
    mean, std = inception_score(logits, splits=10)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0, abs=1e-12)


def test_general_case_matches_the_formula():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((103, 7)) * 2
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    scores = []
    for i in range(10):  # the original code's consecutive parts
        part = p[i * 103 // 10 : (i + 1) * 103 // 10]
        py = part.mean(0, keepdims=True)
        scores.append(np.exp(np.mean(np.sum(part * (np.log(part) - np.log(py)), 1))))
    mean, std = inception_score(logits)
    assert mean == pytest.approx(np.mean(scores), rel=1e-10)
    assert std == pytest.approx(np.std(scores), rel=1e-8)
    # Two classes, two equal halves of confident predictions per split: IS = 2.
    half = np.repeat(np.array([[30.0, -30.0], [-30.0, 30.0]]), 1, axis=0)
    assert inception_score(np.tile(half, (10, 1)), splits=10)[0] == pytest.approx(2.0, rel=1e-9)


def test_bad_inputs():
    with pytest.raises(ValueError, match="splits"):
        inception_score(np.zeros((5, 3)), splits=10)
    with pytest.raises(ValueError, match="logits"):
        inception_score(np.zeros(5))


def test_command_without_classifier_skips_and_says_why(tmp_path, capsys):
    a = tmp_path / "a.npz"
    np.savez(a, images=np.zeros((4, 8, 8, 3), np.uint8))
    assert main(["eval", "is", str(a)]) == 1
    assert "no classifier" in capsys.readouterr().err


def test_classifier_network_by_path(tmp_path, capsys):
    class Tiny(torch.nn.Module):
        def forward(self, x):
            return torch.stack([x.mean((1, 2, 3)), -x.mean((1, 2, 3)), torch.zeros(len(x))], 1) * 10

    path = tmp_path / "logits.pt"
    torch.jit.script(Tiny()).save(str(path))
    images = np.concatenate([np.zeros((10, 8, 8, 3), np.uint8), np.full((10, 8, 8, 3), 255, np.uint8)])
    logits = InceptionLogits(path)(images, batch_size=7)
    assert logits.shape == (20, 3)
    a = tmp_path / "a.npz"
    np.savez(a, images=images)
    assert main(["eval", "is", str(a), "--inception-logits", str(path), "--splits", "2"]) == 0
    assert capsys.readouterr().out.startswith("IS ")
