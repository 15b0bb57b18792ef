"""The benchmark scripts' result contract (record fields, method/protocol names, shards merged),
run end to end on two small synthetic datasets with short training."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import sys

import numpy as np
import pytest

from conftest import FAST_TRAINING, REPO, synthetic_counts, with_batches
from sccsa_train.options import STAGE2_STOPS

pytest.importorskip("torch")
pytest.importorskip("leidenalg")

pytestmark = pytest.mark.bench  # run by `make test-slow` (and CI), not by the default run

RECORD_FIELDS = {"dataset", "method", "protocol", "seed", "ari", "nmi", "acc", "seconds"}
# scVI rows come with the bench extra (scvi-tools), which the test install does not hold
SCVI_ROWS = [("scvi_kmeans", "-"), ("scvi_leiden_k", "-")] if importlib.util.find_spec("scvi") else []


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("benchmark_data")
    synthetic_counts(n_cells=150, seed=1).write_h5ad(folder / "tiny_a.h5ad")
    synthetic_counts(n_cells=120, n_clusters=4, seed=2, population_seed=3).write_h5ad(folder / "tiny_b.h5ad")
    return folder


def script(name: str, monkeypatch):
    """A benchmark script as a module, its SCCSA trained with the test suite's short schedule."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    module = importlib.import_module(name)
    from sccsa_train import SCCSA

    monkeypatch.setattr(module, "SCCSA", functools.partial(SCCSA, **FAST_TRAINING))
    return module


def run(module, monkeypatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", [f"benchmarks/{module.__name__}.py", *args])
    module.main()


def records(path) -> list[dict]:
    return json.loads(path.read_text())


def test_clustering_records_follow_the_contract(data_dir, tmp_path, monkeypatch):
    clustering = script("clustering", monkeypatch)
    out = tmp_path / "clustering.json"
    run(clustering, monkeypatch, "--data", str(data_dir), "--seeds", "0", "--protocols", "U", "T", "--out", str(out))

    found = records(out)
    assert all(RECORD_FIELDS <= set(r) for r in found)
    assert {(r["dataset"], r["method"], r["protocol"]) for r in found} == {
        (d, m, p) for d in ("tiny_a", "tiny_b")
        for m, p in [("sccsa", "U"), ("sccsa", "T"), ("leiden_res1", "-"), ("leiden_k", "-"), ("kmeans_pca", "-"),
                     ("logreg", "T"), *SCVI_ROWS]}
    assert all(-1 <= r["ari"] <= 1 and 0 <= r["nmi"] <= 1 and 0 <= r["acc"] <= 1 for r in found)
    assert all(r["torch_threads"] >= 1 and r["stage2_epochs"] >= 1 and r["stage2_stop"] in STAGE2_STOPS
               for r in found if r["method"] == "sccsa")
    transfer = [r for r in found if r["protocol"] == "T"]
    assert sorted(r["n_query"] for r in transfer) == [36, 36, 45, 45]  # the 30 % query, same for sccsa and logreg
    assert all(0 <= r["label_accuracy"] <= 1 and 0 <= r["macro_f1"] <= 1 for r in transfer)
    assert all(0 <= r["unassigned"] <= 1 for r in transfer if r["method"] == "sccsa")
    page = (tmp_path / "clustering.md").read_text()
    assert "sccsa unassigned" in page
    assert "| sccsa U | sccsa T (30 % query) |" in page.replace("dataset | ", "")
    assert json.loads((tmp_path / "clustering_meta.json").read_text())["command"].startswith("python benchmarks/")


def test_label_starts_are_kept_apart_and_shards_merge(data_dir, tmp_path, monkeypatch):
    clustering = script("clustering", monkeypatch)
    main, shard = tmp_path / "clustering.json", tmp_path / "shard.json"
    run(clustering, monkeypatch, "--data", str(data_dir), "--datasets", "tiny_a", "--seeds", "0", "--protocols", "U",
        "--no-baselines", "--out", str(main))
    run(clustering, monkeypatch, "--data", str(data_dir), "--datasets", "tiny_a", "--seeds", "0", "--protocols", "U",
        "--no-baselines", "--variant", "init_labels", "--out", str(shard))
    assert [(r["method"], r["protocol"]) for r in records(shard)] == [("sccsa_init_labels", "U")]

    run(clustering, monkeypatch, "--out", str(main), "--merge", str(shard))
    assert sorted(r["method"] for r in records(main)) == ["sccsa", "sccsa_init_labels"]
    page = (tmp_path / "clustering.md").read_text()
    assert "sccsa U (init labels)" in page and "merged from runs in several processes" in page


def test_protocol_t_candidates_are_compared_by_label_accuracy_per_half(monkeypatch):
    """A T candidate's row: its label accuracy beside the defaults' and logreg's on the same
    datasets and seeds, per half (no training: the page from records)."""
    clustering = script("clustering", monkeypatch)
    monkeypatch.setattr(clustering, "split_of", {"d": "tuning", "e": "confirmation"}.get)
    accuracy = {("d", "sccsa"): 0.8, ("d", "sccsa_latent32"): 0.85, ("d", "logreg"): 0.95,
                ("e", "sccsa"): 0.9, ("e", "sccsa_latent32"): 0.85, ("e", "logreg"): 0.95}
    found = [{"dataset": d, "method": m, "protocol": "T", "seed": 0, "ari": 0.5, "nmi": 0.5, "acc": a,
              "seconds": 1.0, "label_accuracy": a, "macro_f1": a, "n_query": 10} for (d, m), a in accuracy.items()]
    found.append({**found[1], "seed": 1, "label_accuracy": 0.95})  # a seed the defaults lack: left out
    page = clustering.summarise(found)
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in page.splitlines()
            if line.startswith("| sccsa T (30 % query) (latent 32)")}
    tuning, confirmation = (rows[f"sccsa T (30 % query) (latent 32), {half} half"] for half in ("tuning", "confirmation"))
    assert [c.strip(" |") for c in tuning[-4:]] == ["0.850", "0.800", "0.950", "1 of 1"]
    assert [c.strip(" |") for c in confirmation[-4:]] == ["0.850", "0.900", "0.950", "0 of 1"]


