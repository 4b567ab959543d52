"""Covariates of membership from a stores file: the report, results, segments, predictions, and the orange juice."""
import os
import unittest
import unittest.mock

import numpy as np

from em_sales_tools import covariates
from test_em_sales import separated_panel
from tests.common import (covariate_panel, GAMMA, ORANGE_JUICE, CommandLineCase, E, S, T, quietly)


class CovariatesCommandLine(CommandLineCase):
    def write_panel(self, long=False):
        panel = S.simulate(60, 12, gamma=GAMMA, seed=3)
        labels = [f"S{i + 1}" if long else f"Sales{i + 1}" for i in range(60)]
        (S.write_long if long else S.write_csv)(self.path("panel.csv"), panel.price, panel.sales)
        S.write_stores(self.path("stores.csv"), labels, panel.covariates)
        return panel

    def test_report_results_segments_and_predictions(self):
        self.write_panel()
        self.write("new.csv", "store,z2,z1\nnew1,0.5,-1\nnew2,-2,2\n")
        code, out, err = self.run_main(self.path("panel.csv"), "--K", "2", "3", "--stores", self.path("stores.csv"),
                                       "--covariates", "z1", "z2", "--segments", self.path("seg.csv"), "--segments-K", "3",
                                       "--predict", self.path("new.csv"), self.path("pred.csv"))
        self.assertEqual(code, 0, err)
        self.assertIn("who is in each segment", out)
        self.assertRegex(out, r"likelihood ratio [0-9.]+ on 4 df")
        model = self.results()["models"][1]
        self.assertEqual(np.shape(model["gamma"]), (3, 3))
        self.assertEqual(model["covariates"]["names"], ["z1", "z2"])
        self.assertIn("prior", self.results()["store_segments"][0])
        with open(self.path("seg.csv")) as handle:
            self.assertTrue(handle.readline().strip().endswith("prior_3,z1,z2"))
        with open(self.path("pred.csv")) as handle:
            rows = handle.read().splitlines()
        self.assertEqual(rows[0].split(",")[:2], ["store", "segment"])
        self.assertEqual([row.split(",")[0] for row in rows[1:]], ["new1", "new2"])
        self.assertAlmostEqual(sum(float(v) for v in rows[1].split(",")[2:]), 1.0, places=5)

    def test_bad_stores_files_are_refused_with_line_and_column(self):
        self.write_panel()
        with open(self.path("stores.csv")) as handle:
            good = handle.read().splitlines()
        cases = [("no row", "\n".join(good[:-1]) + "\n", "store 'Sales60' of the panel has no row here"),
                 ("twice", "\n".join(good + [good[1]]) + "\n", "line 62: store 'Sales1' has a row already, on line 2"),
                 ("text", "\n".join(good[:3] + [good[3].split(",")[0] + ",high,1"] + good[4:]) + "\n",
                  "line 4, column 'z1': 'high' is not a number"),
                 ("empty", "\n".join(good[:3] + [good[3].split(",")[0] + ",,1"] + good[4:]) + "\n",
                  "line 4, column 'z1': is empty"),
                 ("no column", "\n".join(good) + "\n", "no column 'z3'")]
        for name, text, message in cases:
            with self.subTest(name):
                self.write("bad.csv", text)
                covariates = ["z1", "z3"] if name == "no column" else ["z1", "z2"]
                self.assert_refused(message, self.path("panel.csv"), "--stores", self.path("bad.csv"),
                                    "--covariates", *covariates)
        self.assert_refused("--stores FILE.csv and --covariates COL ... go together", self.path("panel.csv"),
                            "--stores", self.path("stores.csv"))

    def test_a_covariate_penalty_is_said_recorded_and_checked(self):
        """--covariate-penalty L: the report says the model is ridge-penalised and tests nothing,
        results.json records L and the objective; a negative L, or L without covariates, is one
        line and exit 2."""
        self.write_panel()
        code, out, err = self.run_main(self.path("panel.csv"), "--K", "2", "3", "--stores", self.path("stores.csv"),
                                       "--covariates", "z1", "z2", "--covariate-penalty", "1")
        self.assertEqual(code, 0, err)
        self.assertIn("covariates of membership, ridge-penalised (L = 1 per sd): log L is not a maximum likelihood", out)
        self.assertIn("no likelihood-ratio test: the fit is penalised", out)
        for model in self.results()["models"][1:]:
            self.assertEqual(model["covariate_penalty"], 1.0)
            self.assertLess(model["penalised_loglik"], model["loglik"])
            self.assertIsNone(model["without_covariates"]["p"])
        self.write("results.json", "earlier results\n")
        self.assert_refused("argument --covariate-penalty: --covariate-penalty must be a number >= 0",
                            self.path("panel.csv"), "--stores", self.path("stores.csv"), "--covariates", "z1",
                            "--covariate-penalty", "-1")
        self.assert_refused("--covariate-penalty L is a ridge on the gamma of covariates of membership",
                            self.path("panel.csv"), "--covariate-penalty", "1")

    def test_a_dataframe_gives_the_fit_of_the_same_file(self):
        try:
            import pandas as pd
        except ImportError:
            self.skipTest("pandas is not installed")
        self.write_panel(long=True)
        frame, stores = pd.read_csv(self.path("panel.csv")), pd.read_csv(self.path("stores.csv"))
        fit = quietly(T.fit_frame, frame, 2, stores=stores.set_index("store"), covariates=["z1", "z2"], n_init=3)
        results = quietly(T.analyse, self.path("panel.csv"), Ks=(2,), n_init=3, sigma="segment",
                          stores=self.path("stores.csv"), covariates=["z1", "z2"])
        self.assertAlmostEqual(fit.loglik, results["models"][0]["loglik"], delta=1e-9 * abs(fit.loglik))
        self.assertEqual(list(fit.posterior.index[:2]), ["S1", "S2"])
        self.assertEqual(fit.segment.shape, (60,))
        with self.assertRaisesRegex(E.InputError, "DataFrame: line 3, column 'sales': must be positive"):
            bad = frame.copy()
            bad.loc[1, "sales"] = -1.0
            T.fit_frame(bad, 2)


