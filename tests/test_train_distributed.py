"""Two CPU processes on the gloo backend, launched by torchrun, against one process with the same global batch."""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from ddpm.training import checkpoint as ckpt
from ddpm.training.trainer import Trainer
from test_train_loop import TINY_UNET, _cfg, _npz


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "ddpm", "train", *args,
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.skipif(not torch.distributed.is_available() or shutil.which("true") is None, reason="no torch.distributed")
def test_two_process_ddp_with_resume_matches_one_process(tmp_path):
    data = _npz(tmp_path / "data.npz", n=20)
    unet = tmp_path / "unet.json"
    unet.write_text(json.dumps(TINY_UNET))
    # dropout 0: dropout masks come from each process's own RNG; noise, timesteps, flips and data are global.
    options = dict(batch_size=8, max_steps=6, checkpoint_every=3, warmup_steps=2, dropout=0.0, hflip=True, lr=1e-3)
    Trainer(_cfg(data, tmp_path / "single", **options), progress=False).run()

    args = [
        "--data", str(data), "--resolution", "8", "--channels", "3", "--model-config", str(unet), "--batch-size", "8",
        "--checkpoint-every", "3", "--warmup-steps", "2", "--dropout", "0", "--hflip", "--lr", "1e-3",
        "--sample-every", "0", "--log-every", "3", "--num-workers", "0", "--keep-checkpoints", "3", "--no-progress",
        "--output-dir", str(tmp_path / "ddp"),
    ]  # fmt: skip
    _torchrun([*args, "--max-steps", "3"])
    _torchrun([*args, "--max-steps", "6", "--resume"])  # every rank loads the checkpoint of step 3

    single, _ = ckpt.load_latest_checkpoint(tmp_path / "single" / "checkpoints")
    ddp, _ = ckpt.load_latest_checkpoint(tmp_path / "ddp" / "checkpoints")
    assert ddp["step"] == single["step"] == 6 and ddp["rng"]["world_size"] == 2 and len(ddp["rng"]["ranks"]) == 2
    # The attention key bias has an exactly zero gradient in exact arithmetic (softmax ignores a constant shift of
    # the logits), so Adam turns its rounding noise into full-size updates: it is excluded from the comparison.
    keys = [k for k in single["model"] if not k.endswith("to_k.bias")]
    for key in keys:
        torch.testing.assert_close(ddp["model"][key], single["model"][key], rtol=1e-4, atol=1e-5, msg=key)
        torch.testing.assert_close(ddp["ema"]["params"][key], single["ema"]["params"][key], rtol=1e-4, atol=1e-5)
    assert (tmp_path / "ddp" / "pipeline" / "model_index.json").is_file()
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [3, 6]  # written once, by rank 0