def test_every_variant_is_a_valid_setting_with_its_own_column(monkeypatch):
    """Each candidate's settings pass the options table (a misspelt option or value would fail only
    after a long run), differ from the defaults, and get a column name no other variant has."""
    from sccsa_train import SCCSA
    from sccsa_train.options import validate

    clustering = script("clustering", monkeypatch)
    defaults = SCCSA().get_params()
    for name, (params, _) in clustering.VARIANTS.items():
        validate({**defaults, **params})
        assert any(defaults[key] != value for key, value in params.items()), name
    assert len(set(clustering.VARIANT_U_COLUMNS)) == len(clustering.VARIANTS)


def test_merge_without_shards_only_rewrites_the_page(data_dir, tmp_path, monkeypatch):
    clustering = script("clustering", monkeypatch)
    out = tmp_path / "clustering.json"
    run(clustering, monkeypatch, "--data", str(data_dir), "--datasets", "tiny_a", "--seeds", "0", "--protocols", "T",
        "--only", "logreg", "--out", str(out))
    assert [(r["method"], r["protocol"]) for r in records(out)] == [("logreg", "T")]

    def no_training(*args, **kwargs):
        raise AssertionError("--merge must not train")

    monkeypatch.setattr(clustering, "SCCSA", no_training)
    (tmp_path / "clustering.md").unlink()
    measured = json.loads((tmp_path / "clustering_meta.json").read_text())
    run(clustering, monkeypatch, "--out", str(out), "--merge")
    page = (tmp_path / "clustering.md").read_text()
    assert len(records(out)) == 1 and "Label transfer" in page
    # where and when the records were measured is kept; the re-summary is noted beside it
    meta = json.loads((tmp_path / "clustering_meta.json").read_text())
    assert meta["command"] == measured["command"] and meta["date"] == measured["date"]
    assert "Page re-summarised from its records (nothing re-measured)" in page


def test_scvi_rows_on_count_data_only(data_dir, monkeypatch):
    pytest.importorskip("scvi", reason="scvi-tools is in the bench extra, not installed here")
    clustering = script("clustering", monkeypatch)
    adata, labels, k, _ = clustering.load(data_dir / "tiny_a.h5ad")
    assert clustering.scvi_records(adata, labels, k, "lognorm", 0) == []
    found = clustering.scvi_records(adata, labels, k, "counts", 0)
    assert [r["method"] for r in found] == ["scvi_kmeans", "scvi_leiden_k"]
    assert all(r["n_cells"] == 150 and r["epochs"] >= 1 and -1 <= r["ari"] <= 1 for r in found)


def test_diagnose_scores_every_stage(data_dir, tmp_path, monkeypatch):
    diagnose = script("diagnose", monkeypatch)
    out = tmp_path / "diagnose.json"
    run(diagnose, monkeypatch, "--data", str(data_dir), "--datasets", "tiny_a", "--seeds", "0", "--out", str(out))
    found = records(out)
    default = {r["stage"] for r in found if r["genes"] == "ftest-1000"}
    assert default == set(diagnose.STAGES)
    assert {r["genes"] for r in found if r["stage"] == "panel"} == {"ftest-1000", "ftest-2000", "hvg-1000", "hvg-2000"}
    assert all(-1 <= r["ari"] <= 1 and r["split"] == "unsplit" for r in found)
    page = (tmp_path / "diagnose.md").read_text()
    assert "latent_pretrained" in page and "Mean ARI change along the network" in page


