"""From segments to prices: what each segment, zone or store should charge, the profit it adds
over today's prices, and how sure that is.

A store's demand at price p is its expected sales under the fit, its posterior mix of segments:

    E[S_i(p)] = sum_c w_ic exp(level_ic + x_i'theta_c + beta_c log p + sigma_c^2 / 2),

x_i at the store's regular week (the median of each regressor over its weeks without a deal),
level_ic the store's own level within segment c under store effects (its mean log sales less its
mean regressors times theta_c), else the segment's intercept. With p = r_i (1 + d) for the store's
regular price r_i, E[S_i] = sum_c A_ic (1 + d)^beta_c, and its profit is (p - cost_i) E[S_i]. A
policy is one relative change d for each of its groups (every store; each segment; each zone;
each store), each within +-max_change, and maximises the chain's profit; with
hold_average_price, the chain's average price weighted by each store's expected sales at today's
prices (a fixed-weight index) stays today's. Every policy contains the simpler ones, so none
earns less than status quo (stores >= segments >= uniform, stores >= zones). Uncertainty: draws of
the parameters from their estimated distribution (the observed information) and of each store's
segment from its posterior, each draw's gain of the recommended prices and its own re-optimised
changes.
"""
import csv
import io
import os
from typing import NamedTuple

import numpy as np

from em_sales import (STORE_NAMES, InputError, _cells, _check_values, _e_step, _escaped, _moved, _read_text,
                      _score_hessian, _shown, _table)
from em_sales_tools.files import _is_parquet, read_long

MAX_CHANGE = 0.10        # every store's price within this share of its regular price (Montgomery's bound)
DRAWS = 200              # draws of the parameters and of the stores' segments, for the intervals
INTERVAL = 0.90          # the intervals' coverage
GRID_POINTS = 21         # each group's change first searched on this grid of [-max, max] ...
NEWTON_STEPS = 6         # ... then refined by safeguarded Newton steps between the best point's neighbours
MULTIPLIER_STEPS = 40    # steps on the multiplier of the average-price constraint (regula falsi), in a bracket
BRACKET_STEPS = 60       # found by doubling at most this often
AT_BOUND = 1e-4          # a change within this share of max_change of a bound sits at it
NO_CHANGE = 1e-9         # a change within this share of max_change of 0 is none (the solver's rounding)
DEAL = "deal"            # a long file's column of promotions (any case): regular weeks are those at 0
POLICIES = ("status_quo", "uniform", "segments", "zones", "stores")


class Settings(NamedTuple):
    """What prices to set: cost (a long file's column of unit cost, in the price's unit) or margin
    (of gross margin, percent of the price: cost = price (1 - margin / 100)); zones (a CSV file, a
    store column and `zone`, the chain's zones or tiers: one change a zone); max_change (each
    store's price within this share of its regular price); hold_average_price; draws (for the
    intervals; 0 none); seed (of the draws); K (the fit's, else BIC's)."""
    cost: str = None
    margin: str = None
    zones: str = None
    zone: str = "zone"
    max_change: float = MAX_CHANGE
    hold_average_price: bool = False
    draws: int = DRAWS
    seed: int = 0
    K: int = None

    def checked(self):
        if (self.cost is None) == (self.margin is None):
            raise InputError("prices need the unit cost: give --cost COL or --margin COL (one of them)")
        _share(self.max_change)
        if isinstance(self.draws, bool) or not isinstance(self.draws, int) or not 0 <= self.draws <= 100_000:
            raise InputError(f"draws must be a whole number from 0 to 100,000; got {self.draws!r}")
        return self


def _share(value):
    """max_change: a share between 0 and 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise InputError(f"max_change must be a share between 0 and 1 (0.1: every price within 10% of today's); "
                         f"got {value!r}")
    return value


class Inputs(NamedTuple):
    """What the analysis needs to set prices: the Settings and each store's Regular week."""
    settings: "Settings"
    regular: "Regular"