@unittest.skipUnless(os.path.exists(ORANGE_JUICE), "the orange-juice panel orange_juice.csv is in neither data/ nor ../shared/data/")
class OrangeJuiceCovariates(unittest.TestCase):
    """The orange-juice stores' demographics: every seed reaches the same maximum with
    covariates, above the fit without them; the most price-sensitive segment's stores have
    lower home values than the least sensitive's (Hoch et al. 1995)."""

    def test_same_maximum_every_seed_and_the_literatures_sign(self):
        stores = os.path.join(os.path.dirname(ORANGE_JUICE), "orange_juice_stores.csv")
        data = T.load(ORANGE_JUICE, x=["deal", "feat"])
        names = ("educ", "ethnic", "hhlarge", "hval150", "cpdist5")
        z = T.read_stores(stores, data.stores, names)
        stats = E._statistics(data.sums, E._model("segment", True, names), data.coefficients, z)
        fits = [quietly(E._search, stats, 2, E.Search(seed=seed)) for seed in range(3)]
        self.assertLess(np.ptp([fit.loglik for fit in fits]), 1e-6)
        fit = fits[0]
        self.assertGreater(fit.loglik, fit.without_covariates.loglik + 10)
        profiles = covariates._membership_summary(fit)["profiles"]
        self.assertLess(profiles[0][names.index("hval150")], profiles[-1][names.index("hval150")])


    def test_all_eleven_reach_the_maximum_a_brute_force_search_finds(self):
        """All eleven demographics, K = 3, sigma per segment, store effects, deal and feat: the
        maximum that a brute-force search finds (600 random starts of three kinds, 40
        SQUAREM steps each, the best 25 run to their end; log L -4771.5242, segments of 12, 34 and
        37 stores). It lies a move away from lower maxima only, not from the best one the starts
        reach (-4772.3897, segments of 3, 34 and 46 stores)."""
        stores = os.path.join(os.path.dirname(ORANGE_JUICE), "orange_juice_stores.csv")
        data = T.load(ORANGE_JUICE, x=["deal", "feat"])
        names = ("age60", "educ", "ethnic", "income", "hhlarge", "workwom", "hval150", "sstrdist", "sstrvol",
                 "cpdist5", "cpwvol5")
        z = T.read_stores(stores, data.stores, names)
        stats = E._statistics(data.sums, E._model("segment", True, names), data.coefficients, z)
        fit = quietly(E._search, stats, 3, E.Search(seed=1))         # seeds 0 and 2 too; 1 is the quickest
        self.assertGreater(fit.loglik, -4771.5242 - 1e-4)
        self.assertEqual(sorted(np.round(fit.W.sum(axis=0)).tolist()), [12, 34, 37])


