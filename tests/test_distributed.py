"""Data-parallel training under torchrun: two CPU processes on the gloo backend.

Whether two processes reach the same quality as one on real data is checked on PBMC-Zheng4k in
tests/test_real_data_slow.py; here: the split of the work, and the command's contract (one
bundle, one summary, every cell labelled, nothing else written).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import anndata as ad
import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score

from conftest import synthetic_counts
from sccsa_train.distributed import SINGLE, Workers
from sccsa_train.fit import _batches


def test_every_rank_takes_the_same_steps_and_the_shares_cover_each_global_batch():
    n, batch_size = 1027, 256  # 4 full batches and a 3-cell tail: too small to share among 2 ranks
    whole = _batches(n, batch_size, torch.Generator().manual_seed(0), SINGLE)
    shares = [_batches(n, batch_size, torch.Generator().manual_seed(0), Workers(rank, 2)) for rank in (0, 1)]
    assert len(whole) == 5 and len(shares[0]) == len(shares[1]) == 4
    epoch = torch.cat([torch.cat([a, b]) for a, b in zip(*shares)])
    assert sorted(epoch.tolist()) == list(range(n))
    for a, b in zip(*shares):
        assert min(len(a), len(b)) >= 2 and abs(len(a) - len(b)) <= 1
    # one process: the epoch's order and steps as before distributed training existed
    assert torch.equal(torch.cat(whole), torch.randperm(n, generator=torch.Generator().manual_seed(0)))
    assert len(whole[-1]) == 3


def _train(tmp_path, name: str, processes: int) -> subprocess.CompletedProcess:
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"] if processes > 1 else []
    command = [sys.executable, *launcher, "-m", "sccsa_train.cli", str(tmp_path / "cells.h5ad"), "-k", "3",
               "--genes", "hvg", "--pretrain-epochs", "10", "--cluster-epochs", "10", "--eval-key", "cell_type",
               "--no-progress", "--out", str(tmp_path / name), "--write-adata", str(tmp_path / f"{name}.h5ad")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def test_torchrun_two_processes_write_one_bundle_that_labels_like_one_process(tmp_path):
    cells = synthetic_counts(n_cells=600, n_genes=90, n_clusters=3, seed=0)
    cells.write_h5ad(tmp_path / "cells.h5ad")
    two = _train(tmp_path, "two", processes=2)
    one = _train(tmp_path, "one", processes=1)

    # stage 1 freezes the idle classifier head, so DDP needs no search for unused parameters
    # (it would fail the step if a trainable parameter got no gradient) and prints no warning about it
    assert "find_unused_parameters" not in two.stderr
    # rank 1 trains but neither writes nor reports: one summary, as from one process
    assert two.stdout.count("bundle written to") == one.stdout.count("bundle written to") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.h5ad", "one", "one.h5ad", "two", "two.h5ad"]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())

    truth = cells.obs["cell_type"].to_numpy()
    labels = {name: ad.read_h5ad(tmp_path / f"{name}.h5ad").obs["sccsa_cluster"].to_numpy() for name in ("one", "two")}
    assert adjusted_rand_score(truth, labels["two"]) >= adjusted_rand_score(truth, labels["one"]) - 0.05
    assert adjusted_rand_score(labels["one"], labels["two"]) >= 0.9

    reports = {name: json.loads((tmp_path / name / "report.json").read_text()) for name in ("one", "two")}
    assert reports["two"]["n_cells"] == 600 and len(reports["two"]["history"]["pretrain"]) == 10
    # the same steps on the same cells with averaged gradients: the first epoch's loss is one
    # process's up to rounding (summed gradients or whole batches per rank would be far off)
    first = [reports[name]["history"]["pretrain"][0]["reconstruction"] for name in ("one", "two")]
    assert np.isclose(first[0], first[1], rtol=1e-3)


def test_a_one_cell_tail_joins_the_last_batch_and_no_cell_is_lost():
    batches = _batches(513, 256, torch.Generator().manual_seed(0), SINGLE)  # 513 = 2 × 256 + 1
    assert [len(b) for b in batches] == [256, 257]
    assert sorted(torch.cat(batches).tolist()) == list(range(513))


ON_MAIN_SCRIPT = """
import sys
import torch.distributed as dist
from sccsa_train.distributed import Workers
from sccsa_infer.errors import InputDataError
rank, path = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=2)
workers = Workers(rank, 2)
print("value", workers.on_main(lambda: rank + 41), flush=True)  # rank 0's 41 on both

def wrong_k():
    raise InputDataError("n_clusters is 5 but cell_type has 3 classes")

try:
    workers.on_main(wrong_k)
except InputDataError as error:
    print("raised", error, flush=True)
dist.destroy_process_group()
"""


def test_an_error_on_rank_0_is_raised_on_every_rank_instead_of_leaving_them_waiting(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ranks = [subprocess.Popen([sys.executable, "-c", ON_MAIN_SCRIPT, str(rank), str(tmp_path / "rendezvous")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for rank in (0, 1)]
    outputs = [process.communicate(timeout=120) for process in ranks]
    for process, (stdout, stderr) in zip(ranks, outputs):
        assert process.returncode == 0, stderr[-2000:]
        assert stdout.splitlines() == ["value 41", "raised n_clusters is 5 but cell_type has 3 classes"]
