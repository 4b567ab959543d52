"""How many segments a panel supports, and standard errors under autocorrelated weeks.

    python bench/how_many.py truth       # a simulated panel with K = 3 and independent errors: what each
                                         # criterion, the holdout and the bootstrap pick
    python bench/how_many.py spread      # elasticities spread continuously across stores, AR(1) errors:
                                         # the criteria, captured shares, holdout, bootstrap, robust s.e.
    python bench/how_many.py coverage    # 95% intervals of the price coefficients, model-based and
                                         # store-clustered (CR1, CR2, CR3), over --reps panels with
                                         # AR(1) errors (0.6); --stores 400 for larger panels

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
from em_sales_tools.choice import _t_quantile


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


def coverage(reps, seed, N=100, T=40, ar=0.6):
    """Nominal 95% intervals of the two segments' price coefficients over reps panels: model-based
    (normal), and store-clustered with t on N - 1 df: CR1 (the plain sandwich x N/(N-1)), CR2 (its
    Bell-McCaffrey form, computed here) and CR3 (the one-step jackknife, what se_robust reports).
    Each is scored twice: around the true elasticity, and around the estimates' mean over the
    panels (what the intervals would cover if the estimator had no bias: the standard errors' own
    part), with the median standard error against the estimates' sd."""
    E = common.em_sales()
    rng = np.random.default_rng(seed)
    names = ("model-based", "CR1", "CR2", "CR3")
    estimates, errors = [], {name: [] for name in names}
    truth = np.array([-3.0, -1.5])
    z, t = 1.959963984540054, _t_quantile(0.975, N - 1)
    critical = {name: z if name == "model-based" else t for name in names}
    for _ in range(reps):
        segment = rng.integers(0, 2, N)
        price, sales = drifting_panel(rng, N, T, truth[segment], 0.4, ar)
        y, X = np.log(sales), np.stack([np.ones((T, N)), np.log(price)], axis=-1)
        stats = E._statistics(E._wide_sums(y, X), E._model("common", True))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = common.search(E, stats, 2, seed=0)
        run = E._run_of(fit)
        estimates.append(fit.theta[:, 0])
        for name, covariance in (("model-based", E._covariance(stats, run)), ("CR1", E._covariance(stats, run, "CR1")),
                                 ("CR2", cr2(E, stats, run)), ("CR3", E._covariance(stats, run, "CR3"))):
            errors[name].append(np.sqrt(np.diag(covariance))[:2])   # theta: (beta_1, beta_2) with store effects
    estimates = np.array(estimates)
    bias, sd = estimates.mean(axis=0) - truth, estimates.std(axis=0)
    rows = []
    for name in names:
        se = np.array(errors[name])
        around_truth = np.abs(estimates - truth) <= critical[name] * se
        around_mean = np.abs(estimates - estimates.mean(axis=0)) <= critical[name] * se
        rows.append([name, f"+-{critical[name]:.3f}", f"{100 * around_truth.mean():.1f}%", f"{100 * around_mean.mean():.1f}%",
                     " ".join(f"{r:.2f}" for r in np.median(se, axis=0) / sd)])
    print(f"{N} stores x {T} weeks, AR(1) errors {ar:g}, {reps} panels (seed {seed}): nominal 95% intervals of the "
          f"two elasticities ({2 * reps}); bias of the estimates {bias[0]:+.3f} {bias[1]:+.3f} (their sd "
          f"{sd[0]:.3f} {sd[1]:.3f}); +-{1.96 * math.sqrt(0.95 * 0.05 / (2 * reps)) * 100:.1f} points is the "
          "binomial noise of a share near 95%")
    print(common.table(["intervals", "s.e. x", "cover the truth", "cover the mean estimate", "median s.e. / sd"], rows))


def cr2(E, stats, run):
    """Bell-McCaffrey's CR2 carried to this likelihood: sum_i d_i d_i', d_i = A^-1 (I - A_i A^-1)^-1/2 g_i
    (A = -H, A_i store i's own information), computed in A's whitened coordinates (A = L L',
    M_i = L^-1 A_i L^-T = U diag(lambda) U': d_i = L^-T U diag((1 - lambda)^-1/2) U' L^-1 g_i). For
    least squares this is CR2 exactly (X_i'(I - H_ii)^-1/2 e_i = (I - A_i A^-1)^-1/2 g_i). theta and the
    sigma only (no covariates): the covariance in psi."""
    W = E._e_step(stats, run.theta, run.pi, run.sigma)[0]
    G, H = E._score_hessian(stats, run.theta, run.pi, run.sigma, W, per_store=True)
    L = np.linalg.cholesky(-H)
    A_i = -E._store_hessians(stats, run.theta, run.pi, run.sigma, W, slice(None))
    lam, U = np.linalg.eigh(np.linalg.solve(L, np.linalg.solve(L, A_i).swapaxes(1, 2)))
    x = np.linalg.solve(L, G.T).T
    x = (U @ ((U.swapaxes(1, 2) @ x[:, :, None])[..., 0] / np.sqrt(np.maximum(1 - lam, 1e-8)))[:, :, None])[..., 0]
    d = np.linalg.solve(L.T, x.T).T
    return d.T @ d


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("case", choices=["truth", "spread", "coverage"])
    parser.add_argument("--bootstrap", type=int, default=99)
    parser.add_argument("--reps", type=int, default=100, help="panels for coverage")
    parser.add_argument("--stores", type=int, default=100, help="stores a panel for coverage")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ar", type=float, default=0.6, help="AR(1) coefficient of the errors for coverage")
    args = parser.parse_args(argv)
    if args.case == "coverage":
        return coverage(args.reps, args.seed, args.stores, ar=args.ar)
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