class Regular(NamedTuple):
    """Each store's regular week: price (N,) the median of its prices in weeks without a deal (all
    its weeks where there is no deal column, or it is always on deal), cost (N,) the median of its
    unit cost over the same weeks, x (N, q) the median of each regressor over them (in the model's
    units: log(COL) as its log), weeks (N,) how many weeks that is."""
    stores: list
    price: np.ndarray
    cost: np.ndarray
    x: np.ndarray
    weeks: np.ndarray


# ---------------------------------------------------------------------------------------------
# Regular prices and costs, from the panel's rows
# ---------------------------------------------------------------------------------------------

def regular_weeks(path, x, settings, columns=None):
    """The Regular of a long CSV file (or a pandas DataFrame) of one panel, read by the exact
    reader: every store's regular price, cost and regressors. A cost or margin that is missing or
    not a number, a cost of 0 or less, or a margin of 100 or more (no cost left) is refused with its
    line and column; a negative margin (a loss leader) is fine."""
    text = None
    if hasattr(path, "to_csv"):
        path, text = "DataFrame", path.to_csv(index=False)
    columns = {role: name for role, name in (columns or {}).items() if name}
    if _is_parquet(path):
        raise InputError(f"{_escaped(path)}: prices from a Parquet file go through --by or a CSV file of one panel")
    role, name = ("cost", settings.cost) if settings.cost is not None else ("margin", settings.margin)
    text = _read_text(path) if text is None else text
    table = _table(path, text)
    deal = next((cell for cell in table.header if cell.strip().lower() == DEAL), None)
    other = [(role, name)] + ([(DEAL, deal)] if deal else [])
    panel = read_long(path, x=list(x), text=text, other=other, **columns)
    unit = panel.other[:, 0]
    _check_unit(table, name, unit, panel.lines, role)
    cost = panel.price * (1 - unit / 100) if role == "margin" else unit
    regular = panel.other[:, 1] == 0 if len(other) > 1 else np.ones(len(unit), dtype=bool)
    return _medians(panel.stores, panel.store, regular, panel.price, cost, panel.x)


def regular_weeks_by(path, x, settings, columns=None, by=None):
    """{group: Regular} (one group, None, without by) of a long CSV or Parquet file, by DuckDB
    (the engine's path: large files, --by): the same medians as regular_weeks. A bad cost or
    margin is named by group, store and week."""
    from em_sales_tools.engine import _engine_connection, _engine_source, _logs
    import tempfile
    columns = {role: name for role, name in (columns or {}).items() if name}
    role, name = ("cost", settings.cost) if settings.cost is not None else ("margin", settings.margin)
    with tempfile.TemporaryDirectory(prefix="em_sales_") as folder:
        connection, where = _engine_connection(path, columns, list(x), by, folder)
        connection.close()
        deal = next((h for h in where["header"] if h.strip().lower() == DEAL), None)
        extra = list(x) + [name] + ([deal] if deal and deal not in x else [])
        os.mkdir(os.path.join(folder, "again"))
        connection, where = _engine_connection(path, columns, extra, by, os.path.join(folder, "again"))
        with connection:
            source = _engine_source(path, where, by, careful=True)
            Q, logs = len(x), _logs(x)
            unit = f"x{Q}"
            bad = f"{unit} IS NULL OR NOT isfinite({unit}) OR " + (f"{unit} <= 0" if role == "cost" else f"{unit} >= 100")
            found = connection.execute(f"SELECT {'grp, ' if by else ''}store, week, {unit} FROM {source} WHERE {bad} "
                                       "LIMIT 1").fetchone()
            if found:
                *group, store, week, value = found
                words = ("is missing or not a number" if value is None or not np.isfinite(value) else
                         f"is {value:g}: a unit cost must be above 0" if role == "cost" else
                         f"is {value:g}: a margin of 100% or more of the price leaves no cost")
                raise InputError(f"{_escaped(path)}: " + (f"{by} '{_shown(str(group[0]))}', " if by else "")
                                 + f"store '{_shown(str(store))}', week '{_shown(str(week))}': '{_shown(name)}' {words}")
            cost = unit if role == "cost" else f"price * (1 - {unit} / 100)"
            regular = f"x{list(x).index(deal) if deal in x else Q + 1} = 0" if deal else "true"
            values = ["price", cost] + [f"ln(x{j})" if j in logs else f"x{j}" for j in range(Q)]
            terms = [f"coalesce(median({value}) FILTER (WHERE {regular}), median({value})) AS v{k}"
                     for k, value in enumerate(values)]
            terms.append(f"coalesce(count(*) FILTER (WHERE {regular}), 0) AS regular_weeks")
            rows = connection.execute(f"SELECT {'CAST(grp AS VARCHAR), ' if by else 'NULL, '}CAST(store AS VARCHAR), "
                                      f"{', '.join(terms)} FROM {source} GROUP BY ALL ORDER BY 1, 2").fetchall()
    out = {}
    for group, store, *numbers in rows:
        out.setdefault(group, []).append((store, numbers))
    return {group: Regular([store for store, _ in each], np.array([v[0] for _, v in each], dtype=float),
                           np.array([v[1] for _, v in each], dtype=float),
                           np.array([v[2:2 + Q] for _, v in each], dtype=float).reshape(len(each), Q),
                           np.array([v[2 + Q] for _, v in each], dtype=float))
            for group, each in out.items()}


