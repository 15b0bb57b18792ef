"""Cell Ontology ids and synonyms in a bundle (issue 18): checked, carried, used by --eval-key."""

from __future__ import annotations

import json

import anndata as ad
import pytest
from click.testing import CliRunner

from sccsa_infer.bundle import load_bundle
from sccsa_infer.cli import main as infer_main
from sccsa_infer.errors import BundleError, InvalidParameterError
from sccsa_infer.ontology import check_ontology, cluster_term_ids, to_model_names

from conftest import synthetic_counts

FAST = ["--pretrain-epochs", "5", "--cluster-epochs", "2", "--latent-dim", "4", "--no-progress"]

ONTOLOGY = {
    "type0": {"id": "CL:0000236", "synonyms": ["B cells", "CD19+ B"]},
    "type1": {"id": "CL:0000623", "synonyms": ["NK", "CD56+ NK"]},
    "type2": {"id": "CL:0001054", "synonyms": []},
}
NAMES = ["type0", "type1", "type2"]


def test_a_record_over_the_bundle_names_passes():
    check_ontology(ONTOLOGY, NAMES, "here")
    check_ontology({"type1": ONTOLOGY["type1"]}, NAMES, "here")  # not every cluster needs a term


@pytest.mark.parametrize("record, problem", [
    ({"type9": {"id": "CL:0000236"}}, "no cluster is called"),
    ({"type0": {"id": "B cell"}}, "CL:0000236"),
    ({"type0": {"id": "CL:0000236", "synonyms": "B"}}, "list of non-empty names"),
    ({"type0": {"id": "CL:0000236", "synonyms": ["NK"]}, "type1": {"id": "CL:0000623", "synonyms": ["nk"]}},
     "names both"),
    (["type0"], "must be an object"),
])
def test_a_record_that_does_not_fit_is_refused_with_the_reason(record, problem):
    with pytest.raises(BundleError, match=problem):
        check_ontology(record, NAMES, "here")
    with pytest.raises(InvalidParameterError, match=problem):
        check_ontology(record, NAMES, "here", error=InvalidParameterError)


def test_true_labels_become_model_names_by_id_name_or_synonym_and_others_stay():
    labels = ["CL:0000236", "b CELLS", "CD56+  NK", "type2", "Dendritic", None]
    translated = to_model_names(labels, ONTOLOGY)
    assert translated.tolist() == ["type0", "type0", "type1", "type2", "Dendritic", None]
    assert to_model_names(labels, None).tolist() == labels


def test_an_exported_record_reaches_the_bundle_info_and_eval_key(fitted_model, tmp_path):
    bundle = fitted_model.export(tmp_path / "model", cell_ontology=ONTOLOGY)
    loaded = load_bundle(bundle)
    assert loaded.cell_ontology == ONTOLOGY
    assert json.loads((bundle / "bundle.json").read_text())["cell_ontology"] == ONTOLOGY
    runner = CliRunner()
    info = runner.invoke(infer_main, ["info", str(bundle)])
    assert "type1 CL:0000623" in info.output

    adata = synthetic_counts(n_cells=60, seed=9)
    ids = {name: term["id"] for name, term in ONTOLOGY.items()}
    adata.obs["cl_id"] = adata.obs["cell_type"].astype(str).map(ids)
    query = tmp_path / "q.h5ad"
    adata.write_h5ad(query)
    accuracies = []
    for key in ("cell_type", "cl_id"):
        result = runner.invoke(infer_main, ["predict", str(query), "-m", str(bundle), "-o", str(tmp_path / f"{key}.csv"),
                                            "--eval-key", key, "--no-progress"])
        assert result.exit_code == 0, result.output
        assert "share no label" not in result.output
        accuracies.append(float(result.output.split("label accuracy ")[1].split()[0]))
        assert "CL:0000623" in result.output  # the id beside each cluster's name
    assert accuracies[0] == accuracies[1] > 0.9


def test_cluster_term_ids_give_unknown_where_the_record_has_no_term():
    assert cluster_term_ids(ONTOLOGY, NAMES) == ["CL:0000236", "CL:0000623", "CL:0001054"]
    assert cluster_term_ids({"type1": ONTOLOGY["type1"]}, NAMES) == ["unknown", "CL:0000623", "unknown"]
    assert cluster_term_ids(None, NAMES) is None and cluster_term_ids({}, NAMES) is None


@pytest.mark.parametrize("record", [ONTOLOGY, {"type1": ONTOLOGY["type1"]}, None])
def test_predictions_carry_each_cells_cell_ontology_id(fitted_model, tmp_path, record):
    bundle = fitted_model.export(tmp_path / "model", cell_ontology=record)
    query = tmp_path / "q.h5ad"
    synthetic_counts(n_cells=60, seed=9).write_h5ad(query)
    out = tmp_path / "labelled.h5ad"
    result = CliRunner().invoke(infer_main, ["predict", str(query), "-m", str(bundle), "-o", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    obs = ad.read_h5ad(out).obs
    if record is None:
        assert "sccsa_label_ontology_term_id" not in obs
        return
    ids = {name: record.get(name, {"id": "unknown"})["id"] for name in NAMES}
    expected = [("unknown" if label == "unassigned" else ids[label]) for label in obs["sccsa_label"].astype(str)]
    assert obs["sccsa_label_ontology_term_id"].astype(str).tolist() == expected
    assert len(set(expected)) > 1


def test_a_bad_record_fails_export_before_anything_is_written(fitted_model, tmp_path):
    with pytest.raises(InvalidParameterError, match="no cluster is called"):
        fitted_model.export(tmp_path / "model", cell_ontology={"Dendritic": {"id": "CL:0000451"}})
    assert list(tmp_path.iterdir()) == []


def test_sccsa_train_cell_ontology_reaches_the_bundle(synthetic, tmp_path):
    pytest.importorskip("torch")
    from sccsa_train.cli import main as train_main

    data = tmp_path / "ref.h5ad"
    synthetic.write_h5ad(data)
    terms = tmp_path / "terms.json"
    terms.write_text(json.dumps(ONTOLOGY))
    result = CliRunner().invoke(train_main, [str(data), "--labels-key", "cell_type", "--n-genes", "40",
                                             "--cell-ontology", str(terms), "--out", str(tmp_path / "m"), *FAST])
    assert result.exit_code == 0, result.output
    assert load_bundle(tmp_path / "m").cell_ontology == ONTOLOGY


@pytest.mark.parametrize("content, extra, problem", [
    (ONTOLOGY, [], "give --labels-key too"),
    ("{not json", ["--labels-key", "cell_type"], "cannot be read as JSON"),
    ({"Dendritic": {"id": "CL:0000451"}}, ["--labels-key", "cell_type"], "no cluster is called"),
])
def test_sccsa_train_refuses_a_bad_cell_ontology_before_training(synthetic, tmp_path, monkeypatch, content, extra,
                                                                 problem):
    pytest.importorskip("torch")
    from sccsa_train.cli import main as train_main
    from sccsa_train.estimator import SCCSA

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(SCCSA, "fit", no_training)

    data = tmp_path / "ref.h5ad"
    synthetic.write_h5ad(data)
    terms = tmp_path / "terms.json"
    terms.write_text(content if isinstance(content, str) else json.dumps(content))
    result = CliRunner().invoke(train_main, [str(data), *extra, "--cell-ontology", str(terms),
                                             "--out", str(tmp_path / "m"), *FAST])
    assert result.exit_code != 0 and problem in result.output, result.output
    assert not (tmp_path / "m").exists()