def test_latent_probe_scores_every_variant_without_stage_two_and_merges_shards(data_dir, tmp_path, monkeypatch):
    probe = script("latent_probe", monkeypatch)
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    run(probe, monkeypatch, "--data", str(data_dir), "--datasets", "tiny_a", "--seeds", "0", "--out", str(first))
    run(probe, monkeypatch, "--data", str(data_dir), "--datasets", "tiny_b", "--seeds", "0",
        "--variants", "defaults", "--out", str(second))
    found = records(first)
    assert {r["variant"] for r in found} == set(probe.VARIANTS) and all(-1 <= r["ari"] <= 1 for r in found)
    out = tmp_path / "latent_probe.json"
    run(probe, monkeypatch, "--out", str(out), "--merge", str(first), str(second))
    assert len(records(out)) == len(probe.VARIANTS) + 1
    page = (tmp_path / "latent_probe.md").read_text()
    assert "ARI of K-means on the pretrained latent" in page and all(v in page for v in probe.VARIANTS)


def test_kmeans_start_page_records_every_restart_and_scores_each_rule(data_dir, tmp_path, monkeypatch):
    """kmeans_start.py: 20 restarts per fit, each with inertia, silhouette and ARI; the page's rule
    at tolerance 0 picks the lowest inertia, and the library's default tolerance is one of its rules."""
    page_script = script("kmeans_start", monkeypatch)
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    run(page_script, monkeypatch, "--data", str(data_dir), "--datasets", "tiny_a", "--seeds", "0", "--out", str(first))
    run(page_script, monkeypatch, "--data", str(data_dir), "--datasets", "tiny_b", "--seeds", "0", "--out", str(second))
    (record,) = records(first)
    assert len(record["restarts"]) == 20
    assert all(-1 <= r["silhouette"] <= 1 and -1 <= r["ari"] <= 1 for r in record["restarts"])
    lowest = min(record["restarts"], key=lambda r: r["inertia"])
    assert page_script.chosen_ari(record, 0.0) == lowest["ari"]
    from sccsa_train.fit import Schedule

    assert Schedule().kmeans_tolerance in page_script.TOLERANCES
    out = tmp_path / "kmeans_start.json"
    run(page_script, monkeypatch, "--out", str(out), "--merge", str(first), str(second))
    assert len(records(out)) == 2
    page = (tmp_path / "kmeans_start.md").read_text()
    assert "ARI of the chosen restart" in page and page_script.rule_name(0.05) in page


def test_unassigned_page_scores_both_rules_from_one_fit_and_merges_shards(data_dir, tmp_path, monkeypatch):
    """unassigned.py: the reference's most common type held out, both threshold rules scored on the
    same query, the small dataset run with three seeds by default."""
    unassigned = script("unassigned", monkeypatch)
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    run(unassigned, monkeypatch, "--data", str(data_dir), "--datasets", "tiny_a", "--out", str(first))
    run(unassigned, monkeypatch, "--data", str(data_dir), "--datasets", "tiny_b", "--seeds", "0", "--out", str(second))
    found = records(first)
    assert sorted(r["seed"] for r in found) == [0, 1, 2]  # 150 cells: under SMALL
    for r in found:
        assert r["n_unseen"] > 0 and r["n_known"] > 0 and 0 <= r["unseen_auroc"] <= 1
        for rule in unassigned.RULES:
            assert all(0 <= r[f"{rule}:{m}"] <= 1 for m in ("known_unassigned", "known_accuracy", "unseen_unassigned"))
        # about 100 reference cells cannot calibrate the conformal thresholds: nothing unassigned for distance
        assert r["conformal:known_unassigned"] == 0 and r["conformal:unseen_unassigned"] == 0
    out = tmp_path / "unassigned.json"
    run(unassigned, monkeypatch, "--out", str(out), "--merge", str(first), str(second))
    assert len(records(out)) == 4
    page = (tmp_path / "unassigned.md").read_text()
    assert "unseen_unassigned (conformal)" in page and "Seeds run: 3 on 1 dataset(s), 1 on 1 dataset(s)" in page


def test_ablation_shards_merge_into_one_table(data_dir, tmp_path, monkeypatch):
    ablations = script("ablations", monkeypatch)
    first, second = tmp_path / "ablations.json", tmp_path / "seed1.json"
    common = ["--data", str(data_dir), "--datasets", "tiny_b", "--variants", "default", "cc off"]
    run(ablations, monkeypatch, *common, "--seeds", "0", "--out", str(first))
    run(ablations, monkeypatch, *common, "--seeds", "1", "--out", str(second))
    run(ablations, monkeypatch, "--out", str(first), "--merge", str(second))

    merged = records(first)
    assert sorted((r["variant"], r["seed"]) for r in merged) == [("cc off", 0), ("cc off", 1), ("default", 0),
                                                                 ("default", 1)]
    assert all(r["alpha_mean"] == 1.0 for r in merged if r["variant"] == "cc off")
    assert "Seeds run: default: 2 seed(s) on 1 dataset(s); cc off: 2 seed(s) on 1 dataset(s)" in (
        tmp_path / "ablations.md").read_text()


