"""The thread default leaves busy cores alone; bad ``--threads`` values are refused before torch sees them."""

import os

import pytest
import torch

from ddpm import threads


def test_auto_threads_leaves_the_busy_cores_alone(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    assert threads.auto_threads(busy=0.0) == 4
    assert threads.auto_threads(busy=0.4) == 4  # a blip is not a busy core
    assert threads.auto_threads(busy=1.0) == 3
    assert threads.auto_threads(busy=2.6) == 1
    assert threads.auto_threads(busy=9.0) == 1  # never fewer than one


def test_busy_cores_is_a_share_of_the_machine():
    busy = threads.busy_cores(window_s=0.05)
    assert 0.0 <= busy <= (os.cpu_count() or 1) + 1e-6


@pytest.mark.parametrize("bad", [0, -1, 100_000, 1.5, True, "2"])
def test_bad_thread_counts_are_refused(bad):
    message = threads.check_threads(bad)
    assert message is not None and "--threads" in message
    with pytest.raises(ValueError, match="--threads"):
        threads.set_threads(bad)


def test_set_threads_explicit_and_auto(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert threads.set_threads(1) == 1 and torch.get_num_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
        monkeypatch.setattr(threads, "busy_cores", lambda window_s=0.1: 0.0)
        assert threads.set_threads(None) == threads.usable_cores() == torch.get_num_threads()
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        assert threads.set_threads(None) == 1  # an environment choice is left alone
    finally:
        torch.set_num_threads(before)
