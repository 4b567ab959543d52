"""Recovery of the membership coefficients gamma on simulated panels whose segments depend on two
store covariates (simulate.py's gamma): for each seed, the K = 3 fit with covariates; the share of
gamma's entries within 1.96 standard errors of the truth (carried to the fit's scale: per sd,
against the fit's reference segment), the mean error and the mean standard error.

    python bench/covariates_recovery.py                     # 20 seeds, N = 300 stores, T = 12 weeks
    python bench/covariates_recovery.py --seeds 0-49 --N 1000
"""
import argparse
import itertools
import time
import warnings

import numpy as np

import common

GAMMA = ((0.0, 0.0, 0.0), (-1.0, 1.5, 0.0), (0.5, 0.0, -1.0))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0-19")
    parser.add_argument("--N", type=int, default=300)
    parser.add_argument("--T", type=int, default=12)
    parser.add_argument("--sigma", default="segment", help="the model's sigma (the truth: 0.6, 0.9, 1.3)")
    args = parser.parse_args(argv)
    E = common.em_sales()
    import simulate as S
    hits, errors, ses, took = [], [], [], []
    for seed in common.seeds(args.seeds):
        panel = S.simulate(args.N, args.T, gamma=GAMMA, seed=seed, sigma=(0.6, 0.9, 1.3))
        model = E._model(args.sigma, False, ("z1", "z2"))
        stats = E._statistics(E._wide_sums(panel.y, panel.X), model, None, panel.covariates)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = common.search(E, stats, 3, seed=seed)
        took.append(time.perf_counter() - start)
        order = list(min(itertools.permutations(range(3)),
                         key=lambda p: ((fit.theta - panel.theta[list(p)]) ** 2).sum()))
        mean, sd = stats.z_scale
        truth = np.array(GAMMA)[order]
        truth = np.column_stack([truth[:, 0] + truth[:, 1:] @ mean, truth[:, 1:] * sd])
        reference = stats.membership.reference(fit.gamma) if hasattr(stats, "membership") else E._reference(stats, fit.gamma)
        truth = truth - truth[reference]
        for c in E._others(3, reference):
            error = fit.gamma[c] - truth[c]
            hits += list(np.abs(error) <= 1.96 * fit.se.gamma[c])
            errors += list(error)
            ses += list(fit.se.gamma[c])
    print(f"{len(common.seeds(args.seeds))} panels of {args.N} stores x {args.T} weeks, K = 3, sigma {args.sigma}: "
          f"{100 * np.mean(hits):.1f}% of {len(hits)} gamma entries within 1.96 s.e. of the truth (nominal 95%); "
          f"mean error {np.mean(errors):+.3f}, mean |error| {np.mean(np.abs(errors)):.3f}, mean s.e. {np.mean(ses):.3f}; "
          f"{1e3 * np.median(took):.0f} ms a fit (median)")


if __name__ == "__main__":
    main()
