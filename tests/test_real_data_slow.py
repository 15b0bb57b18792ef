"""Long real-data runs that back the accuracy claims (``make test-slow``; CI runs them)."""

import json
import os
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.model_selection import train_test_split

from conftest import DATA_DIR, real_dataset
from sccsa_infer.cli import main as infer_main
from sccsa_train.cli import main as train_main

pytestmark = pytest.mark.slow

PBMC = DATA_DIR / "pbmc_zheng4k_top2000.h5ad"


PBMC_ARGS = ["-k", "8", "--eval-key", "cell_type", "--no-progress"]


def _pbmc_metrics(out) -> tuple[dict, float]:
    metrics = json.loads((out / "bundle.json").read_text())["metrics"]
    seconds = json.loads((out / "report.json").read_text())["timings_seconds"]["total"]
    return metrics, seconds


@pytest.fixture(scope="module")
def pbmc_default_ari(tmp_path_factory) -> list[float]:
    """ARI of the default on PBMC-Zheng4k, seeds 0, 1, 2, one process (labels never seen by the fit)."""
    real_dataset("pbmc_zheng4k_top2000")
    scores = []
    for seed in (0, 1, 2):
        out = tmp_path_factory.mktemp("pbmc") / f"seed{seed}"
        result = CliRunner().invoke(train_main, [str(PBMC), *PBMC_ARGS, "--seed", str(seed), "--out", str(out)])
        assert result.exit_code == 0, result.output
        metrics, seconds = _pbmc_metrics(out)
        assert seconds < 600
        scores.append(metrics["ari"])
        print(f"PBMC-Zheng4k seed {seed}: ARI {metrics['ari']:.3f} NMI {metrics['nmi']:.3f} ACC {metrics['acc']:.3f} "
              f"in {seconds:.0f} s")
    return scores


def test_pbmc_unsupervised_ari_three_seeds(pbmc_default_ari):
    """Default settings, labels never seen by the fit: the clustering page's PBMC figure holds.

    benchmarks/results/clustering.md commits 0.749 ± 0.004 (3 seeds) for today's default, so a
    mean below 0.74 or a seed more than 0.03 from the others is a regression. Issue 3 asked for
    0.75 and issue 13 for 0.80; the default misses both, and the README says so.
    """
    print(f"mean ARI {np.mean(pbmc_default_ari):.4f}")
    assert np.mean(pbmc_default_ari) >= 0.74
    assert np.ptp(pbmc_default_ari) <= 0.03


def test_pbmc_two_torchrun_processes_match_one_process(pbmc_default_ari, tmp_path):
    """Data-parallel training (2 CPU processes, gloo) reaches one process's quality: seed 0's ARI
    within 0.03 of the one-process mean over seeds 0-2 (their spread is 0.004 on the clustering page)."""
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
               "sccsa_train.cli", str(PBMC), *PBMC_ARGS, "--seed", "0", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-4000:]
    metrics, seconds = _pbmc_metrics(out)
    print(f"PBMC-Zheng4k, 2 processes, seed 0: ARI {metrics['ari']:.3f} NMI {metrics['nmi']:.3f} in {seconds:.0f} s; "
          f"one process: {np.mean(pbmc_default_ari):.3f}")
    assert abs(metrics["ari"] - np.mean(pbmc_default_ari)) <= 0.03


def test_pbmc_transfer_70_30_onnx_labels_equal_torch(tmp_path):
    """Issue 4's bar: train on a stratified 70 %, label the other 30 % through sccsa-infer; the
    ONNX labels are identical to the torch model's."""
    from sccsa_train import SCCSA

    adata = real_dataset("pbmc_zheng4k_top2000")
    train_idx, test_idx = train_test_split(np.arange(adata.n_obs), test_size=0.3, random_state=0,
                                           stratify=adata.obs["cell_type"])
    reference, query = adata[np.sort(train_idx)].copy(), adata[np.sort(test_idx)].copy()
    model = SCCSA(8, random_state=0, progress=False).fit(reference)
    model.export(tmp_path / "bundle")
    query.write_h5ad(tmp_path / "query.h5ad")
    out = tmp_path / "labelled.h5ad"
    result = CliRunner().invoke(infer_main, ["predict", str(tmp_path / "query.h5ad"), "--model", str(tmp_path / "bundle"),
                                             "--out", str(out), "--eval-key", "cell_type", "--no-progress"])
    assert result.exit_code == 0, result.output
    served = ad.read_h5ad(out)
    np.testing.assert_array_equal(served.obs["sccsa_cluster"].astype(int).to_numpy(), model.predict(query))
    np.testing.assert_allclose(served.obsm["X_sccsa"], model.transform(query), atol=1e-4, rtol=0)