def _check_unit(table, name, values, lines, role):
    """A cost or margin column's refusals, by line and column."""
    _check_values(table, name, values, lines, positive=False)
    bad = values <= 0 if role == "cost" else values >= 100
    if bad.any():
        row = int(np.argmax(bad))
        words = (f"a unit cost must be above 0; got {values[row]:g}" if role == "cost" else
                 f"a margin of {values[row]:g}% of the price leaves no cost (a margin is below 100; a negative one, "
                 "a loss, is fine)")
        raise InputError(f"{table.path}: line {lines[row]}, column '{name}': {words}")


def _medians(stores, store, regular, price, cost, x):
    """Regular from the rows: each store's medians over its regular weeks (all its weeks where it
    has none)."""
    N = len(stores)
    has = np.bincount(store, regular, N) > 0
    use = regular | ~has[store]
    values = np.column_stack([price, cost, x])[use]
    keys = store[use]
    order = np.lexsort((np.zeros(len(keys)), keys))
    keys, values = keys[order], values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(keys)) + 1]
    medians = np.array([np.median(block, axis=0) for block in np.split(values, starts[1:])])
    found = np.full((N, values.shape[1]), np.nan)
    found[keys[starts]] = medians
    return Regular(list(stores), found[:, 0], found[:, 1], found[:, 2:], np.bincount(keys, None, N))


def read_zones(path, stores, zone="zone"):
    """Each store's zone label, in the order of `stores`, from a CSV file with a store column and
    a column `zone`; refused by its label where a store of the panel has no zone."""
    table = _table(path, _read_text(path))
    lower = [name.lower() for name in table.header]
    at = next((j for j, name in enumerate(lower) if name in STORE_NAMES), None)
    if at is None or zone not in table.header:
        raise InputError(f"{table.path}: line {table.header_line}: a zones file needs a store column and a column "
                         f"'{_shown(zone)}' (--zone COL); the header has: {', '.join(map(_shown, table.header))}")
    j = table.header.index(zone)
    found = {}
    for line, cells in table.rows:
        cells = _cells(table, line, cells)
        if cells[j].strip():
            found.setdefault(cells[at].strip(), cells[j].strip())
    missing = [store for store in stores if str(store) not in found]
    if missing:
        raise InputError(f"{table.path}: store '{_shown(str(missing[0]))}' of the panel has no zone here "
                         f"({len(missing)} of its {len(stores)} stores have none)")
    return [found[str(store)] for store in stores]


# ---------------------------------------------------------------------------------------------
# Demand: each store's expected sales at a change of its regular price
# ---------------------------------------------------------------------------------------------

def _bases(fit, data, regular, theta, sigma):
    """(N, K): log of store i's expected sales in segment c at its regular week, log
    E[S_ic(r_i)] = level_ic + x_i'theta_c + sigma_c^2 / 2, for parameters theta (K, P) and sigma
    (K,) of the fit's model (its columns of X)."""
    stats = fit._stats
    columns = list(stats.columns)
    N = len(regular.price)
    X = np.column_stack([np.ones(N), np.log(regular.price), regular.x])[:, columns]   # X at the regular week
    base = X @ theta.T
    if fit.model.store_effects:                  # the store's level within each segment (within ML)
        n = data.sums.n[:, None]
        base += data.sums.sy[:, None] / n - (data.sums.sx[:, columns] / n) @ theta.T
    return base + sigma ** 2 / 2


