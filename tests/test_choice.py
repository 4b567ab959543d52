"""How many segments and what an answer rests on: the sigma check, the criteria, the holdout, the bootstrap, store-clustered standard errors."""
import math

import numpy as np

from em_sales_tools import analysis
from em_sales_tools import choice
from tests.common import (CommandLineCase, E, S, T, quietly, small_panel, stats_of)


class SigmaCheck(CommandLineCase):
    def run_panel(self, sd, *argv):
        panel = S.simulate(N=100, T=30, sigma=sd, seed=21)
        S.write_csv(self.path("panel.csv"), panel.price, panel.sales)
        return self.run_main(self.path("panel.csv"), "--K", "1", "2", "3", "4", *argv)

    def test_warns_when_the_data_reject_sigma_one(self):
        for sd in (0.4, 2.0):
            code, out, err = self.run_panel(sd)
            self.assertEqual(code, 0)
            self.assertRegex(err, r"(?m)^warning: the data reject sigma = 1: at K = \d+ the estimated common sigma is "
                                  r"[0-9.]+ \(likelihood ratio [0-9.]+, p < 0.001\).*use --sigma common or --sigma segment\n")
            check = self.results()["sigma_check"]
            self.assertTrue(check["rejects"])
            self.assertAlmostEqual(check["estimate"], sd, delta=0.1 * sd)

    def test_silent_when_sigma_is_one_or_estimated(self):
        code, out, err = self.run_panel(1.0)
        self.assertEqual((code, err), (0, ""))
        self.assertFalse(self.results()["sigma_check"]["rejects"])
        code, out, err = self.run_panel(0.4, "--sigma", "segment")
        self.assertEqual((code, err), (0, ""))
        self.assertNotIn("sigma_check", self.results())

    def test_says_when_bic_picks_the_largest_K(self):
        code, out, err = self.run_panel(1.0, "--K", "1", "2")
        self.assertIn("warning: BIC picks K = 2, the largest K tried", err)


