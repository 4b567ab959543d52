"""Prices on Dominick's orange juice (orange_juice_brands.csv, dominicks_zones.csv): for brand 1
(Tropicana Premium 64 oz) and two more, at BIC's K of 1..4 (sigma per segment, store effects,
deal and feat), with each store's margin (the file's `profit`): the gain of one uniform change,
one a segment, one a zone of the chain's 16, one a tier of its 4, and one a store, with their
90% intervals, every price within 10% of today's, with and without the chain's average price
held (Montgomery's constraint); and brand 1 again with the other brands' log prices as
regressors (a one-brand model counts a shopper lost to a price rise as lost).

    python bench/prices_oj.py                      # brands 1, 5 and 9; a minute or two
    python bench/prices_oj.py --brands 1 --draws 100

Montgomery (1997) on these data, his model (hierarchical Bayes, cross-brand prices, the category's
11 brands) and constraints (each price within 10%, the chain's average price and revenue held):
store-specific prices +2.74% of category gross profit, one re-optimised chain-wide price +0.44%.
"""
import argparse
import csv
import os
import tempfile
import warnings

import common
import em_sales_tools as T
from em_sales_tools import prices as PR


def brand_file(path, brand, folder):
    """The brand's rows of the eleven-brand file, as a file of its own."""
    target = os.path.join(folder, f"brand{brand}.csv")
    with open(path, newline="") as source, open(target, "w", newline="") as out:
        rows = csv.reader(source)
        header = next(rows)
        at = header.index("brand")
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(row for row in rows if row[at] == str(brand))
    return target


def gains(path, zones, zone, x, hold, draws):
    """analyse's pricing at BIC's K of 1..4 for one zone column and one constraint."""
    settings = PR.Settings(margin="profit", zones=zones, zone=zone, hold_average_price=hold, draws=draws)
    results = T.analyse(path, Ks=(1, 2, 3, 4), sigma="segment", store_effects=True, x=x, prices=settings)
    return results["pricing"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--brands", nargs="+", default=["1", "5", "9"])
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--data", help="orange_juice_brands.csv (default: the data folders)")
    parser.add_argument("--zones", help="dominicks_zones.csv (default: the data folders)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    data = common.data_file("orange_juice_brands.csv", args.data)
    zones = common.data_file("dominicks_zones.csv", args.zones)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for brand in args.brands:
            path = brand_file(data, brand, folder)
            runs = [("deal feat", ["deal", "feat"])]
            if brand == "1":
                runs.append(("+ other brands' log prices", ["deal", "feat"] + [f"log(price{b})" for b in range(2, 12)]))
            for label, x in runs:
                for hold in (False, True):
                    by_zone = gains(path, zones, "zone", x, hold, args.draws)
                    by_tier = gains(path, zones, "tier", x, hold, args.draws)
                    policies = dict(by_zone["policies"], tiers=by_tier["policies"]["zones"])
                    cells = []
                    for name in ("uniform", "segments", "zones", "tiers", "stores"):
                        entry = policies[name]
                        low, high = entry.get("gain_percent_interval", (0.0, 0.0))
                        cells.append(f"{entry['gain_percent']:+.2f}% [{low:+.2f}, {high:+.2f}]")
                    rows.append([brand, label, "held" if hold else "free", by_zone["K"]] + cells)
    print("Gain over today's prices, percent of the brand's expected profit [90% interval]; every price within 10%:")
    print(common.table(["brand", "regressors", "avg price", "K", "uniform", "segments", "zones (16)", "tiers (4)",
                        "stores"], rows))


if __name__ == "__main__":
    main()
