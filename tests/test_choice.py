"""How many segments and what an answer rests on: the sigma check, the criteria, the holdout, the bootstrap, store-clustered standard errors."""
import math
import os
import tempfile
import types
import unittest

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

    def test_results_json_and_the_report_give_the_verdict(self):
        panel = S.simulate(40, 16, theta=((10, -3.0), (10, -1.0)), pi=(0.5, 0.5), seed=2, sigma=0.5)
        S.write_csv(self.path("two.csv"), panel.price, panel.sales)
        code, out, err = self.run_main(self.path("two.csv"), "--K", "1", "2", "3", "--sigma", "common", "--n-init", "3",
                                       "--holdout", "--min-share", "0.2")
        self.assertEqual(code, 0, err)
        verdict = self.results()["verdict"]
        self.assertEqual((verdict["K"], verdict["agreeing"], verdict["disagreeing"]),
                         (2, ["BIC", "ICL", "holdout", "min-share"], {}))
        self.assertRegex(verdict["reasons"][1], r"^every segment holds at least 4\d% of the stores \(1\d in the smallest\)$")
        self.assertIn("\nverdict: K = 2: BIC, ICL, the holdout and --min-share 0.2 agree; every segment holds at least ", out)
        code, out, err = self.run_main(self.path("two.csv"), "--K", "1", "2", "--sigma", "common", "--n-init", "3")
        verdict = self.results()["verdict"]
        self.assertEqual((verdict["K"], verdict["agreeing"], verdict["disagreeing"]), (None, ["BIC", "ICL"], {}))
        self.assertIn("\nverdict: no single K: BIC and ICL pick 2; K = 2 is the largest K tried: a wider --K may go "
                      "further; --holdout would score each K on weeks it has not seen.\n", out)

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

    def test_ar1_errors_have_unit_variance_and_correlation_rho_to_the_gap(self):
        """_WeekOrder.ar1 over weeks with gaps (1, 2, 3, 5, 8, unsorted, two stores): each week's
        variance 1 and corr(e_j, e_k) = rho^|t_k - t_j|, over 20000 draws of both stores."""
        weeks = np.array([8.0, 1, 3, 2, 5, 2, 1, 3])
        store = np.array([0, 0, 0, 0, 0, 1, 1, 1])
        order = np.lexsort((weeks, store))
        week_order = choice._WeekOrder.of(store[order], weeks[order])
        rng, rho = np.random.default_rng(1), 0.6
        e = np.array([week_order.ar1(np.full(8, rho), rng) for _ in range(20000)])
        np.testing.assert_allclose(e.var(axis=0), 1.0, atol=0.04)
        t = weeks[order]
        for j, k in [(0, 1), (1, 2), (2, 3), (3, 4), (0, 4), (5, 6), (5, 7)]:
            expected = rho ** abs(t[k] - t[j])
            self.assertAlmostEqual(np.corrcoef(e[:, j], e[:, k])[0, 1], expected, delta=0.03, msg=(j, k))
        self.assertAlmostEqual(np.corrcoef(e[:, 4], e[:, 5])[0, 1], 0.0, delta=0.03)    # stores apart

    def test_ar1_panels_have_the_sums_of_the_fit_and_of_the_autocorrelated_weeks(self):
        """_ar_panel's sums: E[X'y] = X'X theta_c and E[R_i] = sigma^2 m_i (no store effects): the
        autocorrelation changes the spread of the sums, not their means."""
        panel = S.simulate(N=6, T=20, seed=4, ar=0.5)
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "p.csv")
            S.write_long(path, panel.price, panel.sales)
            data = analysis._load(path, None, (), None, None, None)
        stats = E._statistics(data.sums, E._model(sigma="common"), data.coefficients)
        fit = quietly(E._search, stats, 1, E.Search(seed=0))
        draw = choice._ar_panel(stats, fit, data, np.array([0.5]))
        rng = np.random.default_rng(2)
        draws = [draw(rng) for _ in range(3000)]
        XtX = stats.XtX.reshape(6, 2, 2)
        np.testing.assert_allclose(np.mean([d.Xty for d in draws], axis=0), XtX @ fit.theta[0], rtol=0.01)
        rss = np.mean([E._rss(d, fit.theta)[0] for d in draws], axis=0)
        np.testing.assert_allclose(rss, fit.sigma[0] ** 2 * stats.m, rtol=0.05)

    def test_the_bootstrap_keeps_a_true_K_on_autocorrelated_weeks(self):
        """Size on AR(1) weeks, a seeded panel: two segments, rho 0.6, no store levels; K = 2 against
        3 with B = 9. Panels with the fit's AR(1) errors keep K = 2 (p >= 0.5: the observed LR is
        ordinary among them); panels with independent weeks (data=None, as a file reduced by the
        engine gets them) reject it (at most one of 9 LRs reaches the observed one), the size
        problem the AR(1) panels remove. Each segment's rho is near the truth."""
        panel = S.simulate(N=40, T=30, theta=((10.0, -3.0), (10.0, -1.0)), pi=(0.5, 0.5), seed=0, sigma=0.5,
                           ar=0.6, price_sd=0.1)
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "p.csv")
            S.write_long(path, panel.price, panel.sales)
            data = analysis._load(path, None, (), None, None, None)
        stats = E._statistics(data.sums, E._model(sigma="common"), data.coefficients)
        fits = {K: analysis.FrameFit(fit, data) for K, fit in quietly(E.sweep, stats, (2, 3), E.Search(seed=0)).items()}
        kept = quietly(choice._bootstrap, stats, fits, 9, E.Search(seed=0), data=data)["tests"][0]
        self.assertEqual(kept["weeks"], "AR(1)")
        np.testing.assert_allclose(kept["rho"], 0.6, atol=0.1)
        self.assertGreaterEqual(kept["p"], 0.5)
        rejected = quietly(choice._bootstrap, stats, fits, 9, E.Search(seed=0))["tests"][0]
        self.assertEqual(rejected["weeks"], "independent")
        self.assertLessEqual(rejected["p"], 0.2)

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


