"""Which K-means restart should start stage 2? Inertia against silhouette on the pretrained latent (issue 13).

Stage 2 starts from K-means at K on the pretrained latent and barely moves it (diagnose page), so a
restart that lands in the wrong local optimum decides the result (Zeisel's collapsed seed). For
every dataset and seed the defaults are fitted with stage 2 off (``cluster_epochs=0``); on that
latent 20 K-means restarts (:func:`sccsa_train.kmeans_restarts.kmeans_restarts`, the seed as
random state) are each recorded with inertia, silhouette and ARI, and the page scores the rules
"highest silhouette among restarts within a tolerance of the lowest inertia" (tolerance 0 is plain
K-means). True labels only score; the rule is chosen on the tuning half of ``benchmarks/split.json``
and read on the confirmation half.

    python benchmarks/kmeans_start.py --datasets goolam --seeds 0
    python benchmarks/kmeans_start.py --half tuning --out /tmp/kstart_tuning.json
    python benchmarks/kmeans_start.py --merge /tmp/kstart_tuning.json /tmp/kstart_conf.json
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
import pandas as pd

from common import (datasets, finish, load, markdown_table, mean_sd, merge_or_resume, page_parser, score,
                    split_datasets, split_of, training_threads, write_json)
from sccsa_train import SCCSA
from sccsa_train.fit import Schedule
from sccsa_train.kmeans_restarts import Restart, choose_restart, kmeans_restarts, near_lowest, score_silhouettes

TOLERANCES = (0.0, 0.005, 0.01, 0.02, 0.05, float("inf"))


def _key(record: dict[str, Any]) -> tuple:
    return record["dataset"], record["seed"]


def probe(adata, truth: np.ndarray, k: int, kind: str, seed: int) -> dict[str, Any]:
    """Fit the defaults with stage 2 off; record every K-means restart of the pretrained latent."""
    started = time.perf_counter()
    model = SCCSA(k, input_kind=kind, random_state=seed, progress=False, cluster_epochs=0).fit(adata)
    fitted = time.perf_counter()
    latent = model.fitted().state.latent.astype(np.float64)
    truth = truth[model._fit_rows]
    schedule = Schedule()
    restarts = kmeans_restarts(latent, k, schedule.kmeans_n_init, seed)
    score_silhouettes(latent, restarts, seed, schedule.silhouette_cells)
    return {"fit_ari": score(truth, model.fitted().state.labels)["ari"],
            "restarts": [{"inertia": round(r.inertia, 4), "silhouette": round(r.silhouette, 5),
                          "ari": score(truth, r.labels)["ari"]} for r in restarts],
            "fit_seconds": round(fitted - started, 1), "restart_seconds": round(time.perf_counter() - fitted, 1),
            "torch_threads": training_threads()}


def rule_name(tolerance: float) -> str:
    if tolerance == 0:
        return "lowest inertia (K-means)"
    if np.isinf(tolerance):
        return "highest silhouette, any restart"
    return f"highest silhouette within {tolerance:.1%} of the lowest inertia"


def chosen_ari(record: dict[str, Any], tolerance: float) -> float:
    restarts = [Restart(np.empty(0), np.empty(0), r["inertia"], r["silhouette"]) for r in record["restarts"]]
    chosen = choose_restart(near_lowest(restarts, tolerance))
    return record["restarts"][next(i for i, r in enumerate(restarts) if r is chosen)]["ari"]


def summarise(records: list[dict[str, Any]]) -> str:
    rows = []
    for record in records:
        for tolerance in TOLERANCES:
            rows.append({"dataset": record["dataset"], "seed": record["seed"], "rule": rule_name(tolerance),
                         "ari": chosen_ari(record, tolerance)})
    frame = pd.DataFrame(rows)
    rules = [rule_name(t) for t in TOLERANCES]
    per_seed = frame.pivot_table(index="dataset", columns="rule", values="ari", aggfunc=list)
    table = pd.DataFrame({r: per_seed[r].map(lambda xs: mean_sd(pd.Series(xs))) for r in rules},
                         index=per_seed.index)
    table.insert(0, "half", [split_of(d) for d in table.index])
    table = table.sort_values(["half", "dataset"], ascending=[False, True])
    means = frame.groupby(["rule", "dataset"])["ari"].mean().unstack("rule")
    worst = frame.groupby(["rule", "dataset"])["ari"].std().unstack("rule")
    summary = []
    for half in ("tuning", "confirmation"):
        names = [d for d in split_datasets(half) if d in means.index]
        row = {"dataset": f"**mean, {half} half** ({len(names)} datasets)", "half": half}
        for rule in rules:
            ahead = "" if rule == rules[0] else \
                f" (ahead on {int((means.loc[names, rule] > means.loc[names, rules[0]] + 1e-9).sum())}, " \
                f"behind on {int((means.loc[names, rule] < means.loc[names, rules[0]] - 1e-9).sum())})"
            row[rule] = f"**{means.loc[names, rule].mean():.3f}**{ahead}" if names else "–"
        summary.append(row)
    summary.append({"dataset": "**largest seed sd**", "half": "",
                    **{rule: f"{worst[rule].max():.3f}" for rule in rules}})
    body = pd.concat([table, pd.DataFrame(summary).set_index("dataset")])
    seeds = frame.groupby("dataset")["seed"].nunique()
    distinct = np.mean([len({round(r["inertia"], 2) for r in rec["restarts"]}) for rec in records])
    return ("Protocol U, K = number of true labels, the defaults fitted with stage 2 off. ARI of the K-means restart "
            "each rule picks among the same 20 restarts of the pretrained latent (mean ± sd over seeds; "
            f"seeds per dataset: {seeds.min()}–{seeds.max()}). On average {distinct:.1f} of the 20 restarts end "
            "at distinct inertias. 'ahead/behind on' counts datasets against plain K-means (lowest inertia).\n\n"
            f"## ARI of the chosen restart\n\n{markdown_table(body)}")


def main() -> None:
    parser = page_parser(__doc__, "kmeans_start")
    parser.add_argument("--half", choices=["tuning", "confirmation"], help="only the datasets of this half")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    title = "Choosing the K-means start of stage 2"
    records = merge_or_resume(args, title, summarise, _key)
    if records is None:
        return
    done = {_key(r) for r in records}
    names = args.datasets or (split_datasets(args.half) if args.half else None)
    for path in datasets(args.data, names):
        adata, truth, k, kind = load(path)
        for seed in args.seeds:
            if (path.stem, seed) in done:
                continue
            record = {"dataset": path.stem, "split": split_of(path.stem), "seed": seed,
                      **probe(adata, truth, k, kind, seed)}
            records.append(record)
            print({key: value for key, value in record.items() if key != "restarts"}, flush=True)
            write_json(args.out, records)
    finish(args.out, title, summarise(records))


if __name__ == "__main__":
    main()