def test_speed_times_every_training_stage(data_dir, monkeypatch):
    speed = script("speed", monkeypatch)
    rows = [speed.train_timed(path)[0] for path in sorted(data_dir.glob("*.h5ad"))]

    assert [r["dataset"] for r in rows] == ["tiny_a", "tiny_b"]
    for row in rows:
        stages = [row[k] for k in ("preprocess_and_genes_s", "pretrain_s", "kmeans_init_s", "cluster_s")]
        assert all(s >= 0 for s in stages)
        assert sum(stages) == pytest.approx(row["seconds"], abs=0.3)  # each rounded to 0.1 s
        assert 1 <= row["cluster_epochs"] <= FAST_TRAINING["cluster_epochs"]
        assert 0.5 < row["ari"] <= 1 and 0 < row["nmi"] <= 1 and "precision" not in row  # scored after the fit
    assert (rows[0]["cells"], rows[1]["cells"]) == (150, 120)


def test_speed_gpu_sections_sit_beside_the_cpu_ones(monkeypatch, tmp_path):
    """--device cuda results are their own sections (``*_cuda``) with the GPU named, each row its
    precision; --device cuda refuses the serving sections (they never train on a GPU)."""
    speed = script("speed", monkeypatch)
    cpu = {"dataset": "tiny", "cells": 100, "genes_in": 50, "seconds": 9.0, "preprocess_and_genes_s": 1.0,
           "pretrain_s": 6.0, "kmeans_init_s": 0.5, "cluster_s": 1.5, "cluster_epochs": 3, "converged": True}
    gpu = [{**cpu, "precision": "32", "seconds": 3.0}, {**cpu, "precision": "bf16-mixed", "seconds": 2.0}]
    stamp = {"commit": "abc", "date": "d", "cpu": "Xeon", "cores": 16, "torch_threads": 16}
    page = speed.summarise({"training": [cpu], "training_cuda": gpu,
                            "measured": {"training": stamp, "training_cuda": {**stamp, "gpu": "NVIDIA H200"}}})
    cpu_part, gpu_part = page.split("## Training wall time (protocol U, default settings, seed 0, GPU)")
    assert "seed 0, CPU)" in cpu_part and "H200" not in cpu_part
    assert "on Xeon (16 cores) with an NVIDIA H200 GPU" in gpu_part and "| tiny | bf16-mixed |" in gpu_part
    assert speed.device_flags("cpu", "32") == [] and speed.device_flags("cuda", "bf16-mixed") == [
        "--device", "cuda", "--precision", "bf16-mixed"]
    assert speed.device_flags("cpu", "bf16-mixed") == ["--precision", "bf16-mixed"]
    # on the CPU, --precisions and --train-options add training-vs-Scanpy rows beside the defaults' first row
    vs = [{"pipeline": "sccsa-train (default settings)", "wall_s": 9.0, "cpu_s": 12.0, "cpu_vs_scanpy": 6.0,
           "wall_vs_scanpy": 4.5},
          {"pipeline": "Scanpy: normalise, HVG, PCA, kNN, Leiden", "wall_s": 2.0, "cpu_s": 2.0, "cpu_vs_scanpy": 1.0,
           "wall_vs_scanpy": 1.0},
          {"pipeline": "sccsa-train --precision bf16-mixed", "wall_s": 7.0, "cpu_s": 9.0, "cpu_vs_scanpy": 4.5,
           "wall_vs_scanpy": 3.5},
          {"pipeline": "sccsa-train --cc off", "wall_s": 8.0, "cpu_s": 11.0, "cpu_vs_scanpy": 5.5,
           "wall_vs_scanpy": 4.0}]
    page = speed.summarise({"training_vs_scanpy": vs, "scanpy_dataset": "tiny"})
    assert "Training costs 6.0× Scanpy's CPU seconds" in page
    assert "`sccsa-train --precision bf16-mixed`: 9.0 CPU-s, 4.5× Scanpy's." in page
    assert "`sccsa-train --cc off`: 11.0 CPU-s, 5.5× Scanpy's." in page
    with pytest.raises(SystemExit):
        run(speed, monkeypatch, "--device", "cuda", "--sections", "training", "cold_start", "--out",
            str(tmp_path / "speed.json"))


def test_pretrain_steps_scores_each_budget_and_the_rule(data_dir, tmp_path, monkeypatch):
    steps = script("pretrain_steps", monkeypatch)
    out = tmp_path / "pretrain_steps.json"
    run(steps, monkeypatch, "--data", str(data_dir), "--datasets", "tiny_b", "--seeds", "0", "--checks", "1", "2",
        "--out", str(out))
    found = records(out)
    # 120 cells in batches of 64 (the test schedule) are 2 steps an epoch: the default (60 epochs) is 120
    # steps, the rule min(1000 steps, 250 epochs) 500
    assert sorted(r["step"] for r in found) == [1, 2, 120, 500]
    assert all(-1 <= r["ari"] <= 1 and r["reconstruction"] > 0 for r in found)
    assert "## ARI by pretraining budget" in (tmp_path / "pretrain_steps.md").read_text()


