"""The analyst's report: the course's (em_sales.report) with what the analyst's package adds to
it, in place: store-clustered standard errors and who is in each segment under each K's table,
the table of criteria with the holdout, the bootstrap and --min-share before BIC's choice, and
the notes on what each answer rests on; one report a group with --by."""
import json
import math

import numpy as np

from em_sales import (GAMMA_LIMIT, JSON_DIGITS, _tidy, _choice_lines, _failed_notes, _fit_lines, _header_lines, _largest_K_note,
                      _number_cell, _uninformative_note, _unsupported_notes)
from em_sales_tools.choice import AUTOCORRELATION, BOOTSTRAP_LEVEL, ROBUST_RATIO, _median
from em_sales_tools.prices import pricing_lines

SUBNORMAL_NEAR = 1e-290   # a number below this (near the subnormals), and ...
REPR_PLAIN = 1e8           # ... one from this (repr writes it without an exponent) is formatted alone
CRITERIA = ("aic", "aic3", "bic", "caic", "sabic", "icl")


def report(results):
    """The printed report of analyse()'s dictionary (or the same read back from results.json): what
    the columns mean, a table of segments for each K, how many segments, then BIC's choice and
    how sure it is; with --by, one report a group."""
    if "groups" in results:
        return "\n\n".join(f"===== {results['by']} = {group} =====\n" + report(each)
                            for group, each in results["groups"].items())
    if "error" in results:
        return f"{results['data']}: not fitted: {results['error']}"
    lines = _header_lines(results)
    for model in results["models"]:
        lines += _fit_lines(model, isinstance(results["settings"].get("sigma", 1.0), str),
                            _robust_lines(model) + _membership_lines(model)) + [""]
    lines += _how_many_lines(results) + _choice_lines(results)
    if results.get("pricing"):
        lines += [""] + pricing_lines(results["pricing"])
    return "\n".join(lines)


def _robust_lines(model):
    """The store-clustered standard errors of each coefficient by segment (their kind and the t
    multiplier of a 95% interval, t on stores - 1 df, where results.json says them), and the
    residual autocorrelation within stores."""
    if "se_robust" not in model:
        return []
    robust = model["se_robust"]
    kind = (f"{robust['kind']}, robust to autocorrelated weeks; 95% interval +-{robust['t_95']:.3f} s.e., t on "
            f"{robust['df']} df" if robust.get("t_95") else "robust to autocorrelated weeks")
    return [f"  store-clustered s.e. ({kind}): " + "; ".join(
        f"{name} " + " ".join(_number_cell(row[j], 6).strip() for row in model["se_robust"]["theta"])
        for j, name in enumerate(model["coefficients"]))
        + ("" if model.get("autocorrelation") is None else
           f"   (residual autocorrelation within stores {model['autocorrelation']:.2f})")]


def notes(results):
    """What the reader must know beyond the tables, one sentence each: the course's (em_sales) and
    the analyst's diagnostics, in that order of concern."""
    best = results["best_K"]
    found = [_uninformative_note(results), _own_regression_note(results)]
    found += [f"the {what} could not be computed ({why}); the fits are delivered: please report it with the command"
              for what, why in results.get("failed", {}).items()]
    check = results.get("sigma_check")
    if check and check["rejects"]:
        found.append(f"the data reject sigma = {check['fixed']:g}: at K = {best} the estimated common sigma is "
                     f"{check['estimate']:.3f} (likelihood ratio {check['lr']:.1f}, p < 0.001), so the standard "
                     "errors, log-likelihoods and BIC above are on the wrong scale; use --sigma common or --sigma segment")
    found.append(_largest_K_note(results))
    chosen = next(model for model in results["models"] if model["K"] == best)
    rho = chosen.get("autocorrelation")
    ratios = (np.array(chosen["se_robust"]["theta"], dtype=float) / np.array(chosen["se"]["theta"], dtype=float)).ravel() \
        if "se_robust" in chosen else np.array([])
    ratios = ratios[np.isfinite(ratios)]
    ratio = float(_median(ratios)) if len(ratios) else math.nan
    if rho is not None and rho > AUTOCORRELATION and ratio > ROBUST_RATIO:
        found.append(f"weekly residuals are autocorrelated within stores (rho = {rho:.2f} at K = {best}): the "
                     "model-based standard errors are likely too small; the store-clustered ones (the report's "
                     f"robust line, se_robust in results.json) are {ratio:.1f}x as large (median)")
    for model in results["models"]:
        found += _unsupported_notes(model)
        found += [f"K = {model['K']}: segment {c} {why}" for c, why in model.get("not_credible", {}).items()]
        found += _failed_notes(model)
    return [note for note in found if note]


