"""Does lr-find's suggestion train as well as the bundled lr? Side by side over several seeds.

    .venv/bin/python scripts/check_lr_find.py [--config lenet5-digits] [--seeds 0 1 2] [--threads 2]

For each seed: ``cnnctl lr-find`` on the config with that seed (wall time of the range test, from the assembled
run to the written plot), then ``cnnctl train`` twice with the same seed, once with the config's own lr and once
with the suggested one; test accuracy is summary.json's (the weights ``cnnctl train`` evaluates: the best
epoch's). Prints one row per seed, the means with their standard deviations, and the mean difference in points.
One run's test accuracy on a small test split is noisy (on lenet5-digits, 359 images, lrs a few tenths apart gave
95.3-98.3% for one seed), so the comparison is over seeds, not one run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import cnnctl
from cnnctl.training.lr_find import lr_find


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="lenet5-digits")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--threads", default="2")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for seed in args.seeds:
            sets = [f"seed={seed}", f"train.threads={args.threads}"]
            cfg = cnnctl.load_config(args.config, sets)
            start = time.perf_counter()
            found = lr_find(cfg, out_dir=Path(out) / f"find-{seed}")
            find_s = time.perf_counter() - start
            accuracy = {}
            for label, lr in (("bundled", cfg.optimizer.lr), ("suggested", found["suggestion"])):
                result = cnnctl.train(args.config, overrides=[*sets, f"optimizer.lr={lr!r}"], out=out,
                                      name=f"{label}-{seed}")
                accuracy[label] = result.summary["test"]["accuracy"]
                accuracy[f"{label}_epochs"] = len(result.metrics)
            rows.append({"seed": seed, "bundled_lr": cfg.optimizer.lr, "suggested_lr": found["suggestion"],
                         "find_s": find_s, **accuracy})
            r = rows[-1]
            print(f"seed {seed}: lr-find {find_s:.1f} s, suggested {r['suggested_lr']:.3g}; test accuracy bundled "
                  f"{r['bundled']:.2%} ({r['bundled_epochs']} epochs), suggested {r['suggested']:.2%} "
                  f"({r['suggested_epochs']} epochs)", flush=True)
    print()
    print(f"| seed | suggested lr | lr-find wall | test acc, bundled lr ({rows[0]['bundled_lr']:g}) | "
          "test acc, suggested lr | difference |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['suggested_lr']:.3g} | {r['find_s']:.1f} s | {r['bundled']:.2%} | "
              f"{r['suggested']:.2%} | {100 * (r['suggested'] - r['bundled']):+.2f} |")
    mean_b = statistics.mean(r["bundled"] for r in rows)
    mean_s = statistics.mean(r["suggested"] for r in rows)
    diffs = [100 * (r["suggested"] - r["bundled"]) for r in rows]

    def spread(xs: list[float]) -> str:
        return f" ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else ""

    print(f"| mean{spread([100 * r['bundled'] for r in rows]) and ' ± sd'} | | "
          f"{statistics.median(r['find_s'] for r in rows):.1f} s (median) | "
          f"{mean_b:.2%}{spread([100 * r['bundled'] for r in rows])} | "
          f"{mean_s:.2%}{spread([100 * r['suggested'] for r in rows])} | "
          f"{statistics.mean(diffs):+.2f}{spread(diffs)} |")


if __name__ == "__main__":
    main()
