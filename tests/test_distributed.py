"""util/distributed.py: one process alone, and two torchrun processes on the CPU (gloo)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from util.distributed import interleaved, processes, rank_zero_first, torchrun_env

ROOT = Path(__file__).resolve().parents[1]


def test_alone_everything_is_one_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert torchrun_env() == (0, 1, 0)
    with processes("cpu") as procs:
        assert (procs.rank, procs.world, procs.device) == (0, 1, torch.device("cpu"))
        assert procs.main and not procs.distributed and not dist.is_initialized()
        ran = []
        with rank_zero_first(procs):
            ran.append(1)
        assert ran == [1]
        assert interleaved(lambda items: np.array(items) * 2.0, [1, 2, 3], procs).tolist() == [2.0, 4.0, 6.0]


SCRIPT = """
import sys
import numpy as np
import torch
sys.path.insert(0, {root!r})
from util.distributed import gather_batch, interleaved, processes

with processes("cpu", quiet=True) as procs:
    r = procs.rank
    shares = [2, 1]  # rank 0 holds rows 0-1 of the global batch, rank 1 row 2
    x = (torch.arange(shares[r] * 3, dtype=torch.float32).reshape(-1, 3) + 10 * r).requires_grad_(True)
    gathered = gather_batch(x, shares)                    # [3, 3], the same in both
    weights = torch.arange(9, dtype=torch.float32).reshape(3, 3)
    (gathered * weights).sum().backward()                 # the same loss in both ranks
    rows = slice(0, 2) if r == 0 else slice(2, 3)
    assert torch.equal(gathered[rows], x.detach()), gathered
    assert torch.equal(x.grad, 2 * weights[rows]), x.grad  # summed over the 2 ranks
    empty = gather_batch(torch.zeros(0, 3) if r else torch.ones(1, 3), [1, 0])  # an empty share
    assert empty.shape == (1, 3)
    got = interleaved(lambda items: np.array(items, dtype=float) * 2, list(range(5)), procs)
    assert got.tolist() == [0, 2, 4, 6, 8], got

    def fails_on_rank_1(items):
        if r == 1:
            raise ValueError("bad item on rank 1")
        return np.zeros(len(items))

    try:
        interleaved(fails_on_rank_1, list(range(4)), procs)
    except ValueError as e:
        print(f"rank {{r}} raised {{e}}", file=sys.stderr, flush=True)
    print(f"rank {{r}} done", flush=True)
"""


def test_two_processes_gather_with_gradients_and_share_scoring(tmp_path):
    script = tmp_path / "two.py"
    script.write_text(SCRIPT.format(root=str(ROOT)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    result = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "rank 0 done" in result.stdout and "rank 1 done" not in result.stdout  # quiet: rank 1 prints no output
    # both ranks raise rank 1's error (rank 1's errors still reach stderr)
    assert "rank 0 raised bad item on rank 1" in result.stderr and "rank 1 raised bad item on rank 1" in result.stderr
