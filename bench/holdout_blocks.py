"""The holdout's choice of K on panels with a true K and AR(1) errors within stores: folds of
contiguous blocks of each store's weeks (--holdout, the default) against single weeks drawn at
random (--holdout weeks), beside BIC. Each panel: 3 segments (elasticities -3, -2, -1), store
levels, store prices, sigma 0.5, AR(1) errors; fitted for K = 1..5 with store effects and one
common sigma. Prints how often each K is picked.

    python bench/holdout_blocks.py                    # 30 panels, rho 0.5, about two minutes
    python bench/holdout_blocks.py --panels 10 --ar 0.8 --stores 60
"""
import argparse
import collections
import time
import warnings

import common
import em_sales_tools as T


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.true_k_options(parser, panels=30)
    args = parser.parse_args()
    picks = {name: collections.Counter() for name in ("BIC", "holdout blocks", "holdout weeks")}
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for seed in range(args.panels):
            with common.true_k_panel(args, seed) as path:
                for kind in ("blocks", "weeks"):
                    results = T.analyse(path, Ks=(1, 2, 3, 4, 5), n_init=args.n_init, seed=seed, sigma="common",
                                        store_effects=True, holdout=kind)
                    scored = results["holdout"]["loglik"]
                    picks[f"holdout {kind}"][int(max(scored, key=scored.get))] += 1
                    if kind == "blocks":
                        picks["BIC"][results["best_K"]] += 1
    print(f"{args.panels} panels of {args.stores} stores x {args.weeks} weeks, true K = 3, AR(1) rho = {args.ar}, "
          f"K = 1..5, store effects, common sigma ({time.perf_counter() - start:.0f} s):")
    print(common.table(["picked by"] + [f"K = {K}" for K in range(1, 6)],
                       [[name] + [str(count[K]) for K in range(1, 6)] for name, count in picks.items()]))


if __name__ == "__main__":
    main()