def _own_regression_note(results):
    left = results.get("own_regression", {}).get("left_out")
    if not left:
        return None
    count = sum(reason["count"] for reason in left.values())
    return (f"{count} store{'s are' if count > 1 else ' is'} left out of the diagnostics that need each store's own "
            "regression (not-credible, the holdout's own regression, the picture): "
            + "; ".join(f"{reason['count']} {why} (" + ", ".join(f"'{store}'" for store in reason["stores"])
                        + (", ..." if reason["count"] > len(reason["stores"]) else "") + ")"
                        for why, reason in left.items()))


def _how_many_lines(results):
    """How many segments: every criterion by K (and the K each picks), the smallest segment, the
    share of the likelihood gain to each store's own regression captured; the holdout, the
    bootstrap tests and --min-share where asked; then the verdict that weighs them."""
    models = results["models"]
    if not all("aic3" in m for m in models):      # a results.json of an earlier version
        return []
    lines = _criteria_lines(models) if len(models) > 1 else []
    lines += _holdout_lines(results.get("holdout"))
    lines += _bootstrap_lines(results.get("bootstrap"), models, results["best_K"])
    share = results.get("min_share")
    if share:
        lines.append(f"With every segment holding at least {100 * share['share']:.0f}% of the stores (--min-share): "
                     + (f"K = {share['K']}, by BIC." if share["K"] is not None else "no K tried qualifies."))
    verdict = results.get("verdict")
    if verdict and len(models) > 1:
        decided = "no single K" if verdict["K"] is None else f"K = {verdict['K']}"
        lines.append(f"verdict: {decided}: " + "; ".join(verdict["reasons"]) + ".")
    return lines + [""] if lines else []


def _criteria_lines(models):
    """The table of criteria by K, the K each picks, the smallest segment and the share captured."""
    rows = [[str(m["K"]), f"{m['loglik']:.2f}", str(m["n_params"])] + [f"{m[c]:.2f}" for c in CRITERIA]
            + [f"{m['smallest_segment']['stores']} ({100 * m['smallest_segment']['share']:.0f}%)",
               "" if m.get("captured") is None else f"{100 * m['captured']:.0f}%"] for m in models]
    rows.append(["picks", "", ""] + [str(min(models, key=lambda m: m[c])["K"]) for c in CRITERIA] + ["", ""])
    header = ["K", "log L", "k"] + [c.upper() for c in CRITERIA] + ["smallest segment", "captured"]
    widths = [max(len(str(row[j])) for row in rows + [header]) for j in range(len(header))]
    lines = ["How many segments (lower criteria are better; captured: the share of the log-likelihood gain from one "
             "segment to each store's own regression that K segments achieve):"]
    return lines + ["  " + "  ".join(f"{cell:>{width}}" for cell, width in zip(row, widths)) for row in [header] + rows]


def _holdout_lines(holdout):
    """The holdout's log-likelihoods of held-out weeks by K, against the pooled and own regressions."""
    lines = []
    if holdout and "loglik" in holdout:
        scored = holdout["loglik"]
        best = max(scored, key=lambda K: scored[K])
        folds = (f"{holdout['folds']} folds of single weeks drawn at random" if holdout.get("of") == "weeks" else
                 f"{holdout['folds']} contiguous blocks of each store's weeks")
        lines.append(f"Holdout ({folds}, higher is better): "
                     + ", ".join(f"K = {K}: {value:.2f}" for K, value in scored.items())
                     + f"; one pooled regression {holdout['pooled']:.2f}; each store's own regression "
                     f"{holdout['own']:.2f}. Best: K = {best}"
                     + (" (better than each store's own)" if scored[best] > holdout["own"] else
                        ", below each store's own regression: segments predict new weeks less well than the stores' own lines")
                     + (f". {holdout['unscored']} store-folds had no training week and were not scored"
                        if holdout.get("unscored") else "")
                     + (f"; up to {holdout['own_pooled_stores']} stores a fold had no own regression and were "
                        "predicted by the pooled one there" if holdout.get("own_pooled_stores") else ""))
    elif holdout:
        lines.append(f"Holdout: skipped ({holdout['skipped']})")
    return lines


