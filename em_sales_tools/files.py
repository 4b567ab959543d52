"""The panel's files as the models see them: long files (one row a store and week), stores files
(store covariates), tables of per-store sums, and a CSV file of either layout read exactly (every
message names the line and the column) into a Loaded: per-store sums, lags for the residual
autocorrelation, and holdout folds. DuckDB's reduction of large files is em_sales_tools.engine;
analysis.load chooses between the two."""
import math
import os
import re
from array import array
from typing import NamedTuple

import numpy as np

from em_sales import (STORE_NAMES, InputError, Sums, _Table, _cells, _check_values, _escaped, _layout, _names, _read_text,
                      _refuse_long_as_wide, _row_numbers, _shown, _table, _wide_sums, panel_arrays, read_panel)

LONG_COLUMNS = ("store", "week", "sales", "price")  # a long file's columns, found by name
ENGINE_FROM = 64 << 20   # a long CSV file larger than this (and every Parquet file) is reduced by DuckDB (engine)
HEAD_BYTES = 1 << 16     # a file's first bytes, read for its header and its lines' length


class Source(NamedTuple):
    """Where a panel comes from: path (a CSV or Parquet file, or with sums=True a table of
    per-store sums), columns ({role: name} for store, week, sales, price where not so called), x
    (the further regressors of a long file), by (a long file's column whose groups are fitted
    each on its own)."""
    path: object
    columns: dict = None
    x: tuple = ()
    by: str = None
    sums: bool = False

    def named(self):
        """The columns named, without the empty ones."""
        return {role: name for role, name in (self.columns or {}).items() if name}


class Folds(NamedTuple):
    """The holdout's folds of each store's weeks: count of them; blocks (the default): each store's
    weeks in time order cut into `count` contiguous blocks, so that a held-out week is not
    predicted by its neighbours where weeks are autocorrelated; else each week drawn into a fold
    at random with seed (the same draw for every K)."""
    count: int
    seed: int = 0
    blocks: bool = True

    def of(self, store, time):
        """Each row's fold (R,), for rows of stores store (R,) in 0..N-1 at times time (R,)."""
        if not self.blocks:
            import numpy.random
            return numpy.random.default_rng(self.seed).integers(0, self.count, len(store))
        order = np.lexsort((time, store))
        first = np.r_[0, np.flatnonzero(np.diff(store[order])) + 1]
        n = np.diff(np.r_[first, len(order)])
        rank = np.arange(len(order)) - np.repeat(first, n)
        fold = np.empty(len(order), dtype=np.int64)
        fold[order] = (self.count * rank) // np.repeat(n, n)
        return fold


# ---------------------------------------------------------------------------------------------
# Reading a long file, a stores file and a table of sums
# ---------------------------------------------------------------------------------------------

class LongPanel(NamedTuple):
    """A long file's rows. stores, weeks: labels as written, in order of first appearance;
    store (R,), week (R,): each row's as an index into them; sales, price (R,); x (R, q):
    further regressors, named x_names; lines (R,): each row's line in the file; other (R, o):
    further number columns that are no regressors (a cost, a margin, a deal), read as numbers
    (NaN where empty), named other_names."""
    stores: list
    weeks: list
    store: np.ndarray
    week: np.ndarray
    sales: np.ndarray
    price: np.ndarray
    x: np.ndarray
    x_names: list
    lines: np.ndarray
    other: np.ndarray = None
    other_names: list = ()


