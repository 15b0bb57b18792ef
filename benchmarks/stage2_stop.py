"""When should stage 2 stop? The partition after every epoch, and what each stopping rule would give (issue 14).

Before the ``patience`` option stage 2 stopped only when fewer than ``tol`` (0.1 %) of the labels
changed in an epoch, or at ``cluster_epochs`` (100). On the larger shared sets it ran into that cap
with ~0.5 % of the cells changing cluster every epoch: most of their fit time. For every dataset and
seed the default model is fitted once with ``patience=0`` (the stop before), and the labels after
every stage-2 epoch are kept (the fit is unchanged: the labels are copied as stage 2 computes them).
A stopping rule only cuts that run short, so the labels it would return are those of the epoch it
stops in; each rule is read off the same run. The ARI against the true labels is computed after the
fit and steers nothing; the rules were fixed in advance (:data:`RULES`), not fitted to these
numbers. The last, "no new low in 10 epochs", is the default since this page measured it
(:func:`sccsa_train.fit.settled`).

    python benchmarks/stage2_stop.py --datasets worm_neuron human_kidney_top2000 --out /tmp/s2_a.json
    python benchmarks/stage2_stop.py --datasets cbmc_citeseq_top2000 --out /tmp/s2_b.json
    python benchmarks/stage2_stop.py --merge /tmp/s2_a.json /tmp/s2_b.json
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common import (Timer, datasets, finish, load, markdown_table, mean_sd, merge_or_resume, page_parser, score,
                    split_of, training_threads, write_json)
from sccsa_train import SCCSA
from sccsa_train import fit as fit_module
from sccsa_train.options import default

PATIENCE = default("patience")  # the patience rule as the default runs it
TOL = default("tol")  # the stop before it: fewer than this fraction of the labels changed
DEFAULT_SCHEDULE = fit_module.Schedule()


def _first(changes: list[float], stop: Callable[[int], bool]) -> int:
    """The first epoch at which ``stop`` holds, else the last epoch run."""
    return next((epoch for epoch in range(len(changes)) if stop(epoch)), len(changes) - 1)


def below(tol: float) -> Callable[[list[float]], int]:
    """Stop in the first epoch in which fewer than ``tol`` of the labels changed (today's rule at 0.001)."""
    return lambda changes: _first(changes, lambda e: changes[e] < tol)


def no_new_low(changes: list[float]) -> int:
    """The default stop, as stage 2 decides it (:func:`sccsa_train.fit._stop_reason` with the
    default schedule): the fraction of changed labels has not gone below its earlier minimum for
    :data:`PATIENCE` epochs, or fewer than :data:`TOL` changed."""
    epochs = [{"label_change": change} for change in changes]
    return _first(changes, lambda e: fit_module._stop_reason(epochs[: e + 1], DEFAULT_SCHEDULE, True, False) != "epochs")


RULES: dict[str, Callable[[list[float]], int]] = {
    f"< {100 * TOL:g} % changed (the default before)": below(TOL),
    "< 0.5 % changed": below(0.005),
    f"no new low in {PATIENCE} epochs (the default)": no_new_low,
}


def run(path: Path, seed: int) -> dict[str, Any]:
    """One default fit with every stage-2 epoch's labels kept; their scores against the truth."""
    adata, truth, k, kind = load(path)
    kept: list[np.ndarray] = []
    change = fit_module._label_change

    def keep(old: np.ndarray, new: np.ndarray, workers: Any) -> float:
        kept.append(new.copy())
        return change(old, new, workers)

    fit_module._label_change = keep
    try:
        with Timer() as timer:
            model = SCCSA(k, input_kind=kind, random_state=seed, progress=False, patience=0).fit(adata)
    finally:
        fit_module._label_change = change
    history = model.history_
    rows = model.labels_ >= 0  # stage 2 labels the cells that passed QC (the others get −1)
    epochs = [{"epoch": e["epoch"], "label_change": e["label_change"], "seconds": round(e["seconds"], 2),
               **{key: value for key, value in score(truth[rows], labels).items() if key != "acc"}}
              for e, labels in zip(history.cluster, kept)]
    final = score(truth[rows], model.labels_[rows])
    if abs(final["ari"] - epochs[-1]["ari"]) > 1e-9:
        raise SystemExit(f"{path.stem} seed {seed}: the last epoch's labels are not the fit's")
    print(f"{path.stem} seed {seed}: {len(epochs)} epochs, ARI {final['ari']}", flush=True)
    return {"dataset": path.stem, "seed": seed, "seconds": round(timer.seconds, 1),
            "pretrain_s": round(history.seconds["pretrain"], 1), "cluster_s": round(history.seconds["cluster"], 1),
            "converged": history.converged, "epochs": epochs, "torch_threads": training_threads()}


def rule_rows(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per record and rule: the epoch it stops in, that epoch's ARI/NMI and the stage-2 time it takes."""
    rows = []
    for record in records:
        epochs = record["epochs"]
        changes = [e["label_change"] for e in epochs]
        total = sum(e["seconds"] for e in epochs)
        for rule, stop in RULES.items():
            at = stop(changes)
            rows.append({"dataset": record["dataset"], "seed": record["seed"], "rule": rule, "epochs": at + 1,
                         "ari": epochs[at]["ari"], "nmi": epochs[at]["nmi"],
                         "stage2_share": sum(e["seconds"] for e in epochs[: at + 1]) / max(total, 1e-9),
                         "fit_s": record["seconds"] - total + sum(e["seconds"] for e in epochs[: at + 1])})
    return pd.DataFrame(rows)


def summarise(records: list[dict[str, Any]]) -> str:
    frame = rule_rows(records)
    frame["half"] = frame["dataset"].map(split_of)
    table = []
    for (dataset, half), group in frame.groupby(["dataset", "half"], sort=False):
        row = {"dataset": dataset, "half": half, "seeds": group["seed"].nunique()}
        for rule in RULES:
            part = group[group["rule"] == rule]
            row[f"{rule}: epochs"] = f"{part['epochs'].mean():.0f}"
            row[f"{rule}: ARI"] = mean_sd(part["ari"])
            row[f"{rule}: fit s"] = f"{part['fit_s'].mean():.0f}"
        table.append(row)
    means = frame.groupby("rule", sort=False)[["ari", "nmi", "epochs", "fit_s"]].mean()
    lines = "; ".join(f"{rule}: ARI {means.loc[rule, 'ari']:.3f}, NMI {means.loc[rule, 'nmi']:.3f}, "
                      f"{means.loc[rule, 'epochs']:.0f} epochs, fit {means.loc[rule, 'fit_s']:.0f} s"
                      for rule in RULES)
    return ("Protocol U, default settings but `patience=0`, K = number of true labels. Each fit runs stage 2 to "
            f"its cap (100 epochs, or < {100 * TOL:g} % changed); every epoch's labels are scored after the fit. Rules: "
            f"{', '.join(RULES)} (the last also stops where the first does). `fit s`: the fit's wall seconds "
            "had it stopped there (its stage-2 epochs' own seconds removed after the stop). Means over "
            f"every dataset and seed: {lines}.\n\n" + markdown_table(pd.DataFrame(table).set_index("dataset")))


def _key(record: dict[str, Any]) -> tuple:
    return record["dataset"], record["seed"]


def main() -> None:
    parser = page_parser(__doc__, "stage2_stop")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    title = "Stage 2: when to stop"
    records = merge_or_resume(args, title, summarise, _key)
    if records is None:
        return
    done = {_key(r) for r in records}
    for path in datasets(args.data, args.datasets):
        for seed in args.seeds:
            if (path.stem, seed) not in done:
                records.append(run(path, seed))
                write_json(args.out, records)
    finish(args.out, title, summarise(records))


if __name__ == "__main__":
    main()
