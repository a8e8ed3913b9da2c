"""extract_features under a real 2-process gloo group: every rank gets all ranks' features."""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


class _Enc(torch.nn.Module):
    def encode(self, x, pool="cls"):
        return x * 2


def _worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        from evals.features import extract_features
        n = 5 if rank == 0 else 3                      # unequal shards, as with a ragged last batch
        x = torch.full((n, 4), float(rank + 1))
        loader = [(x[:2], torch.full((2,), rank)), (x[2:], torch.full((n - 2,), rank))]
        f, y = extract_features(_Enc(), loader, "cpu", progress=False)
        torch.save((f, y), os.path.join(out, f"r{rank}.pt"))
        f_local, _ = extract_features(_Enc(), loader, "cpu", progress=False, gather=False)
        assert f_local.shape[0] == n
    finally:
        dist.destroy_process_group()


def test_extract_features_gathers_unequal_shards(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        f, y = torch.load(tmp_path / f"r{rank}.pt")
        assert f.shape == (8, 4)
        assert torch.equal(y, torch.tensor([0] * 5 + [1] * 3))
        assert torch.equal(f[:5], torch.full((5, 4), 2.0)) and torch.equal(f[5:], torch.full((3, 4), 4.0))