def evidence(bic, icl, **more):
    """results.json's dictionary of a constructed sweep K = 1, 2, ...: each K's BIC and ICL, every
    segment of 20 stores (10% of 200) but where smallest = {K: stores}, and the keys in more
    (holdout, bootstrap, min_share, not_credible = {K: {segment: why}})."""
    smallest, odd, rho = more.pop("smallest", {}), more.pop("not_credible", {}), more.pop("rho", None)
    models = [{"K": K, "bic": b, "icl": i, "entropy": 0.9, "unsupported": {}, "supported_K": K,
               "stores_in_segment": [smallest.get(K, 20)] + [20] * (K - 1),
               "smallest_segment": {"stores": smallest.get(K, 20), "share": smallest.get(K, 20) / 200},
               "not_credible": odd.get(K, {}), "autocorrelation": rho} for K, (b, i) in enumerate(zip(bic, icl), start=1)]
    return {"models": models, "best_K": min(models, key=lambda m: m["bic"])["K"], **more}


def boot(p, B=19, weeks="independent"):
    """A bootstrap's entry with p-values of K = 1, 2, ... against K + 1 (it stops at the first above 0.05)."""
    tests = [{"K": K, "lr": 10.0, "p": value, "weeks": weeks} for K, value in enumerate(p, start=1)]
    kept = next((t["K"] for t in tests if t["p"] > choice.BOOTSTRAP_LEVEL), None)
    return {"B": B, "tests": tests, "K": kept}


def held_out(*scores):
    return {"folds": 5, "of": "blocks", "loglik": {str(K): s for K, s in enumerate(scores, start=1)},
            "pooled": scores[0], "own": min(scores) - 1, "own_pooled_stores": 0, "unscored": 0}