def test_speed_training_scale_records_the_leiden_reach(monkeypatch, tmp_path):
    """Each training-scale row says how many clusters the consensus's Leiden members ended with,
    read from the fit's report, and the page says at which sizes they missed K."""
    speed = script("speed", monkeypatch)
    monkeypatch.setattr(speed, "SCALE_BUDGET", ("--pretrain-max-steps", "2", "--cluster-max-steps", "2",
                                                "--n-genes", "30"))
    source = synthetic_counts(n_cells=120, seed=5)
    rows = speed.training_scale(source, source.obs["cell_type"].to_numpy(), 3, [300], tmp_path)
    assert rows[0]["cells"] == 300 and rows[0]["leiden_clusters"] >= 3 and not list(tmp_path.glob("resampled_*"))
    made = [{**rows[0], "cells": 100, "leiden_clusters": 3}, {**rows[0], "cells": 1000, "leiden_clusters": 136}]
    page = speed.summarise({"training_scale": made})
    assert "came down to K = 3 clusters at all sizes but 1,000" in page and "| 136 |" in page
    assert "seed 0, K = 3 and step budgets" in page  # the K the rows trained with, read from their command


def test_speed_training_vs_scanpy_times_an_earlier_source_tree_beside_today(data_dir, monkeypatch, tmp_path):
    """--train-baseline-src: the sccsa-train of another source tree (here this one) is a third row,
    and the page names its commit and the difference; without it the page says nothing of it."""
    speed = script("speed", monkeypatch)
    rows = speed.training_vs_scanpy(data_dir / "tiny_b.h5ad", tmp_path, repeats=1, baseline_src=REPO)
    commit = speed.source_commit(REPO)
    assert [r["pipeline"] for r in rows][2] == f"sccsa-train at {commit}"
    assert all(r["cpu_s"] > 0 for r in rows)
    assert all(0 <= r["system_s"] <= r["cpu_s"] and r["page_faults"] > 0 for r in rows)  # where the CPU time went
    page = speed.summarise({"training_vs_scanpy": rows, "scanpy_dataset": "tiny_b"})
    assert "| system_s | page_faults |" in page
    assert f"from the source of commit {commit}, with the same packages, in the same run" in page
    assert "source of commit" not in speed.summarise({"training_vs_scanpy": rows[:2], "scanpy_dataset": "tiny_b"})


def test_speed_section_run_keeps_sections_written_meanwhile(tmp_path, monkeypatch):
    speed = script("speed", monkeypatch)
    out = tmp_path / "speed.json"
    stamp = {"commit": "a", "date": "d", "cpu": "c"}
    before = {"measured": {"streaming": stamp, "cold_start": stamp}, "streaming": [1], "cold_start": {"s": 1}}
    # another section run finished while this one measured streaming again
    out.write_text(json.dumps({**before, "cold_start": {"s": 2}, "measured": {**before["measured"],
                                                                                "cold_start": {**stamp, "commit": "b"}}}))
    mine = {**before, "streaming": [2], "measured": {**before["measured"], "streaming": {**stamp, "commit": "c"}}}
    merged = speed._onto_latest(out, before, mine)
    assert merged["streaming"] == [2] and merged["cold_start"] == {"s": 2}
    assert merged["measured"]["streaming"]["commit"] == "c" and merged["measured"]["cold_start"]["commit"] == "b"


def test_a_section_run_footer_names_what_it_measured(tmp_path, monkeypatch):
    speed = script("speed", monkeypatch)
    out = tmp_path / "speed.json"
    out.write_text("{}")
    monkeypatch.setattr(sys, "argv", ["benchmarks/speed.py", "--sections", "streaming", "graph_forms"])
    speed.finish(out, "Speed", "body", sections=["streaming", "graph_forms"])
    page = out.with_suffix(".md").read_text()
    assert "This run measured graph_forms, streaming; the other sections keep" in page
    speed.finish(out, "Speed", "body")  # a full run: its commit and threads are the whole page's
    assert "This run measured" not in out.with_suffix(".md").read_text()
    stamp = {"commit": "a", "date": "d", "cpu": "c"}
    assert speed._measured({"measured": {"x": {**stamp, "torch_threads": 1}}}, "x").endswith(
        "on c, 1 torch thread(s) in the measuring process.")
    assert speed._measured({"measured": {"x": stamp}}, "x") == " Measured at commit a, d, on c."  # older stamps


def test_speed_streams_each_size_to_both_outputs_and_times_cold_start(bundle_dir, monkeypatch, tmp_path):
    import scipy.sparse as sp

    speed = script("speed", monkeypatch)
    cells = synthetic_counts(n_cells=50, seed=4)
    rows = speed.streaming(speed.INFER_BIN, bundle_dir, sp.csr_matrix(cells.X), list(cells.var_names), [300, 700],
                           tmp_path)
    assert [(r["cells"], r["output"]) for r in rows] == [(300, ".parquet"), (300, ".h5ad"), (700, ".parquet"),
                                                         (700, ".h5ad")]
    assert all(r["labelled"] == r["cells"] and r["peak_rss_mib"] > 0 and r["cpu_seconds"] > 0 for r in rows)
    assert not list(tmp_path.glob("replicated_*")) and not list(tmp_path.glob("labels_*"))  # scratch cleaned up
    timings = speed.cold_start(speed.INFER_BIN, bundle_dir, tmp_path, repeats=1)
    assert set(timings) == {"sccsa_infer_help_s", "wrong_path_error_s", "import_and_session_s", "sccsa_infer_verify_s"}
    page = speed.summarise({"streaming": rows, "cold_start": timings})
    assert "2.33× the cells" in page and "wrong input path" in page