class HowManySegments(CommandLineCase):
    def test_criteria_are_their_formulas(self):
        panel, _ = small_panel(3, N=40, T=10, missing=0.1)
        fit = quietly(E.Estimate, 2, panel.y, panel.X, seed=0, sigma="common")
        k, n, ll = fit.n_params, fit.n_obs, fit.loglik
        self.assertEqual(k, 2 * 2 + 1 + 1)
        for value, formula in ((fit.aic3, 3 * k - 2 * ll), (fit.caic, k * (math.log(n) + 1) - 2 * ll),
                               (fit.sabic, k * math.log((n + 2) / 24) - 2 * ll)):
            self.assertAlmostEqual(value, formula, delta=1e-9 * abs(formula))

    def test_held_out_weeks_with_store_effects_are_the_predictive_density(self):
        """The held-out score of a store, within(all weeks) - within(training weeks), is the density
        of its held-out weeks given its training weeks with its level integrated out (flat prior):
        checked by numerical integration over the level, one store of six weeks."""
        from scipy.integrate import quad
        from scipy.stats import norm
        rng = np.random.default_rng(5)
        x = np.log(rng.uniform(1, 3, 6))
        y = 2.0 - 1.5 * x + rng.normal(0, 0.4, 6)
        X = np.column_stack([np.ones(6), x])
        theta, sigma, train = np.array([-1.3]), 0.45, np.array([1, 1, 0, 1, 1, 0], dtype=bool)

        def within(rows):
            sums = E._wide_sums(np.where(rows, y, np.nan)[:, None], X)
            stats = E._statistics(sums, E._model(sigma, True))
            return E._e_step(stats, theta[None], np.ones(1), np.array([sigma]))[1]

        def integrated(rows):
            return quad(lambda a: np.prod(norm.pdf(y[rows], a + x[rows] * theta[0], sigma)), -20, 20, points=[2.0])[0]
        self.assertAlmostEqual(within(np.ones(6, bool)) - within(train),
                               math.log(integrated(np.ones(6, bool)) / integrated(train)), delta=1e-7)

    def test_holdout_bootstrap_and_min_share_on_two_clear_segments(self):
        panel = S.simulate(40, 16, theta=((10, -3.0), (10, -1.0)), pi=(0.5, 0.5), seed=2, sigma=0.5)
        S.write_csv(self.path("two.csv"), panel.price, panel.sales)
        results = quietly(T.analyse, self.path("two.csv"), Ks=(1, 2, 3), n_init=3, sigma="common",
                          holdout=True, bootstrap=19, min_share=0.2)
        holdout = results["holdout"]
        data = T.load(self.path("two.csv"), folds=5, seed=0)         # the same folds, scored by least squares
        pooled = 0.0
        for fold in data.folds:
            train = [a - b for a, b in zip(data.sums, fold)]
            XtX, Xty = train[1].sum(axis=0).reshape(2, 2), train[2].sum(axis=0)
            theta = np.linalg.solve(XtX, Xty)
            s2 = (train[3].sum() - theta @ Xty) / train[0].sum()       # the ML sigma^2 of the training weeks
            rss = fold.yty.sum() - 2 * theta @ fold.Xty.sum(axis=0) + theta @ fold.XtX.sum(axis=0).reshape(2, 2) @ theta
            pooled += -0.5 * fold.n.sum() * math.log(2 * math.pi * s2) - rss / (2 * s2)
        self.assertAlmostEqual(holdout["pooled"], pooled, delta=1e-6 * abs(pooled))
        self.assertGreater(holdout["loglik"]["2"], holdout["pooled"] + 10)
        self.assertGreater(holdout["loglik"]["2"], holdout["own"])
        tests = results["bootstrap"]["tests"]
        self.assertEqual((tests[0]["K"], tests[0]["p"]), (1, 0.05))          # 1 / (B + 1): K = 2 beats K = 1
        self.assertEqual(results["bootstrap"]["K"], 2)
        self.assertEqual(results["min_share"]["K"], 2)
        self.assertGreater(results["models"][1]["captured"], 0.9)
        self.assertIn("Holdout (5 contiguous blocks of each store's weeks", T.report(results))
        self.assertEqual(holdout["of"], "blocks")

    def test_simulated_sums_are_those_of_a_panel_drawn_from_the_fit(self):
        """_simulated draws the sums directly: over many draws, X'y has mean X'X theta_c and
        y'y - 2 theta'X'y + theta'X'X theta (a residual sum of squares) has mean sigma_c^2 m_i."""
        panel, _ = small_panel(6, N=8, T=12, K=2, missing=0.0)
        stats = stats_of(panel.y, panel.X, "segment")
        fit = quietly(E._search, stats, 2, E.Search(seed=0))
        fit.prior[:] = [1.0, 0.0]                                           # every store in segment 1
        rng = np.random.default_rng(0)
        draws = [choice._simulated(stats, fit, rng) for _ in range(4000)]
        XtX = stats.XtX.reshape(8, 2, 2)
        mean_Xty = np.mean([d.Xty for d in draws], axis=0)
        np.testing.assert_allclose(mean_Xty, XtX @ fit.theta[0], rtol=0.02, atol=0.02 * np.abs(mean_Xty).max())
        rss = np.mean([E._rss(d, fit.theta[:1])[0] for d in draws], axis=0)
        np.testing.assert_allclose(rss, fit.sigma[0] ** 2 * stats.m, rtol=0.05)