def read_long(path, store=None, week=None, sales=None, price=None, x=(), text=None, other=()):
    """Read a long CSV file: one row a store and week, columns store, week, sales, price (found by
    header, any case, or named by these arguments) and the further regressors named in x (a
    name, or a list of names). Store and week labels are text, kept exactly as written: 0002 and
    2 are two stores. Weeks need not be aligned across stores. other: further number columns
    (no regressors: a cost, a margin) read beside them, their checks the caller's. Returns a
    LongPanel."""
    table = _table(path, _read_text(path) if text is None else text)
    where = _long_columns(table, dict(store=store, week=week, sales=sales, price=price), _names(x, "x", path))
    others = [_long_columns(table, dict(store=store, week=week, sales=sales, price=price), [name],
                            f" (named by --{role})")["x"][0] for role, name in other]
    numbers = [where["sales"], where["price"]] + where["x"] + others
    labels = ({}, {})
    codes, values, lines = (array("q"), array("q")), array("d"), array("q")
    width, at = len(table.header), (where["store"], where["week"])
    for line, cells in table.rows:
        if len(cells) != width:
            cells = _cells(table, line, cells)
        for k in (0, 1):
            label = cells[at[k]].strip()
            if not label:
                raise InputError(f"{table.path}: line {line}, column '{table.header[at[k]]}': "
                                 f"the {('store', 'week')[k]} is missing")
            codes[k].append(labels[k].setdefault(label, len(labels[k])))
        values.extend(_row_numbers(table, line, cells, numbers))
        lines.append(line)
    if not lines:
        raise InputError(f"{table.path}: has a header but no data rows")
    values = np.frombuffer(values, dtype=float).reshape(len(lines), len(numbers)).copy()
    values, extra = values[:, :len(numbers) - len(others)], values[:, len(numbers) - len(others):]
    numbers = numbers[:len(numbers) - len(others)]
    names = [table.header[j] for j in numbers]
    lines = np.frombuffer(lines, dtype=np.int64).copy()
    logged = [False, False] + [_logged(name) is not None for name in _names(x, "x", path)]
    _check_values(table, names[:2], values[:, :2], lines, positive=True)
    _check_values(table, names[2:], values[:, 2:], lines, positive=False)
    for k in np.flatnonzero(logged):
        _check_values(table, names[k], values[:, k], lines, positive=True)
        values[:, k] = np.log(values[:, k])
        names[k] = f"log({names[k]})"
    store, week = (np.frombuffer(code, dtype=np.int64).copy() for code in codes)
    _refuse_repeats(table, labels, store, week, lines)
    for k, name in enumerate(names[1:], 1):
        if np.ptp(values[:, k]) == 0:
            raise InputError(f"{table.path}: column '{name}' is {values[0, k]:g} in every row; a regressor "
                             "that never changes cannot be estimated")
    return LongPanel(list(labels[0]), list(labels[1]), store, week, values[:, 0], values[:, 1], values[:, 2:],
                     names[2:], lines, extra, [table.header[j] for j in others])


def _long_columns(table, named, x, flag=" (named by --x)"):
    """{role: column} for store, week, sales, price (by name given, else by header, any case)
    and "x": [column] for the further regressors (flag: how they were named, for a message)."""
    lower = [name.lower() for name in table.header]

    def find(name, flag):
        if name in table.header:
            return table.header.index(name)
        if lower.count(name.lower()) == 1:
            return lower.index(name.lower())
        if lower.count(name.lower()) > 1:
            raise InputError(f"{table.path}: more than one column is called '{name}' (in some case){flag}: "
                             "name the one to use exactly")
        raise InputError(f"{table.path}: no column '{name}' in the header{flag}; the header has: "
                         + ", ".join(_shown(name) for name in table.header))

    where = {role: find(named.get(role) or role,
                        f" (named by --{role})" if named.get(role) else f"; name the {role} column with --{role} COL")
             for role in LONG_COLUMNS}
    where["x"] = [find(_logged(name) or name, flag) for name in x]
    used = [where[role] for role in LONG_COLUMNS] + where["x"]
    for j in used:
        if used.count(j) > 1:
            raise InputError(f"{table.path}: column '{table.header[j]}' is used twice (as "
                             + " and ".join(role for role in LONG_COLUMNS if where[role] == j) + " / --x)")
    return where


def _logged(name):
    """The column of a regressor written log(COL), whose logarithm enters the model (another
    brand's price, say); None for a column used as it is."""
    found = re.fullmatch(r"\s*log\((.+)\)\s*", name)
    return found.group(1).strip() if found else None


def _refuse_repeats(table, labels, store, week, lines):
    """InputError for a store and week given twice, naming both lines."""
    key = store * len(labels[1]) + week
    order = np.argsort(key, kind="stable")
    repeated = np.flatnonzero(key[order][1:] == key[order][:-1])
    if len(repeated):
        row, earlier = order[repeated[0] + 1], order[repeated[0]]
        stores, weeks = list(labels[0]), list(labels[1])
        raise InputError(f"{table.path}: line {lines[row]}, store '{_shown(stores[store[row]])}', week "
                         f"'{_shown(weeks[week[row]])}' again (first on line {lines[earlier]}): one row a "
                         "store and week")