def test_graph_forms_count_the_autocorrelation_multiply_adds_and_time_both(fitted_model, monkeypatch, tmp_path):
    import scipy.sparse as sp

    from sccsa_train.sacc import four_step_macs

    speed = script("speed", monkeypatch)
    cells = synthetic_counts(n_cells=50, seed=4)
    # the baseline install (the serving code before issue 15) stood in for by this one
    rows = speed.graph_forms([fitted_model], speed.INFER_BIN, sp.csr_matrix(cells.X), list(cells.var_names), 300,
                             tmp_path, repeats=1, baseline_bin=speed.INFER_BIN)
    by_form = {row["form"]: row for row in rows}
    assert set(by_form) == {"four_step", "dense", speed.BASELINE_FORM} and all(r["cpu_seconds"] > 0 for r in rows)
    assert by_form[speed.BASELINE_FORM]["macs_per_cell"] == by_form["dense"]["macs_per_cell"]
    d = len(fitted_model.genes_)
    four_step = four_step_macs(d)
    # the rest of the graph is the same, so the counts differ by exactly the autocorrelation's
    assert by_form["dense"]["macs_per_cell"] - by_form["four_step"]["macs_per_cell"] == 3 * d * d - four_step
    page = speed.summarise({"graph_forms": rows, "baseline_install": "an environment with pyarrow",
                            "forms_install": "/venv/bin/sccsa-infer (an environment with pyarrow)"})
    assert "fewer multiply-adds" in page and f"serving code of {speed.BASELINE_COMMIT}" in page
    assert "The other rows: /venv/bin/sccsa-infer" in page
    without = speed.summarise({"graph_forms": [r for r in rows if r["form"] != speed.BASELINE_FORM]})
    assert "fewer multiply-adds" in without and speed.BASELINE_COMMIT not in without
    assert not list(tmp_path.glob("forms*"))


def test_batch_page_records_and_page(tmp_path, monkeypatch):
    """batch.py on a synthetic 3-donor set: with and without the key, the corrected baselines, and
    protocol T for every held-out donor, with the mixing scores; the page has every table."""
    batch = script("batch", monkeypatch)
    (tmp_path / "data").mkdir()
    donors = with_batches(synthetic_counts(n_cells=180, seed=1), ["a", "b", "c"], {"a": 1.0, "b": 6.0, "c": 3.0})
    donors.write_h5ad(tmp_path / "data" / "tiny_donors.h5ad")
    monkeypatch.setattr(batch, "DATASETS", {"tiny_donors": ("tuning", tmp_path / "data")})
    out = tmp_path / "batch.json"
    run(batch, monkeypatch, "--datasets", "tiny_donors", "--seeds", "0", "--only", "sccsa", "heldout", "baselines",
        "--out", str(out))

    found = records(out)
    assert all(RECORD_FIELDS <= set(r) for r in found)
    assert {(r["method"], r["protocol"]) for r in found} == {
        ("sccsa", "U"), ("sccsa_batch", "U"), ("sccsa_batch", "T:a"), ("sccsa_batch", "T:b"), ("sccsa_batch", "T:c"),
        *((m, "-") for m in ("kmeans_pca", "leiden_k", "harmony_kmeans", "harmony_leiden_k", "combat_kmeans",
                             "combat_leiden_k"))}
    clustering = [r for r in found if not r["protocol"].startswith("T")]
    assert all(0 <= r["batch_nmi"] <= 1 and 0 <= r["batch_entropy"] <= 1 for r in clustering)
    heldout = [r for r in found if r["protocol"].startswith("T")]
    assert sum(r["n_query"] for r in heldout) == 180 and all("in_sample_ari" in r for r in heldout)
    assert all(0 <= r["represented"] <= 1 and {"heldout_ari_represented", "in_sample_ari_represented", "others_ari",
                                               "others_in_sample_ari"} <= set(r) for r in heldout)
    # each tiny donor holds a type the others lack entirely, and none of the others' types
    assert all(r["in_majority"] is None and r["distance_ratio"] is None and 0 <= r["others_in_majority"] <= 1
               for r in heldout)
    page = out.with_suffix(".md").read_text()
    for title in ("Cell-type ARI", "Batch NMI of the clusters", "kNN batch entropy", "Protocol T by donor"):
        assert title in page
    # a shard of held-out runs only (--only heldout) still gets its page
    assert "Protocol T by donor" in batch.summarise(heldout) and "Cell-type ARI" not in batch.summarise(heldout)


