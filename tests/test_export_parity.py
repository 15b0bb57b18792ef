"""The exported ONNX graph computes what the torch model computes, on real cells."""

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.model_selection import train_test_split

from conftest import real_dataset
from sccsa_infer import Predictor
from sccsa_infer.cli import main as infer_main
from sccsa_train import SCCSA


@pytest.fixture(scope="module")
def split_pbmc(tmp_path_factory):
    import anndata as ad

    adata = real_dataset("pbmc_zheng4k_top2000")
    train_idx, test_idx = train_test_split(np.arange(adata.n_obs), test_size=0.3, random_state=0,
                                           stratify=adata.obs["cell_type"])
    reference, query = adata[np.sort(train_idx)].copy(), adata[np.sort(test_idx)].copy()
    model = SCCSA(8, n_genes=400, pretrain_epochs=5, cluster_epochs=3, random_state=0, progress=False).fit(reference)
    folder = tmp_path_factory.mktemp("parity")
    model.export(folder / "bundle")
    query.write_h5ad(folder / "query.h5ad")
    return model, folder, ad.read_h5ad(folder / "query.h5ad")


def test_onnx_equals_torch_on_held_out_real_cells(split_pbmc):
    model, folder, query = split_pbmc
    out = folder / "labelled.h5ad"
    result = CliRunner().invoke(infer_main, ["predict", str(folder / "query.h5ad"), "--model", str(folder / "bundle"),
                                             "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    import anndata as ad

    served = ad.read_h5ad(out)
    np.testing.assert_array_equal(served.obs["sccsa_cluster"].astype(int).to_numpy(), model.predict(query))
    np.testing.assert_allclose(served.obsm["X_sccsa"], model.transform(query), atol=1e-4, rtol=0)


def test_dynamic_batch_axis(split_pbmc):
    _, folder, query = split_pbmc
    predictor = Predictor(folder / "bundle")
    one = predictor.predict(query[:40], batch_size=1)
    many = predictor.predict(query[:40], batch_size=40)
    np.testing.assert_array_equal(one.cluster, many.cluster)
    np.testing.assert_allclose(one.latent, many.latent, atol=1e-5)
