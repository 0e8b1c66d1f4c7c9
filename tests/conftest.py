import os

import pytest
import torch

# Keep CPU tests quick and deterministic on the 2-core CI machine.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def tmp_dir(tmp_path):
    return tmp_path