def _sales(A, beta, d):
    """Expected sales (B, N) at changes d (B, N): sum_c A_ic (1 + d_i)^beta_c."""
    return np.einsum("bnk,bnk->bn", A, np.exp(beta[:, None, :] * np.log1p(d)[:, :, None]))


def _profits(A, beta, price, cost, d):
    """Each store's profit (B, N) at changes d (B, N) of its regular price: (p - cost) E[S]."""
    return (price * (1 + d) - cost) * _sales(A, beta, d)


# ---------------------------------------------------------------------------------------------
# The optimum of a policy: one change a group, each within the bounds
# ---------------------------------------------------------------------------------------------

def _grouped(values, groups, G):
    """Sums (B, G) of values (B, N) over each group's stores."""
    B = len(values)
    index = (np.arange(B)[:, None] * G + groups[None, :]).ravel()
    return np.bincount(index, values.ravel(), B * G).reshape(B, G)


def _slopes(A, beta, price, cost, d):
    """Each store's profit's first and second derivatives in d (B, N each), at changes d (B, N):
        P'  = sum_c A_ic u^(b_c - 1) (r_i u (1 + b_c) - cost_i b_c),
        P'' = sum_c A_ic b_c u^(b_c - 2) (r_i u (1 + b_c) - cost_i (b_c - 1)),   u = 1 + d."""
    u = 1 + d
    log_u, ru = np.log(u), price * u
    first, second = np.zeros(d.shape), np.zeros(d.shape)
    for c in range(beta.shape[1]):               # a segment at a time: (B, N) arrays, few of them
        b = beta[:, c:c + 1]
        power = A[:, :, c] * np.exp((b - 2) * log_u)                            # A u^(b - 2)
        first += power * u * (ru * (1 + b) - cost * b)
        second += power * b * (ru * (1 + b) - cost * (b - 1))
    return first, second


def _solve(A, beta, price, cost, groups, G, bound, weights, multiplier, grid_profits):
    """The changes (B, G) maximising each group's sum_i (profit_i(d) - multiplier weights_i d) over
    |d| <= bound: the best point of a grid (grid_profits: the groups' profits there, (B, G,
    points)), then safeguarded Newton steps within its neighbours (bisection where the objective
    is not concave there or a step would leave them)."""
    grid = np.linspace(-bound, bound, GRID_POINTS)
    pull = multiplier[:, None] * _grouped(weights, groups, G) if np.ndim(weights) else np.zeros(grid_profits.shape[:2])
    best = (grid_profits - pull[:, :, None] * grid).argmax(axis=-1)
    low, high = grid[np.maximum(best - 1, 0)], grid[np.minimum(best + 1, GRID_POINTS - 1)]
    x = grid[best]
    for _ in range(NEWTON_STEPS):
        first, second = (_grouped(part, groups, G) for part in _slopes(A, beta, price, cost, x[:, groups]))
        first = first - pull
        low, high = np.where(first > 0, x, low), np.where(first > 0, high, x)
        with np.errstate(divide="ignore", invalid="ignore"):
            newton = x - first / second
        x = np.where((second < 0) & (newton > low) & (newton < high), newton, (low + high) / 2)

    def objective(D):
        return _grouped(_profits(A, beta, price, cost, D[:, groups]), groups, G) - pull * D
    at_grid = grid[best]                         # a bound, or the grid's best, where it is no worse
    D = np.clip(np.where(objective(at_grid) >= objective(x), at_grid, x), -bound, bound)
    return np.where(np.abs(D) < NO_CHANGE * bound, 0.0, D)


def _grid_profits(A, beta, price, cost, groups, G, bound):
    """Each group's profit (B, G, points) at each point of the grid of changes."""
    B, N = A.shape[:2]
    return np.stack([_grouped(_profits(A, beta, price, cost, np.full((B, N), point)), groups, G)
                     for point in np.linspace(-bound, bound, GRID_POINTS)], axis=-1)


