"""The bundle contract: files, hashes, metadata twice, schema version, atomic writing."""

import json
import shutil
import zipfile

import numpy as np
import onnx
import pytest

from sccsa_infer.bundle import (
    METADATA_FILE,
    METADATA_KEY,
    MODEL_FILE,
    SCHEMA_VERSION,
    SELECTOR_FILE,
    load_bundle,
    write_bundle,
)
from sccsa_infer.errors import BundleError, OutputError
from sccsa_infer.predictor import Predictor


def _copy(bundle_dir, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(bundle_dir, target)
    return target


def test_exported_bundle_layout(bundle_dir):
    names = {p.name for p in bundle_dir.iterdir()}
    assert {MODEL_FILE, METADATA_FILE, SELECTOR_FILE, "report.json", "selftest.npz"} <= names
    meta = json.loads((bundle_dir / METADATA_FILE).read_text())
    assert meta["schema_version"] == SCHEMA_VERSION
    assert set(meta["files"]) == names - {METADATA_FILE}
    for key in ("genes", "n_clusters", "cluster_names", "thresholds", "training", "versions", "metrics"):
        assert key in meta
    assert meta["cluster_names"] is not None and len(meta["cluster_names"]) == meta["n_clusters"]


def test_onnx_metadata_equals_bundle_json(bundle_dir):
    model = onnx.load(str(bundle_dir / MODEL_FILE))
    props = {p.key: p.value for p in model.metadata_props}
    embedded = json.loads(props[METADATA_KEY])
    meta = json.loads((bundle_dir / METADATA_FILE).read_text())
    meta.pop("files")
    assert embedded == meta


def test_onnx_is_one_file_opset_le_20_with_named_io(bundle_dir):
    model = onnx.load(str(bundle_dir / MODEL_FILE), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")) <= 20
    assert [i.name for i in model.graph.input] == ["counts", "total_counts"]
    assert [o.name for o in model.graph.output] == ["label", "prob", "latent", "distance"]
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # dynamic batch axis
    assert not any(n.op_type in ("DFT", "STFT") for n in model.graph.node)
    # the encoder's first convolution is exported plain, a 5 × 5 kernel over one channel (training's
    # phase form runs slower in ONNX Runtime)
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    weights = [shapes.get(n.input[1]) for n in model.graph.node if n.op_type == "Conv"]
    assert any(w is not None and w[1:] == [1, 5, 5] for w in weights), weights


def test_zip_bundle_round_trip(bundle_dir, tmp_path):
    bundle = load_bundle(bundle_dir)
    archive = write_bundle(tmp_path / "m.zip", bundle.embedded_metadata(),
                           {k: v for k, v in bundle.members.items() if k != METADATA_FILE})
    assert zipfile.is_zipfile(archive)
    again = load_bundle(archive)
    assert again.genes == bundle.genes and again.model_bytes == bundle.model_bytes


def test_tampered_file_detected(bundle_dir, tmp_path):
    copy = _copy(bundle_dir, tmp_path)
    with open(copy / SELECTOR_FILE, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleError, match="altered after export"):
        load_bundle(copy)


def test_edited_metadata_detected(bundle_dir, tmp_path):
    copy = _copy(bundle_dir, tmp_path)
    meta = json.loads((copy / METADATA_FILE).read_text())
    meta["cluster_names"][0] = "something else"
    (copy / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="disagree"):
        Predictor(copy)


def test_newer_schema_rejected(bundle_dir, tmp_path):
    copy = _copy(bundle_dir, tmp_path)
    meta = json.loads((copy / METADATA_FILE).read_text())
    meta["schema_version"] = SCHEMA_VERSION + 1
    (copy / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="newer"):
        load_bundle(copy)


def test_missing_and_corrupt_pieces(bundle_dir, tmp_path):
    copy = _copy(bundle_dir, tmp_path)
    (copy / SELECTOR_FILE).unlink()
    with pytest.raises(BundleError, match="missing"):
        load_bundle(copy)
    (copy / METADATA_FILE).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(copy)
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nowhere")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(BundleError, match="neither a bundle directory"):
        load_bundle(tmp_path / "file.txt")


def test_write_refuses_to_overwrite_and_leaves_nothing_on_failure(bundle_dir, tmp_path):
    bundle = load_bundle(bundle_dir)
    files = {k: v for k, v in bundle.members.items() if k != METADATA_FILE}
    target = tmp_path / "out"
    write_bundle(target, bundle.embedded_metadata(), files)
    with pytest.raises(OutputError, match="already exists"):
        write_bundle(target, bundle.embedded_metadata(), files)
    broken = dict(bundle.embedded_metadata(), thresholds=[])
    with pytest.raises(BundleError):
        write_bundle(tmp_path / "broken", broken, files)
    assert not (tmp_path / "broken").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_lognorm_bundle_keeps_the_two_inputs_contract(synthetic, tmp_path):
    """With --input-kind lognorm the graph skips normalisation but still takes total_counts."""
    import scipy.sparse as sp

    from conftest import FAST_TRAINING
    from sccsa_train import SCCSA

    lognorm = synthetic.copy()
    lognorm.X = sp.csr_matrix(np.log1p(synthetic.X.toarray()))
    model = SCCSA(3, n_genes=30, input_kind="lognorm", random_state=0, **FAST_TRAINING).fit(lognorm)
    model.export(tmp_path / "b")
    predictor = Predictor(tmp_path / "b")
    assert [i.name for i in predictor.session.get_inputs()] == ["counts", "total_counts"]
    result = predictor.predict(lognorm)
    np.testing.assert_array_equal(result.cluster, model.predict(lognorm))