class Verdict(unittest.TestCase):
    """The verdict's rule on constructed tables of evidence."""
    BIC3 = (500.0, 420.0, 400.0, 404.0, 415.0)          # BIC and ICL pick K = 3 of 1..5
    ICL3 = (500.0, 425.0, 410.0, 420.0, 440.0)

    def test_the_holdout_names_the_smallest_K_within_its_tie(self):
        """A held-out score within HOLDOUT_TIE of the best is a tie, and the smaller K takes it."""
        found = choice._verdict(evidence(self.BIC3, self.ICL3, holdout=held_out(-900, -800, -760, -759.5, -780)))
        self.assertEqual((found["K"], found["agreeing"]), (3, ["BIC", "ICL", "holdout"]))
        found = choice._verdict(evidence(self.BIC3, self.ICL3, holdout=held_out(-900, -800, -760, -758.5, -780)))
        self.assertEqual((found["K"], found["disagreeing"]), (None, {"holdout": 4}))

    def test_with_autocorrelated_weeks_the_holdout_and_the_ar1_bootstrap_decide(self):
        """rho above AUTOCORRELATION: the holdout by blocks and an AR(1) bootstrap agreeing on 3 outvote
        BIC's 4, which is named with why; not where the bootstrap simulated independent weeks, nor
        where the weeks are not autocorrelated, nor where --min-share disagrees."""
        bic4 = (500.0, 420.0, 404.0, 400.0, 415.0)
        agreed = dict(holdout=held_out(-900, -800, -760, -770, -780), bootstrap=boot([0.05, 0.05, 0.6], weeks="AR(1)"))
        found = choice._verdict(evidence(bic4, self.ICL3, rho=0.5, **agreed))
        self.assertEqual((found["K"], found["agreeing"], found["disagreeing"]),
                         (3, ["ICL", "holdout", "bootstrap"], {"BIC": 4}))
        self.assertIn("BIC picks 4: autocorrelated weeks carry less information than their number", found["reasons"][2])
        for change in (dict(bootstrap=boot([0.05, 0.05, 0.6])), dict(rho=0.05), dict(min_share={"share": 0.1, "K": 2})):
            with self.subTest(change=change):
                self.assertIsNone(choice._verdict(evidence(bic4, self.ICL3, **{"rho": 0.5, **agreed, **change}))["K"])

    def test_evidence_that_agrees_gives_its_K(self):
        found = choice._verdict(evidence(self.BIC3, self.ICL3))
        self.assertEqual((found["K"], found["agreeing"], found["disagreeing"]), (3, ["BIC", "ICL"], {}))
        self.assertEqual(found["reasons"], ["BIC and ICL agree", "every segment holds at least 10% of the stores "
                                                                 "(20 in the smallest)", "the criteria alone: --holdout "
                                                                 "would score each K on weeks it has not seen"])
        found = choice._verdict(evidence(self.BIC3, self.ICL3, holdout=held_out(-900, -800, -760, -770, -780),
                                         bootstrap=boot([0.05, 0.05, 0.27]), min_share={"share": 0.1, "K": 3}))
        self.assertEqual((found["K"], found["agreeing"]), (3, ["BIC", "ICL", "holdout", "bootstrap", "min-share"]))
        self.assertEqual(found["reasons"][:2], ["BIC, ICL, the holdout and --min-share 0.1 agree",
                                                "the bootstrap keeps 3 (p = 0.27)"])
        found = choice._verdict(evidence(self.BIC3, self.ICL3, holdout={"folds": 5, "skipped": "a fold's ..."}))
        self.assertEqual((found["K"], found["reasons"][-2:]), (3, ["the criteria alone", "the holdout was skipped"]))

    def test_evidence_that_disagrees_gives_none_and_what_separates_the_candidates(self):
        found = choice._verdict(evidence(self.BIC3, self.ICL3, holdout=held_out(-900, -800, -760, -750, -780),
                                         smallest={4: 3}))
        self.assertIsNone(found["K"])
        self.assertEqual((found["agreeing"], found["disagreeing"]), (["BIC", "ICL"], {"holdout": 4}))
        self.assertEqual(found["reasons"][0], "BIC and ICL pick 3, the holdout picks 4")
        self.assertEqual(found["reasons"][1], "K = 4 against 3: its segments hold 3, 20, 20 and 20 stores, BIC favours 3 "
                                              "by 4.00, ICL favours 3 by 10.00, the held-out weeks favour 4 by 10.00")
        self.assertIn("--min-share S", found["reasons"][-1])          # the holdout was run: the other option
        found = choice._verdict(evidence(self.BIC3, (500.0, 405.0, 410.0, 420.0, 440.0)))     # ICL picks 2
        self.assertEqual((found["K"], found["agreeing"], found["disagreeing"]), (None, ["BIC"], {"ICL": 2}))
        self.assertIn("ICL favours 2 by 5.00 (entropy 0.900: ICL charges uncertain memberships)", found["reasons"][1])
        self.assertIn("--holdout", found["reasons"][-1])
        found = choice._verdict(evidence(self.BIC3, (500.0, 425.0, 430.0, 420.0, 440.0),   # the most votes win
                                         holdout=held_out(-900, -800, -760, -750, -780)))
        self.assertEqual((found["K"], found["agreeing"], found["disagreeing"]), (None, ["ICL", "holdout"], {"BIC": 3}))

    def test_the_bootstrap_votes_where_it_can_reject(self):
        rejects = choice._verdict(evidence(self.BIC3, self.ICL3, bootstrap=boot([0.05, 0.05, 0.05, 0.05])))
        self.assertEqual((rejects["K"], rejects["disagreeing"]), (None, {"bootstrap": None}))
        self.assertEqual(rejects["reasons"][0], "BIC and ICL pick 3, the bootstrap keeps none")
        self.assertIn("the bootstrap rejects every K it tested, the last K = 4 against 5 (p = 0.05)", rejects["reasons"])
        smaller = choice._verdict(evidence(self.BIC3, self.ICL3, bootstrap=boot([0.05, 0.4])))
        self.assertEqual((smaller["K"], smaller["disagreeing"]), (None, {"bootstrap": 2}))
        few = choice._verdict(evidence(self.BIC3, self.ICL3, bootstrap=boot([0.2], B=4)))     # 4 panels: p >= 0.2
        self.assertEqual((few["K"], few["agreeing"]), (3, ["BIC", "ICL"]))
        self.assertIn("the bootstrap's 4 panels cannot reject at 0.05: it does not vote", few["reasons"])

    def test_a_K_the_evidence_names_is_refused_for_a_segment_not_credible_or_the_largest_K(self):
        odd = choice._verdict(evidence(self.BIC3, self.ICL3, not_credible={3: {"1": "(1.0 stores) is not credible"}}))
        self.assertEqual((odd["K"], odd["agreeing"], odd["disagreeing"]), (None, ["BIC", "ICL"], {}))
        self.assertIn("K = 3's segment 1 is not credible", odd["reasons"])
        last = choice._verdict(evidence(self.BIC3[:3], self.ICL3[:3]))
        self.assertIsNone(last["K"])
        self.assertIn("K = 3 is the largest K tried: a wider --K may go further", last["reasons"])
        one = choice._verdict(evidence(self.BIC3[:1], self.ICL3[:1]))
        self.assertIsNone(one["K"])

    def test_min_share(self):
        found = choice._verdict(evidence(self.BIC3, self.ICL3, smallest={3: 3}, min_share={"share": 0.1, "K": 2}))
        self.assertEqual((found["K"], found["disagreeing"]), (None, {"min-share": 2}))
        self.assertEqual(found["reasons"][0], "BIC and ICL pick 3, --min-share 0.1 picks 2")
        self.assertTrue(found["reasons"][1].startswith("K = 3 against 2: its segments hold 3, 20 and 20 stores"))
        none = choice._verdict(evidence(self.BIC3, self.ICL3, min_share={"share": 0.4, "K": None}))
        self.assertEqual(none["disagreeing"], {"min-share": None})
        self.assertIn("no K tried has every segment holding 40% of the stores", none["reasons"])


