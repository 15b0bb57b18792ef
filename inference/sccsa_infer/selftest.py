"""Re-run the cells stored in a bundle at export time and compare with the recorded outputs."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from .bundle import SELFTEST_FILE
from .errors import BundleError

LATENT_ATOL = 1e-4
LATENT_RTOL = 1e-4


def run_selftest(predictor: Any) -> dict[str, Any]:
    """Run ``selftest.npz`` through ``predictor`` (a :class:`~sccsa_infer.predictor.Predictor`).

    The stored cells go through the same gene-name alignment as any query (bundles exported
    before the gene names were stored are run in panel order, and the report says so).
    Raises :class:`BundleError` if the genes do not match, the labels differ or the latent
    coordinates differ by more than ``LATENT_ATOL + LATENT_RTOL * |expected|``.
    """
    bundle = predictor.bundle
    if SELFTEST_FILE not in bundle.members:
        raise BundleError(f"{bundle.source} has no {SELFTEST_FILE}; re-export it with this sccsa version.")
    try:
        with np.load(io.BytesIO(bundle.members[SELFTEST_FILE]), allow_pickle=False) as stored:
            case = {key: stored[key] for key in ("counts", "total_counts", "label", "latent")}
            genes = [str(g) for g in stored["genes"]] if "genes" in stored.files else None
    except (ValueError, OSError, KeyError) as exc:
        raise BundleError(f"{bundle.source}: {SELFTEST_FILE} is unreadable ({exc}); the bundle is corrupt.") from None
    if genes is None:
        outputs = predictor.run(case["counts"], case["total_counts"])
        label, latent = outputs["label"], outputs["latent"]
    else:
        alignment = predictor.align(genes, min_coverage=0.0, source=f"{bundle.source} {SELFTEST_FILE}")
        if alignment.n_found != len(bundle.genes) or len(genes) != len(bundle.genes):
            raise BundleError(
                f"{bundle.source}: the self-test cells' {len(genes)} genes are not the bundle's {len(bundle.genes)} "
                "genes; the gene list in the metadata was edited. Restore the original bundle or re-export it."
            )
        part = predictor.labeller(alignment)(case["counts"], case["total_counts"].ravel())
        label, latent = part.cluster, part.latent
    mismatched = int((label != case["label"]).sum())
    diff = np.abs(latent - case["latent"])
    worst = float(diff.max()) if diff.size else 0.0
    if mismatched or not np.all(diff <= LATENT_ATOL + LATENT_RTOL * np.abs(case["latent"])):
        cause = ("This ONNX Runtime build computes the model differently, or the bundle's gene order was edited; "
                 "restore the original bundle, or report it with `sccsa-infer info --json` output.")
        raise BundleError(
            f"{bundle.source}: self-test failed: {mismatched} of {len(case['label'])} labels differ and the latent "
            f"coordinates differ by up to {worst:.2e} from those recorded at export. {cause}"
        )
    return {"n_cells": int(len(case["label"])), "max_latent_diff": worst, "genes_checked": genes is not None}