def _optimise(A, beta, price, cost, groups, G, bound, hold):
    """The changes (B, G) of a policy that maximise the chain's profit, each within +-bound; with
    hold, the average price weighted by each store's expected sales at today's prices is today's:
    sum_i q_i r_i d_group(i) = 0. The constraint is met through its multiplier (each group's
    problem, given it, is one of one variable), found by bisection: a larger multiplier never
    raises a change."""
    B = len(A)
    grid = _grid_profits(A, beta, price, cost, groups, G, bound)
    if not hold:
        return _solve(A, beta, price, cost, groups, G, bound, 0.0, np.zeros(B), grid)
    weights = _sales(A, beta, np.zeros((B, len(price)))) * price                    # q_i r_i

    def excess(multiplier):
        D = _solve(A, beta, price, cost, groups, G, bound, weights, multiplier, grid)
        return (weights * D[:, groups]).sum(axis=1), D
    scale = np.abs(_profits(A, beta, price, cost, np.zeros((B, len(price)))).sum(axis=1)) / weights.sum(axis=1)
    low, high = -scale, scale
    above, below = excess(high)[0], excess(low)[0]
    for _ in range(BRACKET_STEPS):               # a bracket: excess(low) >= 0 >= excess(high)
        up, down = above > 0, below < 0
        if not (up.any() or down.any()):
            break
        high, low = np.where(up, 2 * high, high), np.where(down, 2 * low, low)
        above, below = excess(high)[0] if up.any() else above, excess(low)[0] if down.any() else below
    for step in range(MULTIPLIER_STEPS):         # the Illinois method (regula falsi), bisection every 4th step
        with np.errstate(divide="ignore", invalid="ignore"):
            middle = high - above * (high - low) / (above - below)
        if step % 4 == 3:
            middle = np.full(B, np.nan)
        middle = np.where(np.isfinite(middle) & (middle > low) & (middle < high), middle, (low + high) / 2)
        value = excess(middle)[0]
        up = value > 0                           # the root lies above middle
        low, below = np.where(up, middle, low), np.where(up, value, below / 2 if step else below)
        high, above = np.where(up, high, middle), np.where(up, above / 2, value)
    return excess(np.where(np.abs(below) < np.abs(above), low, high))[1]


# ---------------------------------------------------------------------------------------------
# Every policy, its gain, and how sure that is
# ---------------------------------------------------------------------------------------------

def price_policies(fit, data, regular, settings, zones=None):
    """results.json's pricing of one fit (a FrameFit of K segments): each policy's changes (per
    group), expected profit, gain over status quo (and in percent), the interval and the
    probability of a positive gain of its recommended prices over the draws, the intervals of its
    changes re-optimised per draw, and its groups at a bound; and each store's table for
    --prices. (pricing, stores)."""
    bound, hold = settings.max_change, settings.hold_average_price
    K, N = fit.K, len(regular.price)
    if not np.all(np.isfinite(regular.price)) or not np.all(np.isfinite(regular.cost)):
        raise InputError("a store has no week with a price and a cost to set its regular price from")
    beta = fit.theta[:, fit._stats.price]
    A = (fit.W * np.exp(_bases(fit, data, regular, fit.theta, fit.sigma)))[None]
    segment = fit.W.argmax(axis=1)
    held = np.unique(segment)                    # the segments most likely for some store
    groups = {"uniform": (np.zeros(N, dtype=int), ["all stores"]),
              "segments": (np.searchsorted(held, segment), [f"segment {c + 1}" for c in held])}
    if zones is not None:
        labels = sorted(set(zones), key=lambda label: (len(label), label))
        groups["zones"] = (np.array([labels.index(z) for z in zones]), [f"zone {label}" for label in labels])
    groups["stores"] = (np.arange(N), [str(store) for store in regular.stores])
    changes = _nested(A, beta[None], regular, groups, bound, hold)
    profit = {name: float(_profits(A, beta[None], regular.price, regular.cost, D[:, groups[name][0]]
                                   if name != "status_quo" else np.zeros((1, N))).sum())
              for name, D in changes.items()}
    draws = _draws(fit, data, regular, settings, groups, changes) if settings.draws else {}
    base = profit["status_quo"]
    policies = {}
    for name, D in changes.items():
        entry = {"profit": profit[name], "gain": profit[name] - base, "gain_percent": 100 * (profit[name] - base) / base}
        if name != "status_quo":
            labels = groups[name][1]
            entry["changes"] = {label: float(D[0, g]) for g, label in enumerate(labels)}
            entry["bound"] = [label for g, label in enumerate(labels) if abs(D[0, g]) >= bound * (1 - AT_BOUND)]
            entry.update(draws.get(name, {}))
        policies[name] = entry
    stores = {"store": list(regular.stores), "segment": (segment + 1).tolist(), "zone": zones,
              "regular_price": regular.price.tolist(), "cost": regular.cost.tolist()}
    for name in groups:
        stores[f"price_{name}"] = (regular.price * (1 + changes[name][0, groups[name][0]])).tolist()
    stores["profit_change_stores"] = (_profits(A, beta[None], regular.price, regular.cost,
                                               changes["stores"][:, groups["stores"][0]])
                                      - _profits(A, beta[None], regular.price, regular.cost, np.zeros((1, N))))[0].tolist()
    pricing = {"K": K, "max_change": bound, "hold_average_price": hold, "draws": settings.draws,
               "elasticities": beta.tolist(), "policies": policies,
               "segments": _segment_table(segment, K, beta, regular, stores)}
    return pricing, stores


