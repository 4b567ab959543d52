"""How many segments a panel supports, and standard errors under autocorrelated weeks.

    python bench/how_many.py truth       # a simulated panel with K = 3 and independent errors: what each
                                         # criterion, the holdout and the bootstrap pick
    python bench/how_many.py spread      # elasticities spread continuously across stores, AR(1) errors:
                                         # the criteria, captured shares, holdout, bootstrap, robust s.e.
    python bench/how_many.py coverage    # 95% intervals of the price coefficients, model-based and
                                         # store-clustered, over --reps panels with AR(1) errors (0.6)

Each panel is written to a temporary folder and run through the program (`em_sales.py` with
--holdout --bootstrap B --min-share 0.1), whose "How many segments" lines are printed. Seconds
to minutes (--bootstrap 99).
"""
import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

import common


def drifting_panel(rng, N, T, elasticity, sigma, ar, level=10.0):
    """A long panel: each store its own price, drifting week to week (log price a random walk
    around its mean), its own level, y = level_i + elasticity_i log p_it + AR(1) noise."""
    log_price = np.log(2.0) + np.cumsum(rng.normal(0, 0.08, (T, N)), axis=0)
    noise = rng.standard_normal((T, N))
    for t in range(1, T):
        noise[t] = ar * noise[t - 1] + math.sqrt(1 - ar * ar) * noise[t]
    y = level + rng.normal(0, 0.5, N) + elasticity * log_price + sigma * noise
    return np.exp(log_price), np.exp(y)


def write_long(path, price, sales):
    T, N = sales.shape
    with open(path, "w") as out:
        out.write("store,week,sales,price\n")
        for i in range(N):
            for t in range(T):
                out.write(f"s{i + 1},{t + 1},{sales[t, i]:.10g},{price[t, i]:.10g}\n")


def run(path, options):
    start = time.perf_counter()
    done = subprocess.run([sys.executable, os.path.join(common.REPO, "em_sales.py"), path, *options,
                           "--output", path + ".json"], capture_output=True, text=True)
    took = time.perf_counter() - start
    out = done.stdout
    section = out[out.index("How many segments"):out.index("BIC chooses")] if "How many segments" in out else out
    notes = [line for line in done.stderr.splitlines() if line.startswith("warning")]
    print(section.rstrip() + "\n" + "\n".join(notes) + f"\n(whole run {took:.1f} s)\n")


def coverage(reps, seed, N=100, T=40):
    E = common.em_sales()
    rng = np.random.default_rng(seed)
    hits = {"model-based": [], "store-clustered": []}
    truth = np.array([-3.0, -1.5])
    for _ in range(reps):
        segment = rng.integers(0, 2, N)
        price, sales = drifting_panel(rng, N, T, truth[segment], 0.4, 0.6)
        y, X = np.log(sales), np.stack([np.ones((T, N)), np.log(price)], axis=-1)
        stats = E._statistics(E._wide_sums(y, X), E._model("common", True))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = common.search(E, stats, 2, seed=0)
        for name, se in (("model-based", fit.se.theta[:, 0]), ("store-clustered", fit.se_robust.theta[:, 0])):
            hits[name] += list(np.abs(fit.theta[:, 0] - truth) <= 1.96 * se)
    for name, values in hits.items():
        print(f"{N} stores x {T} weeks, {name}: {100 * np.mean(values):.1f}% of {len(values)} 95% intervals cover "
              "the true elasticity")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("case", choices=["truth", "spread", "coverage"])
    parser.add_argument("--bootstrap", type=int, default=99)
    parser.add_argument("--reps", type=int, default=100, help="panels for coverage")
    parser.add_argument("--stores", type=int, default=100, help="stores a panel for coverage")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.case == "coverage":
        return coverage(args.reps, args.seed, args.stores)
    rng = np.random.default_rng(args.seed)
    folder = tempfile.mkdtemp()
    path = os.path.join(folder, f"{args.case}.csv")
    if args.case == "truth":                         # three segments, independent errors
        segment = rng.choice(3, 150, p=[0.3, 0.3, 0.4])
        price, sales = drifting_panel(rng, 150, 60, np.array([-3.0, -2.0, -1.2])[segment], 0.4, 0.0)
    else:                                            # a continuous spread, AR(1) errors
        price, sales = drifting_panel(rng, 150, 60, rng.normal(-2.0, 0.5, 150), 0.4, 0.5)
    write_long(path, price, sales)
    run(path, ["--K", "1", "2", "3", "4", "5", "6", "--sigma", "segment", "--store-effects", "--holdout",
               "--bootstrap", str(args.bootstrap), "--min-share", "0.1"])


if __name__ == "__main__":
    main()
