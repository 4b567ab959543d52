"""Beyond the course data: 30 simulated panels of 300 stores x 52 weeks with 2 to 5 overlapping true
segments (half of them with 5% missing cells), each fitted at K = 2, 3, 4, 5 by Estimate with its
defaults for 3 seeds, against the better of two 100-start searches. Prints how many seed-fits reach
that maximum (within 1e-6) and how far the others fall short.

    python bench/robustness.py                     # 30 panels: a few minutes
    python bench/robustness.py --panels 5 --sigma segment
"""
import argparse
import warnings

import numpy as np

import common
import simulate as S


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--panels", type=int, default=30)
    parser.add_argument("--sigma", choices=("fixed", "common", "segment"), default="fixed",
                        help="fixed: noise sd 1 and sigma fixed at 1; common, segment: noise sd 0.5, sigma estimated")
    parser.add_argument("--code", help="another checkout's em_sales.py (default: this one)")
    args = parser.parse_args(argv)
    E = common.em_sales(args.code)
    model_sigma, noise = (1.0, 1.0) if args.sigma == "fixed" else (args.sigma, 0.5)
    warnings.simplefilter("ignore")
    short, fits = [], 0
    for r in range(args.panels):
        rng = np.random.default_rng(500 + r)
        k = int(rng.integers(2, 6))
        theta = np.column_stack([rng.uniform(9.5, 11.5, k), rng.uniform(-2, -0.8, k)])
        panel = S.simulate(300, 52, theta, rng.dirichlet(np.ones(k) * 2), missing=0.05 * (r % 2), seed=r, sigma=noise)
        stats = common.statistics_of(E, panel.y, panel.X, model_sigma)
        for K in (2, 3, 4, 5):
            best = max(common.search(E, stats, K, n_init=100, seed=s).loglik for s in (10_000 + r, 20_000 + r))
            short += [best - common.search(E, stats, K, seed=seed).loglik for seed in range(3)]
            fits += 1
        print(f"  panel {r + 1} of {args.panels} ({k} true segments) done", flush=True)
    short = np.array(short)
    missed = np.sort(short[short > 1e-6])
    print(f"{args.panels} panels, {fits} fits, {len(short)} seed-fits (sigma {args.sigma}): "
          f"{int(np.sum(short <= 1e-6))} reach or beat the 100-start maximum")
    if len(missed):
        print("short by: " + ", ".join(f"{value:.3g}" for value in missed))


if __name__ == "__main__":
    main()