def _nested(A, beta, regular, groups, bound, hold):
    """Each policy's optimal changes (B, G) given the others: status quo none; uniform, segments,
    zones, stores in turn, each the better of its own optimum and the best simpler policy's
    changes as its own (so that a finer policy never earns less)."""
    out = {"status_quo": np.zeros((len(A), 1))}
    coarser = {"uniform": [], "segments": ["uniform"], "zones": ["uniform"], "stores": ["segments", "zones"]}

    def profit(name, D):
        return _profits(A, beta, regular.price, regular.cost, D[:, groups[name][0]]).sum(axis=1)
    for name, (group, labels) in groups.items():
        D = _optimise(A, beta, regular.price, regular.cost, group, len(labels), bound, hold)
        first = np.unique(group, return_index=True)[1]                 # a store of each group
        for simpler in coarser[name]:
            if simpler in out:                   # the simpler policy's changes, store by store, as this one's
                mapped = out[simpler][:, groups[simpler][0]]
                as_own = mapped[:, first]
                if np.array_equal(as_own[:, group], mapped):        # one change a group of this policy
                    D = np.where((profit(name, as_own) > profit(name, D))[:, None], as_own, D)
        out[name] = D
    return out


def _draws(fit, data, regular, settings, groups, changes):
    """Over settings.draws draws of the parameters (from their estimated normal distribution, the
    inverse of the observed information, in theta, log sigma and the membership's free
    parameters) and of each store's segment (from its posterior at the drawn parameters; with
    store effects its level within the segment too, normal with variance sigma_c^2 / n_i): each
    policy's gain of its recommended changes (interval, probability above 0), and its changes
    re-optimised per draw (intervals). {policy: {...}}; {} where the information is not positive
    definite (no intervals then)."""
    stats = fit._stats
    run = (fit.theta, fit.membership, fit.sigma)
    H = _score_hessian(stats, *run, fit.W)[1]
    keep = np.ones(len(H), dtype=bool)           # a segment the covariates separate: its gamma held
    keep[len(H) - stats.membership.df(fit.K):] = stats.membership.identified(fit.membership)
    values, vectors = np.linalg.eigh(-H[np.ix_(keep, keep)])
    if not values.min() > 0:
        return {}
    rng = np.random.default_rng(settings.seed)
    B, N, K = settings.draws, len(regular.price), fit.K
    steps = np.zeros((B, len(H)))
    steps[:, keep] = rng.standard_normal((B, len(values))) / np.sqrt(values) @ vectors.T
    A, beta = np.empty((B, N, K)), np.empty((B, K))
    for b in range(B):
        theta, member, sigma = _moved(stats, *run, steps[b])
        W = _e_step(stats, theta, member, sigma)[0]
        chosen = (rng.random(N)[:, None] > np.cumsum(W, axis=1)).sum(axis=1).clip(0, K - 1)
        base = _bases(fit, data, regular, theta, sigma)
        if fit.model.store_effects:
            base = base + rng.standard_normal((N, 1)) * sigma[None, :] / np.sqrt(data.sums.n)[:, None]
        A[b] = np.eye(K)[chosen] * np.exp(base)
        beta[b] = theta[:, stats.price]
    zero = _profits(A, beta, regular.price, regular.cost, np.zeros((B, N))).sum(axis=1)
    redone = _nested(A, beta, regular, groups, settings.max_change, settings.hold_average_price)
    out, tail = {}, (1 - INTERVAL) / 2
    for name, (group, labels) in groups.items():
        gain = _profits(A, beta, regular.price, regular.cost, np.broadcast_to(changes[name][0, group], (B, N))).sum(axis=1) - zero
        out[name] = {"gain_interval": np.quantile(gain, [tail, 1 - tail]).tolist(),
                     "gain_percent_interval": (100 * np.quantile(gain / zero, [tail, 1 - tail])).tolist(),
                     "p_gain": float((gain > 0).mean()),
                     "change_intervals": {label: np.quantile(redone[name][:, g], [tail, 1 - tail]).tolist()
                                          for g, label in enumerate(labels)}}
    return out