def read_stores(path, stores, covariates, text=None, store=None):
    """The covariates (N, Q) of the panel's stores, in the order of `stores` (labels as the panel
    writes them) and of `covariates` (column names), from a stores file: one row a store, a
    'store' column, then store-level columns. Refused with file, line and column: a cell that is
    not a number or is empty, a store given twice, a covariate not in the header; and a store of
    the panel without a row, by its label. store: the store column's name, if not 'store'.
    stores None: (labels, values) of every row."""
    table = _table(path, _read_text(path) if text is None else text)
    names = _names(covariates, "covariates")
    lower = [name.lower() for name in table.header]
    where = table.header.index(store) if store in table.header else \
        next((j for j, name in enumerate(lower) if name in STORE_NAMES), None)
    if where is None:
        raise InputError(f"{table.path}: line {table.header_line}: no store column (a column named 'store') "
                         f"among {', '.join(map(repr, table.header))}")
    absent = [name for name in names if name not in table.header]
    if absent:
        raise InputError(f"{table.path}: line {table.header_line}: no column '{_shown(absent[0])}' (a covariate); "
                         f"the columns are {', '.join(map(repr, table.header))}")
    columns = [table.header.index(name) for name in names]
    rows, lines, first = [], [], {}
    for line, cells in table.rows:
        cells = _cells(table, line, cells)
        label = cells[where].strip()
        if label in first:
            raise InputError(f"{table.path}: line {line}: store '{_shown(label)}' has a row already, on line "
                             f"{first[label]}: one row a store")
        first[label] = line
        rows.append(_row_numbers(table, line, cells, columns))
        lines.append(line)
    values = np.array(rows, dtype=float).reshape(len(rows), len(columns))
    if np.isnan(values).any():
        row, j = np.argwhere(np.isnan(values))[0]
        raise InputError(f"{table.path}: line {lines[row]}, column '{names[j]}': is empty: every store needs "
                         "a value of each covariate")
    _check_values(table, names, values, lines, positive=False)
    if stores is None:                           # every row: new stores (--predict)
        return list(first), values
    index = {label: k for k, label in enumerate(first)}
    missing = [store for store in stores if str(store) not in index]
    if missing:
        raise InputError(f"{table.path}: store '{_shown(str(missing[0]))}' of the panel has no row here "
                         f"({len(missing)} of its {len(stores)} stores have none)")
    return values[[index[str(store)] for store in stores]]


def read_sums(path):
    """A Loaded from a table of per-store sums (CSV, or Parquet through DuckDB), one row a store:
    store, n (weeks), sy = sum log sales, syy = sum (log sales)^2, and for each regressor c (first
    log_price, then any others) sx_c = sum c, sxy_c = sum c log sales, and sxx_c_d = sum c d for
    each pair in that order (README, "Panels of any size", gives the SQL that writes it). Refused
    with the line and column: a missing column, a cell that is not a number, n < 1 or a negative
    sum of squares."""
    if _is_parquet(path):
        import duckdb
        relation = duckdb.sql(f"SELECT * FROM read_parquet({_sql_text(path)})")
        header, rows = relation.columns, relation.fetchall()
        table = _Table(_escaped(path), ",", header, 1, iter(()))
        cells = [[str(value) for value in row] for row in rows]
        lines = list(range(2, len(rows) + 2))
    else:
        table = _table(path, _read_text(path))
        header = table.header
        lines, cells = [], []
        for line, row in table.rows:
            lines.append(line)
            cells.append(_cells(table, line, row))
    lower = [name.lower() for name in header]
    regressors = [name[3:] for name in lower if name.startswith("sx_")]
    if "log_price" in regressors:
        regressors.remove("log_price")
    regressors = ["log_price"] + regressors
    needed = ["store", "n", "sy", "syy"] + [f"{kind}_{c}" for c in regressors for kind in ("sx", "sxy")] + \
        [f"sxx_{c}_{d}" for j, c in enumerate(regressors) for d in regressors[j:]]
    missing = [name for name in needed if name not in lower]
    if missing:
        raise InputError(f"{table.path}: line {table.header_line}: a table of sums needs the column '{missing[0]}' "
                         "(README, \"Panels of any size\")")
    at = {name: lower.index(name) for name in needed}
    values = np.array([_row_numbers(table, line, row, [at[name] for name in needed[1:]]) for line, row in zip(lines, cells)],
                      dtype=float).reshape(len(lines), len(needed) - 1)
    _check_values(table, [header[at[name]] for name in needed[1:]], values, lines, positive=False)
    column = {name: values[:, j] for j, name in enumerate(needed[1:])}
    if (column["n"] < 1).any() or (column["syy"] < 0).any():
        row = int(np.argmax((column["n"] < 1) | (column["syy"] < 0)))
        raise InputError(f"{table.path}: line {lines[row]}: n must be at least 1 and syy at least 0")
    P = len(regressors) + 1
    N = len(lines)
    XtX = np.empty((N, P, P))
    XtX[:, 0, 0] = column["n"]
    for j, c in enumerate(regressors, 1):
        XtX[:, 0, j] = XtX[:, j, 0] = column[f"sx_{c}"]
        for k, d in enumerate(regressors[j - 1:], j):
            XtX[:, j, k] = XtX[:, k, j] = column[f"sxx_{c}_{d}"]
    sx = XtX[:, 0, :]
    Xty = np.column_stack([column["sy"]] + [column[f"sxy_{c}"] for c in regressors])
    sums = Sums(column["n"], XtX.reshape(N, P * P), Xty, column["syy"], sx.copy(), column["sy"])
    stores = [row[at["store"]].strip() for row in cells]
    names = ["intercept", "log price"] + [header[lower.index(f"sx_{c}")][3:] for c in regressors[1:]]
    return Loaded(stores, int(column["n"].max()), sums, names, "sums", (math.nan, math.nan))