def test_represented_types_flag_what_the_training_donors_barely_hold(monkeypatch):
    """A held-out donor's type counts as represented when the other donors hold at least a quarter
    of the donor's share of it; an absent type never is."""
    batch = script("batch", monkeypatch)
    reference = np.array(["a"] * 80 + ["b"] * 4 + ["c"] * 16)      # shares 0.80, 0.04, 0.16
    query = np.array(["a"] * 40 + ["b"] * 20 + ["c"] * 30 + ["d"] * 10)  # shares 0.40, 0.20, 0.30, 0.10
    shared = batch.represented_types(reference, query)
    assert dict(zip(*np.unique(query[shared], return_counts=True))) == {"a": 40, "c": 30}  # b: 0.04 < 0.20 / 4


def test_transfer_diagnosis_compares_the_held_out_donor_with_the_training_donors(monkeypatch):
    """Majority clusters and typical distances come from the training donors only; a type they
    lack is left out of the held-out side."""
    batch = script("batch", monkeypatch)
    truth = np.array(["a", "a", "a", "b", "b", "b", "a", "a", "b", "c"])
    clusters = np.array([0, 0, 1, 2, 2, 2, 0, 1, 0, 1])
    distances = np.array([1.0, 1.0, 3.0, 2.0, 2.0, 2.0, 2.0, 1.0, 6.0, 9.0])
    query = np.array([False] * 6 + [True] * 4)
    found = batch.transfer_diagnosis(truth, clusters, distances, query)
    # training: a -> cluster 0 (2 of 3), b -> 2 (3 of 3): 5 of 6; held out: a0 yes, a1 no, b0 no; c left out
    assert found == {"in_majority": round(1 / 3, 4), "others_in_majority": round(5 / 6, 4),
                     "distance_ratio": 2.0}  # ratios 2/1, 1/1, 6/2: median 2
    alone = batch.transfer_diagnosis(truth, clusters, distances, query & (truth == "c"))
    assert alone["in_majority"] is None and alone["distance_ratio"] is None


