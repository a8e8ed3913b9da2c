"""Standard errors of accuracies, shared by the sweep report (experiments) and the inspector.

One formula, used wherever an accuracy is drawn or compared: a point's accuracy on ``n`` images
has binomial variance p(1-p)/n; a point run with k seeds adds the seed-to-seed variance of the
mean. Imports nothing of the project (common/ is below every package).
"""
from __future__ import annotations

import math

import pandas as pd


def accuracy_unit(*columns) -> float:
    """100.0 when the accuracies in ``columns`` are percents (some finite |value| > 1), 1.0 when they
    are fractions: eval records hold either, and one table is taken to use one unit throughout."""
    values = pd.concat([pd.to_numeric(pd.Series(list(c), dtype=object), errors="coerce") for c in columns]
                       or [pd.Series(dtype=float)]).dropna()
    return 100.0 if len(values) and values.abs().max() > 1.0 else 1.0


def point_se(values, n_val, scale: float = 1.0) -> tuple[float, float]:
    """(mean, SE of the mean) of one point's accuracies over its seeds, in the units of ``values``.

    Binomial variance p(1-p)/n of each seed's accuracy, averaged and divided by k seeds, plus the
    seed-to-seed variance of the mean (sample variance / k, when k >= 2). NaN SE without n.
    ``scale`` is 100 when ``values`` are percentages, 1 when they are fractions."""
    p = pd.to_numeric(pd.Series(list(values)), errors="coerce") / scale
    n = pd.to_numeric(pd.Series(list(n_val)), errors="coerce") if n_val is not None else pd.Series([math.nan] * len(p))
    ok = p.notna()
    p, n = p[ok], n[ok]
    k = len(p)
    if k == 0:
        return math.nan, math.nan
    binom = float((p * (1 - p) / n.where(n > 0)).mean()) / k
    spread = float(p.var(ddof=1)) / k if k >= 2 else 0.0
    return float(p.mean()) * scale, math.sqrt(binom + spread) * scale