def test_baron_donors_batch_key_follows_cell_types_and_labels_an_unseen_donor(tmp_path):
    """Issue 17's bar on the 4-donor Baron human set (seed 0): with --batch-key donor, cell-type
    ARI is higher and the clusters' NMI with the donor lower than without; a donor training never
    saw (human4, the smallest), labelled by sccsa-infer from the exported bundle, keeps its ARI
    within 0.05 of the same cells' ARI in the all-donor fit."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    from sccsa_train import SCCSA

    adata = real_dataset("baron_human_pancreas_subset_came")
    truth, donor = adata.obs["cell_type"].to_numpy(), adata.obs["donor"].to_numpy()
    plain = SCCSA(14, random_state=0, progress=False).fit(adata)
    keyed = SCCSA(14, batch_key="donor", random_state=0, progress=False).fit(adata)
    scores = {name: (adjusted_rand_score(truth, m.labels_), normalized_mutual_info_score(donor, m.labels_))
              for name, m in (("without", plain), ("with", keyed))}
    print("ARI, donor NMI:", scores)
    assert scores["with"][0] > scores["without"][0] and scores["with"][1] < scores["without"][1]

    held = donor == "human4"
    reference = adata[~held].copy()
    SCCSA(14, batch_key="donor", random_state=0, progress=False).fit(reference).export(tmp_path / "bundle")
    query = adata[held].copy()
    del query.obs["donor"]  # serving never needs the batch
    query.write_h5ad(tmp_path / "query.h5ad")
    result = CliRunner().invoke(infer_main, ["predict", str(tmp_path / "query.h5ad"), "--model", str(tmp_path / "bundle"),
                                             "--out", str(tmp_path / "labelled.h5ad"), "--no-progress"])
    assert result.exit_code == 0, result.output
    predicted = ad.read_h5ad(tmp_path / "labelled.h5ad").obs["sccsa_cluster"].astype(int).to_numpy()
    in_sample = adjusted_rand_score(truth[held], keyed.labels_[held])
    heldout = adjusted_rand_score(truth[held], predicted)
    print(f"human4: held-out ARI {heldout:.3f}, in-sample {in_sample:.3f}")
    assert heldout >= in_sample - 0.05


def test_pbmc_reference_mode_transfers_labels(tmp_path):
    """Protocol T with the defaults (labels_key → objective='classify'): trained on a stratified
    70 % of PBMC-Zheng4k, the bundle names the other 30 % correctly for at least 85 % of cells
    (0.899 ± 0.005 on the clustering page with the default within-class metric, 0.892 ± 0.009 with
    the Euclidean one; 0.801 ± 0.028 with the clustering stage 2, 0.905 for the logistic regression)."""
    from sccsa_infer import Predictor
    from sccsa_train import SCCSA

    adata = real_dataset("pbmc_zheng4k_top2000")
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    train_idx, test_idx = train_test_split(np.arange(adata.n_obs), test_size=0.3, random_state=0, stratify=labels)
    reference, query = adata[np.sort(train_idx)].copy(), adata[np.sort(test_idx)].copy()
    model = SCCSA(labels_key="cell_type", random_state=0, progress=False).fit(reference)
    assert model.n_clusters_ == len(np.unique(labels)) and "cross_entropy" in model.history_.cluster[-1]
    model.export(tmp_path / "bundle")
    named = Predictor(tmp_path / "bundle").predict(query).label
    accuracy = float(np.mean(np.asarray(named).astype(str) == labels[np.sort(test_idx)]))
    print(f"PBMC-Zheng4k reference mode, 30 % query: label accuracy {accuracy:.3f}")
    assert accuracy >= 0.85