class Captured(unittest.TestCase):
    """captured = (log L_K - log L_1) / (log L_own - log L_1) on nested fits."""

    def test_nested_fits_never_capture_less(self):
        panel, _ = small_panel(8, N=40, T=12, K=3, missing=0.1)
        for sigma, effects in ((1.0, False), ("common", False), ("segment", True)):
            with self.subTest(sigma=sigma, store_effects=effects):
                stats = stats_of(panel.y, panel.X, sigma, effects)
                fits = quietly(E.sweep, stats, (1, 2, 3, 4), E.Search(3, 0))
                one, own = choice._bounds(stats)
                shares = [choice._captured(fits[K]) for K in (1, 2, 3, 4)]
                self.assertAlmostEqual(shares[0], 0.0, delta=1e-9)
                self.assertTrue(all(b >= a - 1e-9 for a, b in zip(shares, shares[1:])), shares)
                self.assertTrue(all(0 <= s <= 1 for s in shares) and shares[3] > 0.05, shares)
                self.assertTrue(all(fit.loglik <= own for fit in fits.values()))
                K = 2                                       # K + 1 segments, one of them a copy: the same likelihood
                fit = fits[K]
                theta, pi, s = (np.concatenate([a, a[:1]]) for a in (fit.theta, fit.pi, fit.sigma))
                pi[0] = pi[-1] = fit.pi[0] / 2
                copy = E._e_step(stats, theta, pi, s)[1]
                self.assertAlmostEqual(copy, fit.loglik, delta=1e-9 * abs(copy))
                twin = choice._captured(types.SimpleNamespace(_stats=stats, loglik=copy))
                self.assertAlmostEqual(twin, shares[K - 1], delta=1e-9)

    def test_the_stores_own_regressions_by_least_squares_on_their_weeks(self):
        """log L_own against each store's own least squares on its weeks, a store of one week (fitted
        exactly) among them; with store effects on its weeks less their mean. (Its residual, 0 to
        rounding, over twice the floor of sigma^2 leaves a term of about 1e-5 on that rounding.)"""
        panel, _ = small_panel(9, N=10, T=8, K=2, missing=0.0)
        y = panel.y.copy()
        y[1:, 0] = np.nan                                     # store 0: one week
        for sigma, effects in (("common", False), ("common", True), ("segment", False), (0.7, False)):
            with self.subTest(sigma=sigma, store_effects=effects):
                stats = stats_of(y, panel.X, sigma, effects)
                rss, m, n = [], [], []
                for i in range(10):
                    rows = ~np.isnan(y[:, i])
                    Xi, yi = panel.X[rows], y[rows, i]
                    if effects:
                        Xi, yi = Xi[:, 1:] - Xi[:, 1:].mean(axis=0), yi - yi.mean()
                    b = np.linalg.lstsq(Xi, yi, rcond=None)[0]
                    rss.append(((yi - Xi @ b) ** 2).sum())
                    n.append(rows.sum())
                    m.append(rows.sum() - effects)
                rss, m, n = map(np.array, (rss, m, n))
                floor = E.VARIANCE_FLOOR * stats.pooled_s2
                s2 = (np.full(10, max(rss.sum() / m.sum(), floor)) if sigma == "common" else
                      np.maximum(rss / np.maximum(m, 1), floor) if sigma == "segment" else np.full(10, sigma ** 2))
                expected = (-0.5 * m * np.log(2 * math.pi * s2) - rss / (2 * s2) - effects * 0.5 * np.log(n)).sum()
                self.assertAlmostEqual(choice._bounds(stats)[1], expected, delta=1e-8 * abs(expected) + 1e-4)


class StudentT(unittest.TestCase):
    def test_t_quantiles_against_the_tables(self):
        """Student's t quantiles (Hill's algorithm) against printed tables, 7 significant digits."""
        table = {(0.975, 1): 12.70620, (0.975, 2): 4.302653, (0.975, 3): 3.182446, (0.975, 5): 2.570582,
                 (0.975, 10): 2.228139, (0.975, 29): 2.045230, (0.975, 99): 1.984217, (0.975, 1000): 1.962339,
                 (0.995, 4): 4.604095, (0.995, 30): 2.749996, (0.95, 20): 1.724718, (0.9995, 7): 5.407883,
                 (0.75, 6): 0.7175582}
        for (p, df), value in table.items():
            with self.subTest(p=p, df=df):
                self.assertAlmostEqual(choice._t_quantile(p, df) / value, 1, delta=1e-5)
                self.assertAlmostEqual(choice._t_quantile(1 - p, df) / value, -1, delta=1e-5)
        self.assertEqual(choice._t_quantile(0.5, 7), 0.0)
        self.assertAlmostEqual(choice._t_quantile(0.975, 10 ** 7), 1.959964, delta=1e-6)