def _is_parquet(path):
    return str(path).lower().endswith((".parquet", ".pq"))


def _sql_text(path):
    """A path as an SQL string literal."""
    return "'" + str(path).replace("'", "''") + "'"


# ---------------------------------------------------------------------------------------------
# A CSV file read exactly: per-store sums, lags and folds
# ---------------------------------------------------------------------------------------------

class Lags(NamedTuple):
    """Per-store sums over pairs of consecutive observed weeks (a, b) = (t - 1, t), for the
    residual autocorrelation: pairs (N,); yy = sum y_a y_b (N,); xy = sum x_a y_b, yx = sum y_a x_b
    (N, P); xx = sum x_a x_b' (N, P*P); ya, yb (N,) and xa, xb (N, P): the sums of y_a, y_b, x_a, x_b;
    n (N,), sy (N,), sx (N, P): the store's weeks and sums of y and x (its mean, with store effects)."""
    pairs: np.ndarray
    yy: np.ndarray
    xy: np.ndarray
    yx: np.ndarray
    xx: np.ndarray
    ya: np.ndarray
    yb: np.ndarray
    xa: np.ndarray
    xb: np.ndarray
    n: np.ndarray
    sy: np.ndarray
    sx: np.ndarray


class Rows(NamedTuple):
    """A panel's store-weeks, kept by the exact reader for simulating from a fit with autocorrelated
    weeks (the bootstrap): store (R,) in 0..N-1, time (R,) the week as a number, X (R, P)."""
    store: np.ndarray
    time: np.ndarray
    X: np.ndarray


class Loaded(NamedTuple):
    """A file reduced to what the models need: store labels, weeks, per-store Sums, the names of
    X's columns, the layout ("wide" or "long") and the range of log price (for the picture); the
    exact reader also keeps its Rows (the engine, which reduces large files, does not)."""
    stores: list
    weeks: int
    sums: Sums
    coefficients: list
    layout: str
    price_range: tuple = (0.0, 0.0)
    lags: Lags = None
    folds: list = None                           # Sums of each holdout fold (load's folds)
    rows: Rows = None


def read_exact(path, columns, x, text=None, folds=None):
    """A wide or a long CSV file (long: a 'store' column, or columns named by `columns`, a dict
    with keys store, week, sales, price) read by the exact reader into a Loaded; the file is read
    once. x: further regressors of a long file (a list of names). X = [1, log price, x]; y = log
    sales. text: the file's text, where it is not read from path (path then only names it in
    messages). folds: Folds, for the holdout: also the Sums of each fold of the store-weeks."""
    text = _read_text(path) if text is None else text
    table = _table(path, text)
    if _layout(table.header, columns) == "long":
        panel = read_long(path, x=x, text=text, **columns)
        X = np.column_stack([np.ones(len(panel.price)), np.log(panel.price), panel.x])
        y, N = np.log(panel.sales), len(panel.stores)
        sums = _grouped_sums(panel.store, y, X, N)
        time = _week_numbers(panel)
        return Loaded(panel.stores, len(panel.weeks), sums, ["intercept", "log price"] + panel.x_names, "long",
                      (float(np.log(panel.price.min())), float(np.log(panel.price.max()))),
                      _long_lags(panel.store, time, y, X, sums),
                      _fold_sums(panel.store, _week_numbers(panel, text_order=True), y, X, N, folds) if folds else None,
                      Rows(panel.store, time, X))
    if x:
        _refuse_long_as_wide(table)
        raise InputError(f"{table.path}: --x needs a long file (one row a store and week), and this one has no "
                         "column called 'store', so it reads as a wide one (first column the price, a column a store): "
                         f"name its store column with --store COL (and --week, --sales, --price where they are not "
                         "called so)")
    price, sales, stores = read_panel(path, text)
    y, X = panel_arrays(price, sales)
    week, store = np.nonzero(~np.isnan(y))
    folded = _fold_sums(store, week, y[week, store], X[week], y.shape[1], folds) if folds else None
    sums = _wide_sums(y, X)
    return Loaded(stores, len(price), sums, ["intercept", "log price"], "wide",
                  (float(X[:, 1].min()), float(X[:, 1].max())), _wide_lags(y, X, sums), folded,
                  Rows(store, week.astype(float), X[week]))