class SeparatedSays(unittest.TestCase):
    def test_a_separated_fit_says_what_the_penalised_one_gives(self):
        """Where the covariates separate a segment of the ML fit, results.json's penalised is the fit
        with L = COVARIATE_PENALTY from it (finite gamma and standard errors, log L below the ML
        supremum), and the report says so; a fit that is not separated has none."""
        from em_sales_tools.report import _membership_lines
        from test_em_sales import separated_panel
        ml = quietly(E._search, separated_panel(), 2, E.Search(seed=0))
        said = covariates._penalised_summary(ml)["penalised"]
        self.assertEqual(said["covariate_penalty"], covariates.COVARIATE_PENALTY)
        self.assertLess(said["largest_gamma"], E.GAMMA_LIMIT)
        self.assertTrue(said["se_finite"])
        self.assertLess(said["loglik"], ml.loglik)
        self.assertLess(said["penalised_loglik"], said["loglik"])
        model = {**E._model_summary(ml), **covariates._membership_summary(ml), "penalised": said}
        self.assertIn("! with a ridge on gamma (--covariate-penalty 1) the maximum is finite: log L",
                      "\n".join(_membership_lines(model)))
        panel, stats = covariate_panel(8, N=80, sigma="segment")
        self.assertEqual(covariates._penalised_summary(quietly(E._search, stats, 2, E.Search(seed=0))), {})


class NewStores(unittest.TestCase):
    def test_new_stores_prior_and_posterior(self):
        """A store of the panel given as a new store: its prior is the fit's, and with all its
        weeks its posterior is the fit's posterior."""
        panel, stats = covariate_panel(8, N=80, sigma="segment")
        fit = quietly(E._search, stats, 3, E.Search(seed=0))
        new = T.predict(fit, panel.covariates[:5], panel.y[:, :5], panel.X)
        np.testing.assert_allclose(new.prior, fit.prior[:5], atol=1e-12)
        np.testing.assert_allclose(new.posterior, fit.W[:5], atol=1e-9)
        self.assertEqual(new.segment.tolist(), (fit.W[:5].argmax(axis=1) + 1).tolist())
        np.testing.assert_allclose(fit.log_sales(panel.X[:2]), panel.X[:2] @ fit.theta.T)
        with self.assertRaisesRegex(ValueError, "give covariates"):
            T.predict(fit)


class PenalisedRefit(unittest.TestCase):
    def test_the_refit_from_a_separated_fit_reaches_the_penalised_maximum(self):
        """The refit from the ML fit (_penalised, what the report offers) reaches the maximum the
        penalised search finds, and a larger L shrinks gamma further."""
        ml = quietly(E._search, separated_panel(), 2, E.Search(seed=0))
        fit = quietly(E._search, separated_panel(1.0), 2, E.Search(seed=0))
        refit = quietly(covariates._penalised, ml, 1.0)
        self.assertAlmostEqual(refit.penalised_loglik, fit.penalised_loglik, delta=1e-8 * abs(fit.loglik))
        np.testing.assert_allclose(refit.gamma, fit.gamma, atol=1e-5)
        stronger = quietly(covariates._penalised, ml, 10.0)
        self.assertLess(np.abs(stronger.gamma).max(), np.abs(fit.gamma).max())