def test_pseudolabel_page_scores_both_rules_with_and_without_harmony(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    pseudolabels = importlib.import_module("pseudolabels")  # trains nothing: no short schedule to patch in
    with_batches(synthetic_counts(n_cells=150, seed=1), ["a", "b"], {"a": 1.0, "b": 6.0}).write_h5ad(tmp_path / "d.h5ad")
    synthetic_counts(n_cells=120, seed=2).write_h5ad(tmp_path / "e.h5ad")
    out = tmp_path / "pseudolabels.json"
    run(pseudolabels, monkeypatch, "--data", str(tmp_path), "--datasets", "d", "e", "--seeds", "0", "--out", str(out))
    found = records(out)
    assert {(r["dataset"], r["correction"]) for r in found} == {("d", "none"), ("d", "harmony"), ("e", "none")}
    assert all(r["members_min"] <= r["members_median"] <= r["members_max"] and -1 <= r["most_agreeing"] <= 1
               for r in found)
    assert "Harmony-corrected PCs" in out.with_suffix(".md").read_text()


def test_k_estimate_page_reads_every_rule_and_merges_shards(tmp_path, monkeypatch):
    """k_estimate.py: every rule per dataset and seed (the default equal to what ``-k auto`` returns,
    checked inside the script), the Harmony row only where a donor column exists, errors by half,
    and shards joined by --merge."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    k_estimate = importlib.import_module("k_estimate")  # trains nothing
    monkeypatch.setattr(k_estimate, "split_of", {"d": "tuning", "e": "confirmation"}.get)
    with_batches(synthetic_counts(n_cells=150, seed=1), ["a", "b"], {"a": 1.0, "b": 6.0}).write_h5ad(tmp_path / "d.h5ad")
    synthetic_counts(n_cells=120, n_clusters=4, seed=2).write_h5ad(tmp_path / "e.h5ad")
    shard, out = tmp_path / "shard.json", tmp_path / "k.json"
    run(k_estimate, monkeypatch, "--data", str(tmp_path), "--datasets", "d", "--seeds", "0", "--out", str(shard))
    run(k_estimate, monkeypatch, "--data", str(tmp_path), "--datasets", "e", "--seeds", "0", "1", "--out", str(out))
    run(k_estimate, monkeypatch, "--out", str(out), "--merge", str(shard))
    found = records(out)
    assert {(r["dataset"], r["seed"]) for r in found} == {("d", 0), ("e", 0), ("e", 1)}
    for record in found:
        rules = record["estimates"]
        assert rules["default"] == record["estimated_k"] and {"previous", "median, K <= 20"} <= set(rules)
        assert (k_estimate.HARMONY in rules) == (record["dataset"] == "d")
        assert all(2 <= value <= 40 for value in rules.values())
    page = out.with_suffix(".md").read_text()
    for title in ("## Estimates", "## With a batch column (donor)", "## Absolute error by rule and half"):
        assert title in page


def test_candidate_settings_are_compared_with_the_defaults_by_half(monkeypatch):
    clustering = script("clustering", monkeypatch)
    scores = {("pollen_simlr_log", "sccsa"): 0.70, ("pollen_simlr_log", "sccsa_starts3"): 0.90,
              ("yan_embryo_rpkm", "sccsa"): 0.90, ("yan_embryo_rpkm", "sccsa_starts3"): 0.80,
              ("pollen_simlr_log", "kmeans_pca"): 0.60, ("yan_embryo_rpkm", "kmeans_pca"): 0.50,
              ("goolam", "sccsa"): 0.95, ("goolam", "kmeans_pca"): 0.90}  # the candidate did not run on goolam
    records = [{"dataset": dataset, "method": method, "protocol": "-" if method == "kmeans_pca" else "U",
                "seed": 0, "ari": ari, "nmi": ari, "acc": ari, "seconds": 1.0}
               for (dataset, method), ari in scores.items()]
    page = clustering.summarise(records)
    # the same fits' seconds (1 s each), and no stage-2 epochs in these records
    assert "| sccsa U (3 starts, ≤ 1000 steps), tuning half | 1 | 1 / 1 | – | 0.900 | 0.700 | 0.600 | 1 of 1 |" in page
    assert "| sccsa U (3 starts, ≤ 1000 steps), confirmation half | 1 | 1 / 1 | – | 0.800 | 0.900 | 0.500 | 0 of 1 |" in page
    epochs = [dict(r, stage2_epochs=5 if r["method"] == "sccsa_starts3" else 3) for r in records]
    assert "| sccsa U (3 starts, ≤ 1000 steps), tuning half | 1 | 1 / 1 | 5 / 3 | 0.900 |" in clustering.summarise(epochs)
    # the headline compares only what ran on every dataset
    assert "Mean ARI over the 3 datasets every one of these ran on: sccsa U 0.850, best baseline" in page


def test_installs_are_timed_with_their_own_code(monkeypatch):
    speed = script("speed", monkeypatch)
    monkeypatch.setenv("PYTHONPATH", "/a/checkout/inference")  # would make any install import that checkout
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    env = speed.install_env()
    assert "PYTHONPATH" not in env and env["OMP_NUM_THREADS"] == "1"


def test_stage2_stop_keeps_every_epochs_labels_and_reads_each_rule_off_one_run(data_dir, tmp_path, monkeypatch):
    stop = script("stage2_stop", monkeypatch)
    out = tmp_path / "stage2_stop.json"
    run(stop, monkeypatch, "--data", str(data_dir), "--datasets", "tiny_b", "--seeds", "0", "--out", str(out))
    [record] = records(out)
    epochs = record["epochs"]
    assert 1 <= len(epochs) <= FAST_TRAINING["cluster_epochs"] and all(-1 <= e["ari"] <= 1 for e in epochs)
    assert "no new low in 10 epochs" in (tmp_path / "stage2_stop.md").read_text()
    # the rules, on label changes made up for the purpose: each stops in the first epoch it holds
    hovering = [0.05, 0.02, 0.008, 0.006] + [0.007] * 10 + [0.0005]
    assert stop.RULES["< 0.1 % changed (the default before)"](hovering) == 14
    assert stop.RULES["< 0.5 % changed"](hovering) == 14 and stop.RULES["< 0.5 % changed"]([0.01, 0.004]) == 1
    assert stop.no_new_low(hovering) == 13  # epochs 4..13 never went below 0.006
    assert stop.no_new_low([0.05, 0.0009, 0.0]) == 1 and stop.no_new_low([0.05, 0.02]) == 1  # else: the last



def test_step_profile_times_every_configuration_and_restores_torch(data_dir, tmp_path, monkeypatch):
    import torch

    profile = script("step_profile", monkeypatch)
    out = tmp_path / "step_profile.json"
    def settings():
        return (torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory,
                torch.backends.cudnn.benchmark)

    before = settings()
    run(profile, monkeypatch, "--data", str(data_dir), "--dataset", "tiny_a", "--device", "cpu", "--steps", "3",
        "--warmup", "1", "--repeats", "2", "--out", str(out))
    assert settings() == before
    found = records(out)
    timed = {r["config"]: r for r in found if r["kind"] == "config"}
    assert set(timed) == set(profile.CONFIGS) and all(len(r["runs"]) == 2 and r["ms_per_step"] > 0
                                                      and r["warmup_s"] > 0 for r in timed.values())
    assert "torch.compile" in timed  # issue 14: the compiled network is timed beside the eager one
    operators = [r for r in found if r["kind"] == "operator"]
    assert 0 < len(operators) <= profile.TOP_OPERATORS and all(r["cpu_ms_per_step"] >= 0 for r in operators)
    [busy] = [r for r in found if r["kind"] == "busy"]
    assert busy["cpu_ms_per_step"] > 0 and busy["device_ms_per_step"] == 0  # on a CPU nothing runs on a device
    page = (tmp_path / "step_profile.md").read_text()
    assert "## CPU" in page and all(name in page for name in profile.CONFIGS)