def _grouped_sums(store, y, X, N):
    """Sums of a long panel, one row a store-week, by grouped sums (no T x N array is built):
    store (R,) in 0..N-1, y (R,), X (R, P)."""
    P = X.shape[1]
    XtX = np.empty((N, P * P))
    for j in range(P):
        for k in range(j, P):
            XtX[:, j * P + k] = XtX[:, k * P + j] = np.bincount(store, X[:, j] * X[:, k], N)
    return Sums(np.bincount(store, None, N).astype(float), XtX,
                np.column_stack([np.bincount(store, X[:, j] * y, N) for j in range(P)]),
                np.bincount(store, y * y, N),
                np.column_stack([np.bincount(store, X[:, j], N) for j in range(P)]),
                np.bincount(store, y, N))


def _wide_lags(y, X, sums):
    """Lags of a wide panel: y (T, N) with NaN where unobserved, X (T, P) shared by the stores; n,
    sy, sx from its Sums."""
    both = ~np.isnan(y[1:]) & ~np.isnan(y[:-1])                  # (T - 1, N)
    ya, yb = np.where(both, y[:-1], 0.0), np.where(both, y[1:], 0.0)
    pairs = both.T.astype(float)                                 # (N, T - 1)
    xx = pairs @ (X[:-1, :, None] * X[1:, None, :]).reshape(len(X) - 1, -1)
    return Lags(pairs.sum(axis=1), (ya * yb).sum(axis=0), yb.T @ X[:-1], ya.T @ X[1:], xx, ya.sum(axis=0),
                yb.sum(axis=0), pairs @ X[:-1], pairs @ X[1:], sums.n, sums.sy, sums.sx)


def _long_lags(store, time, y, X, sums):
    """Lags of a long panel's rows: store (R,) in 0..N-1, time (R,) the week as a number, y, X;
    n, sy, sx from its Sums."""
    order = np.lexsort((time, store))
    consecutive = (store[order][1:] == store[order][:-1]) & (time[order][1:] - time[order][:-1] == 1)
    a, b = order[:-1][consecutive], order[1:][consecutive]
    by, N, P = store[a], len(sums.n), X.shape[1]

    def summed(values):
        return np.column_stack([np.bincount(by, values[:, j], N) for j in range(values.shape[1])]) \
            if values.ndim == 2 else np.bincount(by, values, N)
    xx = summed((X[a][:, :, None] * X[b][:, None, :]).reshape(len(a), P * P)).reshape(N, P * P)
    return Lags(np.bincount(by, None, N).astype(float), summed(y[a] * y[b]), summed(X[a] * y[b][:, None]),
                summed(y[a][:, None] * X[b]), xx, summed(y[a]), summed(y[b]), summed(X[a]), summed(X[b]),
                sums.n, sums.sy, sums.sx)


def _fold_sums(store, time, y, X, N, folds):
    """Sums of each fold (Folds) of a panel's rows: store (R,), time (R,) the week's place in
    time, y (R,), X (R, P)."""
    fold = folds.of(store, time)
    return [_grouped_sums(store[fold == f], y[fold == f], X[fold == f], N) for f in range(folds.count)]


def _week_numbers(panel, text_order=False):
    """Each row's week as a number: the labels where all are numbers, else their order of first
    appearance (for consecutive weeks, the lags), or with text_order their rank as text (dates
    written year first sort in time), as the engine orders a store's weeks for the holdout's
    blocks."""
    try:
        values = np.array([float(label) for label in panel.weeks])
    except ValueError:
        labels = np.array(panel.weeks, dtype=object)
        values = (np.argsort(np.argsort(labels, kind="stable"), kind="stable") if text_order
                  else np.arange(len(panel.weeks))).astype(float)
    return values[panel.week]


def _use_engine(path, columns):
    """True for a Parquet file, and for a long CSV file larger than ENGINE_FROM."""
    if _is_parquet(path):
        return True
    try:
        if not os.path.isfile(path) or os.path.getsize(path) <= ENGINE_FROM:
            return False
        with open(path, "rb") as handle:
            head = handle.read(HEAD_BYTES).decode("utf-8-sig", errors="replace")
    except OSError:
        return False
    return _layout(_table(path, head.rsplit("\n", 1)[0] + "\n").header, columns) == "long"