def _segment_table(segment, K, beta, regular, stores):
    """The report's table a segment: its stores, elasticity, and the medians over its stores of the
    regular price, the price of the segments' policy, its change, and the margin before and after."""
    table = []
    price = np.array(stores["price_segments"])
    for c in range(K):
        mine = segment == c
        if not mine.any():
            continue
        r, p, cost = regular.price[mine], price[mine], regular.cost[mine]
        table.append({"segment": c + 1, "stores": int(mine.sum()), "elasticity": float(beta[c]),
                      "regular_price": float(np.median(r)), "price": float(np.median(p)),
                      "change": float(np.median(p / r - 1)), "margin_before": float(np.median(1 - cost / r)),
                      "margin_after": float(np.median(1 - cost / p))})
    return table


# ---------------------------------------------------------------------------------------------
# The report's section, the stores' file, the API
# ---------------------------------------------------------------------------------------------

WORDS = {"status_quo": "status quo", "uniform": "uniform", "segments": "segments", "zones": "zones",
         "stores": "stores"}


def pricing_lines(pricing):
    """The report's Prices section: one line a policy, a table a segment, and what it rests on."""
    bound = pricing["max_change"]
    policies = pricing["policies"]
    rule = (f"every price within {100 * bound:g}% of the store's regular price"
            + ("; the chain's average price (weighted by today's expected sales) held" if pricing["hold_average_price"]
               else ""))
    lines = [f"Prices (K = {pricing['K']}; {rule}; profit: the chain's expected profit in a regular week, in the "
             f"data's units; {pricing['draws']} draws of the parameters and the stores' segments for the intervals):"]
    rows = [["policy", "changes", "profit", "gain", f"{100 * INTERVAL:.0f}% interval", "P(gain > 0)"]]
    for name, entry in policies.items():
        none = not any(entry.get("changes", {}).values())           # no change: status quo, or none allowed
        rows.append([WORDS[name] + (f" ({len(entry['changes'])})" if name == "zones" else ""),
                     "none" if name == "status_quo" else "none (the average price held)" if none else
                     _changes_words(entry, bound),
                     f"{entry['profit']:.6g}",
                     "" if none else f"{entry['gain_percent']:+.2f}%",
                     "" if none or "gain_percent_interval" not in entry else
                     "[{:+.2f}%, {:+.2f}%]".format(*entry["gain_percent_interval"]),
                     "" if none or "p_gain" not in entry else f"{entry['p_gain']:.2f}"])
    widths = [max(len(row[j]) for row in rows) for j in range(len(rows[0]))]
    lines += ["  " + "  ".join(cell.ljust(width) if j < 2 else cell.rjust(width) for j, (cell, width) in
                               enumerate(zip(row, widths))) for row in rows]
    table = [["segment", "stores", "elasticity", "regular price", "price", "change", "margin before", "after"]]
    for row in pricing["segments"]:
        table.append([str(row["segment"]), str(row["stores"]), f"{row['elasticity']:.2f}", f"{row['regular_price']:.4g}",
                      f"{row['price']:.4g}", f"{100 * row['change']:+.1f}%", f"{100 * row['margin_before']:.0f}%",
                      f"{100 * row['margin_after']:.0f}%"])
    widths = [max(len(row[j]) for row in table) for j in range(len(table[0]))]
    lines += ["  " + "  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in table]
    flat = [c + 1 for c, beta in enumerate(pricing["elasticities"]) if beta >= -1]
    if flat:
        lines.append(f"  ! segment{'s' * (len(flat) > 1)} {', '.join(map(str, flat))}: an elasticity of -1 or above has "
                     "no interior optimum (profit rises with the price), so the price sits at its bound")
    bounded = sum(len(entry.get("bound", [])) for name, entry in policies.items() if name != "stores")
    if bounded:
        lines.append(f"  ! changes at a bound (+-{100 * bound:g}%) are marked !: the optimum lies beyond it")
    lines.append("  This is the product's own profit. A shopper lost to a price rise is counted as lost, though the "
                 "store keeps some of them in its other brands, and one won by a cut is partly taken from them: for "
                 "the store, a rise gains more and a cut less than shown. The other brands' prices as regressors "
                 "(--x log(COL) ...) give an elasticity with them held at their regular weeks; their profit is not "
                 "counted.")
    return lines


def _changes_words(entry, bound):
    changes, at = entry["changes"], set(entry["bound"])
    cells = [f"{100 * value:+.1f}%" + ("!" if label in at else "") for label, value in changes.items()]
    if len(cells) > 6:
        values = list(changes.values())
        return f"{len(cells)} changes from {100 * min(values):+.1f}% to {100 * max(values):+.1f}%, {len(at)} at a bound"
    return ", ".join(cells)


def prices_csv(stores, by=None):
    """--prices FILE.csv: one row a store (with --by, stores is {group: table}, and the rows carry
    the group first)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    names = ["store", "segment", "zone", "regular_price", "cost", "price_uniform", "price_segments", "price_zones",
             "price_stores", "profit_change_stores"]
    tables = stores.items() if by else [(None, stores)]
    writer.writerow(([by] if by else []) + names)
    for group, table in tables:
        for i in range(len(table["store"])):
            row = [group] if by else []
            for name in names:
                value = table.get(name)
                value = value[i] if value is not None else ""
                row.append(f"{value:.10g}" if isinstance(value, float) else value)
            writer.writerow(row)
    return out.getvalue()


class Pricing(NamedTuple):
    """prices()' answer: results (results.json's pricing), stores (each store's regular price,
    cost, segment, zone and the price of each policy); frame() is the stores as a DataFrame."""
    results: dict
    stores: dict

    def frame(self):
        import pandas as pd
        return pd.DataFrame({key: value for key, value in self.stores.items() if value is not None}).set_index("store")


def prices(fit, source, cost=None, margin=None, zones=None, zone="zone", max_change=MAX_CHANGE,
           hold_average_price=False, draws=DRAWS, seed=0, columns=None):
    """Prices from a fit with its panel (fit_frame's, or analyse's): source is the panel's long
    file or DataFrame (its rows give each store's regular price and cost: cost or margin names
    the column); zones a CSV file of each store's zone (column `zone`). A Pricing."""
    settings = Settings(cost, margin, zones, zone, max_change, hold_average_price, draws, seed).checked()
    regular = regular_weeks(source, fit.data.coefficients[2:], settings, columns)
    regular = _aligned(regular, fit.stores)
    return Pricing(*price_policies(fit, fit.data, regular, settings,
                                   read_zones(zones, fit.stores, zone) if zones else None))


def _aligned(regular, stores):
    """regular in the order of the fit's stores."""
    at = {store: i for i, store in enumerate(regular.stores)}
    order = [at[store] for store in stores]
    return Regular(list(stores), regular.price[order], regular.cost[order], regular.x[order], regular.weeks[order])
