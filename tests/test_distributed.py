"""util/distributed.py alone (no torchrun): one process, and every collective a no-op. Two processes:
tests/test_train.py's torchrun test (the gather, the averaged gradients, a stop signal in one rank,
validation shared over the ranks)."""
import numpy as np
import torch
import torch.distributed as dist

from util.distributed import average_gradients, interleaved, processes, rank_zero_first, torchrun_env


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
        w = torch.ones(3, requires_grad=True)
        (2 * w).sum().backward()
        assert average_gradients([w], 15, procs) == 15 and w.grad.tolist() == [2.0, 2.0, 2.0]