def _bootstrap_lines(boot, models, best_K):
    """The bootstrap tests of K against K + 1, the K they keep, and what limits them: too few
    panels to reject at its level, a K missing from the sequence, autocorrelated weeks."""
    if not boot:
        return []
    tested = [t["K"] + 1 for t in boot["tests"]]
    fitted = sorted(m["K"] for m in models)
    if not boot["tests"]:
        return [f"Bootstrap test: none made (it tests K against K + 1, and no two consecutive K were fitted: "
                f"{', '.join(map(str, fitted))})."]
    tests = "; ".join(f"K = {t['K']} against {t['K'] + 1}: LR {t['lr']:.2f}, p = {t['p']:.3f}" for t in boot["tests"])
    if boot["K"] is not None:
        choice = f"it keeps K = {boot['K']}"
    elif tested[-1] < fitted[-1]:
        choice = (f"every K tested is rejected for the next, and K = {tested[-1] + 1} was not fitted: "
                  f"the test needs consecutive K (--K {' '.join(map(str, range(fitted[0], fitted[-1] + 1)))})")
    else:
        choice = "every K tried is rejected for the next: the largest K may be too few"
    if 1 / (boot["B"] + 1) > BOOTSTRAP_LEVEL:
        choice += (f" ({boot['B']} panels cannot give a p-value at or below {BOOTSTRAP_LEVEL:g}, so the test "
                   f"never rejects: use --bootstrap {math.ceil(1 / BOOTSTRAP_LEVEL) - 1} or more)")
    return [f"Bootstrap test ({boot['B']} panels simulated from each K fit{_simulated_words(boot, models, best_K)}; the "
            f"smallest p that {boot['B']} panels can give is {1 / (boot['B'] + 1):.3f}): {tests}; {choice}."]


def _simulated_words(boot, models, best_K):
    """How the bootstrap's panels were drawn, and the caveat where they could not keep the weeks'
    autocorrelation (a panel read by the engine or given as sums keeps no rows)."""
    rho = [r for t in boot["tests"] for r in (t.get("rho") or [])]
    if any(t.get("weeks") == "AR(1)" for t in boot["tests"]):
        return (f", with each segment's AR(1) errors over the stores' own weeks (rho {min(rho):.2f} to {max(rho):.2f})"
                if min(rho) < max(rho) else f", with AR(1) errors over the stores' own weeks (rho {rho[0]:.2f})")
    rho = max(rho, default=next((m.get("autocorrelation") for m in models if m["K"] == best_K), None))
    if rho is None or not rho > AUTOCORRELATION:
        return ""
    return (f", with independent weeks though the residuals are autocorrelated within stores (rho = {rho:.2f}): this "
            "panel's rows are not kept (a file reduced by the engine, or sums), so the test rejects too often: read "
            "its p-values as too small")


