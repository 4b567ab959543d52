"""The analysis of real panels: the orange juice, and a sweep's results."""
import math
import os
import unittest
import unittest.mock
import warnings

import numpy as np

from tests.common import (ORANGE_JUICE, E, S, T, model_stats)


@unittest.skipUnless(os.path.exists(ORANGE_JUICE), "the orange-juice panel orange_juice.csv is in neither data/ nor ../shared/data/")
class OrangeJuice(unittest.TestCase):
    """Dominick's orange juice (83 stores, 121 weeks): every seed reaches the same maximum, at
    least as high as flexmix's (stepFlexmix, nrep = 10, sigma per segment, measured: README)."""
    FLEXMIX_SEGMENT = {1: -9403.375, 2: -7516.762, 3: -6801.487, 4: -6411.547, 5: -6258.672}

    @classmethod
    def setUpClass(cls):
        cls.sums = T.load(ORANGE_JUICE, x=["deal", "feat"]).sums
        cls.plain = T.load(ORANGE_JUICE).sums

    def test_at_least_flexmix_and_the_same_for_every_seed(self):
        stats = model_stats(self.plain, "segment")
        for K, theirs in self.FLEXMIX_SEGMENT.items():
            values = [E._search(stats, K, E.Search(seed=seed)).loglik for seed in range(3)]
            self.assertGreaterEqual(min(values), theirs - 1e-3, K)
            self.assertLess(np.ptp(values), 1e-6, (K, values))

    def test_store_effects_with_promotions(self):
        stats = model_stats(self.sums, "segment", store_effects=True)
        self.assertEqual(stats.P, 3)                                   # log price, deal, feat
        fits = [E._search(stats, 3, E.Search(seed=seed)) for seed in range(3)]
        self.assertLess(np.ptp([fit.loglik for fit in fits]), 1e-6)
        elasticity = fits[0].theta[:, 0]
        self.assertTrue(np.all(elasticity < -1) and np.all(np.diff(elasticity) > 0), elasticity)


class SweepResults(unittest.TestCase):
    def test_overfitting_is_said_plainly(self):
        """K = 8 for two true segments of 150 stores each: some segments duplicate others or hold
        almost no store. The notes, the warning and the report say so, with n/a standard errors."""
        panel = S.simulate(N=300, T=52, theta=[(10, -1), (11, -2)], pi=[0.5, 0.5], seed=0)
        import tempfile
        with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings(record=True) as caught:
            S.write_csv(os.path.join(folder, "p.csv"), panel.price, panel.sales)
            warnings.simplefilter("always")
            results = T.analyse(os.path.join(folder, "p.csv"), Ks=(2, 8), n_init=3)
        eight = results["models"][1]
        self.assertTrue(eight["unsupported"])
        self.assertEqual(eight["supported_K"], 8 - len(eight["unsupported"]))
        for c, why in eight["unsupported"].items():
            self.assertRegex(why, "holds (almost )?no store|is the same as segment \\d")
            self.assertTrue(all(math.isnan(v) for v in eight["se"]["theta"][int(c) - 1]))  # n/a, not huge
        note = f"the data support at most {eight['supported_K']} segments"
        self.assertTrue(any(note in str(w.message) for w in caught))
        self.assertIn(note + " (n/a: no standard error means anything there)", T.report(results))
        self.assertEqual(results["models"][0]["unsupported"], {})