class RobustStandardErrors(CommandLineCase):
    def test_each_stores_score_is_the_derivative_of_its_loglikelihood(self):
        """The sandwich's per-store scores against finite differences of each store's log-likelihood
        in psi = (theta, log sigma, eta), for sigma common and per segment; CR1 is the sandwich
        with them, times N/(N-1)."""
        panel, _ = small_panel(7, N=15, T=8, K=2, missing=0.1)
        for sigma in ("common", "segment"):
            with self.subTest(sigma=sigma):
                stats = stats_of(panel.y, panel.X, sigma)
                fit = quietly(E._search, stats, 2, E.Search(seed=0))
                theta, pi, s = fit.theta + 0.05, np.array([0.3, 0.7]), fit.sigma * 1.1
                W = E._e_step(stats, theta, pi, s)[0]
                G, H = E._score_hessian(stats, theta, pi, s, W, per_store=True)

                def per_store(step):
                    moved = E._moved(stats, theta, pi, s, step)
                    return E._log_normalise(E._log_joint(stats, *moved))[1]
                for j in range(G.shape[1]):
                    step = np.zeros(G.shape[1])
                    step[j] = 1e-6
                    np.testing.assert_allclose(G[:, j], (per_store(step) - per_store(-step)) / 2e-6, atol=1e-4, rtol=1e-5)
                inverse = np.linalg.inv(-H)
                sandwich = 15 / 14 * inverse @ G.T @ G @ inverse             # CR1, in psi: theta first
                run = E._Run(theta, pi, s, 0.0, W, 0, True)
                ours = E._covariance(stats, run, robust="CR1")[:4, :4]
                np.testing.assert_allclose(ours, sandwich[:4, :4], rtol=1e-6)

    def test_autocorrelated_weeks_widen_the_robust_errors_only(self):
        """AR(1) errors within stores (0.6) and a price that drifts week to week (as promotions
        make it persist): the residual autocorrelation is found, and the store-clustered standard
        errors of the price coefficients exceed the model-based ones (by about
        sqrt((1 + 0.6) / (1 - 0.6)) = 2); with independent errors they agree."""
        rng = np.random.default_rng(4)
        T, N = 30, 150
        price = np.exp(np.linspace(0.1, 1.5, T))
        X = np.column_stack([np.ones(T), np.log(price)])
        segment = rng.integers(0, 2, N)
        theta = np.array([[10.0, -2.0], [10.0, -1.0]])
        for ar, low, high in ((0.0, 0.75, 1.3), (0.6, 1.4, 3.0)):
            with self.subTest(ar=ar):
                noise = rng.standard_normal((T, N))
                for t in range(1, T):
                    noise[t] = ar * noise[t - 1] + math.sqrt(1 - ar * ar) * noise[t]
                y = X @ theta[segment].T + 0.5 * noise
                S.write_csv(self.path("ar.csv"), price, np.exp(y))
                results, fits, *_ = quietly(analysis._analyse, analysis.Source(self.path("ar.csv")), (2,), E._model("common"),
                                           E.Search(3, 0), analysis.Choice())
                fit = fits[2]
                self.assertAlmostEqual(fit.autocorrelation, ar, delta=0.1)
                ratio = np.median(fit.se_robust.theta[:, 1] / fit.se.theta[:, 1])
                self.assertTrue(low < ratio < high, ratio)
                self.assertEqual(any("autocorrelated" in note for note in results["notes"]), ar > 0)

    def test_the_command_line_options_and_their_checks(self):
        panel = S.simulate(30, 12, seed=1)
        S.write_csv(self.path("p.csv"), panel.price, panel.sales)
        self.assert_refused("argument --min-share: min_share must be a share", self.path("p.csv"), "--min-share", "1.5")
        self.assert_refused("argument --bootstrap", self.path("p.csv"), "--bootstrap", "0")
        code, out, err = self.run_main(self.path("p.csv"), "--K", "1", "2", "--holdout", "--min-share", "0.05")
        self.assertEqual(code, 0, err)
        self.assertIn("How many segments", out)
        self.assertIn("store-clustered s.e. (CR3, robust to autocorrelated weeks; 95% interval +-2.045 s.e., t on 29 df)", out)
        self.assertIn("holdout", self.results())
        for model in self.results()["models"]:             # t on stores - 1 df, said with the kind
            self.assertEqual((model["se_robust"]["kind"], model["se_robust"]["df"]), ("CR3", 29))
            self.assertAlmostEqual(model["se_robust"]["t_95"], 2.045230, delta=1e-5)