def _membership_lines(model):
    """The report's lines on covariates of membership: each segment's log-odds against segment 1
    per sd of each covariate (odds ratio, standard error), the test against no covariates, and
    who is in each segment in words; which model it is where gamma is ridge-penalised, and where the
    covariates separate a segment, what the penalised fit gives."""
    if "gamma" not in model:
        return []
    if model["K"] == 1:
        return ["  covariates of membership: with one segment there is no membership to model, so K = 1 is the "
                "model without them (likelihood ratio 0 on 0 df)"]
    names, K, reference = model["covariates"]["names"], model["K"], model["reference_segment"] - 1
    others = [c for c in range(K) if c != reference]
    test = model["without_covariates"]
    lines = [f"  who is in each segment: log-odds of segment c against segment {reference + 1} (the largest) per sd "
             f"of each covariate (odds ratio exp(gamma); s.e.)"]
    penalty = model.get("covariate_penalty")
    if test and penalty:
        lines[0:0] = [f"  covariates of membership: log-likelihood {test['lr'] / 2:.2f} above the same K without them "
                      f"({test['loglik']:.4f}); no likelihood-ratio test: the fit is penalised"]
    elif test:
        p = "" if test["p"] is None else f", p = {test['p']:.3g}"
        lines[0:0] = [f"  covariates of membership: likelihood ratio {test['lr']:.2f} on {test['df']} df against "
                      f"the same K without them (log-likelihood {test['loglik']:.4f}{p})"]
    if penalty:
        lines[0:0] = [f"  covariates of membership, ridge-penalised (L = {penalty:g} per sd): log L is not a maximum "
                      f"likelihood (log L less the ridge, the maximum: {model['penalised_loglik']:.4f}); gamma shrunk "
                      "toward 0, its s.e. from the penalised information"]
    width = max(10, *map(len, names))
    lines.append(f"  {'':{width}}" + "".join(f"   segment {c + 1:<12d}" for c in others))
    gamma = [[math.copysign(math.inf, value) if str(c + 1) in model["separated"] and abs(value) > GAMMA_LIMIT
              else value for value in row] for c, row in enumerate(model["gamma"])]
    for j, name in enumerate(["intercept"] + names):
        cells = "".join(_gamma_cell(gamma[c][j], model["se_gamma"][c][j], odds=j > 0) for c in others)
        lines.append(f"  {name:>{width}}{cells}")
    for c in range(K):
        lines.append(f"  segment {c + 1} (elasticity {model['theta'][c][model['coefficients'].index('log price')]:.2f}): "
                     f"{_profile_words(model, c)}" if "log price" in model["coefficients"] else
                     f"  segment {c + 1}: {_profile_words(model, c)}")
    if model["separated"]:
        lines.append("  ! the covariates separate segment " + ", ".join(model["separated"]) + f" (|gamma| > {GAMMA_LIMIT:g}): "
                     "the likelihood has no finite maximum in its gamma, shown as +-inf (results.json: where EM stopped "
                     "gaining), without standard errors")
    penalised = model.get("penalised")
    if penalised:
        lines.append(f"  ! with a ridge on gamma (--covariate-penalty {penalised['covariate_penalty']:g}) the maximum is "
                     f"finite: log L {penalised['loglik']:.4f} (less the ridge {penalised['penalised_loglik']:.4f}), "
                     f"largest |gamma| {penalised['largest_gamma']:.2f} per sd, "
                     + ("every s.e. finite" if penalised["se_finite"] else "some s.e. not finite"))
    return lines


def _gamma_cell(value, se, odds):
    """A gamma, its odds ratio exp(gamma) for a covariate, and its standard error; +-inf where
    the covariates separate the segment."""
    shown = f"{value:6.2f}" if math.isfinite(value) else f"{'+inf' if value > 0 else '-inf':>6}"
    ratio = f"x{math.exp(value):<6.2g}" if odds and math.isfinite(value) else " " * 7
    return f"   {shown} {ratio}({_number_cell(se, 5, 2)})"


def _profile_words(model, c, most=2):
    """Segment c's stores in words: the `most` covariates whose posterior-weighted mean lies
    farthest (in sds) from the mean of all stores, each "more" or "fewer"/"lower"."""
    cov = model["covariates"]
    gaps = [(model["profiles"][c][j] - cov["mean"][j]) / cov["sd"][j] for j in range(len(cov["names"]))]
    order = sorted(range(len(gaps)), key=lambda j: -abs(gaps[j]))[:most]
    return "stores with " + " and ".join(f"{'higher' if gaps[j] > 0 else 'lower'} {cov['names'][j]} "
                                         f"({gaps[j]:+.1f} sd)" for j in order)


def store_rows(stores):
    """The stores' lines of results.json, each as json.dumps(_tidy(store)) writes it, without its
    generic recursion: the numbers to JSON_DIGITS digits in one formatting call, with repr's
    form (1.0, not 1). A number below 1e-290 (near the subnormals, fewer digits can name it), from
    1e8 (repr writes it without an exponent) or not finite (null) is formatted alone."""
    shown = {}
    for key in ("posterior", "prior"):
        values = [float(value) for store in stores if key in store for value in store[key]]
        text = (f"%.{JSON_DIGITS}g\n" * len(values) % tuple(values)).split("\n")[:-1]
        text = [cell if "." in cell or "e" in cell or "n" in cell else cell + ".0" for cell in text]
        size = np.abs(values)
        for k in np.flatnonzero(((size < SUBNORMAL_NEAR) & (size != 0)) | ~(size < REPR_PLAIN)):
            text[k] = json.dumps(_tidy(values[k]))
        cells = iter(text)
        shown[key] = ["[" + ", ".join(next(cells) for _ in store[key]) + "]" if key in store else None
                      for store in stores]
    return [f'{{"store": {json.dumps(store["store"])}, "segment": {store["segment"]}, "posterior": {posterior}'
            + (f', "prior": {prior}' if prior is not None else "") + "}"
            for store, posterior, prior in zip(stores, shown["posterior"], shown["prior"])]
