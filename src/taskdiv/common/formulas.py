"""CSV cells a spreadsheet would run as formulas (CSV injection): the escape every CSV taskdiv
writes gets (`neutralise`), and its exact reverse for taskdiv's readers (`unneutralise`).
"""
from __future__ import annotations

import re

import pandas as pd

# A text cell a spreadsheet would run as a formula (CSV injection): one that starts with = + - @,
# a tab or a carriage return, after any number of single quotes (so that the escape below
# is undone exactly: see `neutralise`).
_FORMULA = r"^'*[=+\-@\t\r]"


def neutralise(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with each text cell a spreadsheet would run as a formula prefixed with a single
    quote, as OWASP recommends for CSV files ('=1+2 shows as the text =1+2). Numbers stay
    numbers (-3 is no formula). taskdiv's readers of its own CSVs take the quote off again
    (`read_csv(..., neutralised=True)`): the escape and its reverse are exact for every text,
    since only text matching ^'*[=+-@\\t\\r] gets one more quote and only text matching
    ^'+[=+-@\\t\\r] loses one."""
    out = None
    for name in df.columns[[_is_text(df[c]) for c in df.columns]] if len(df.columns) else ():
        values = df[name]
        risky = _matches(values, _FORMULA)
        if risky.any():
            out = df.copy() if out is None else out
            out[name] = values.where(~risky, "'" + values.astype(object).where(risky, ""))
    return df if out is None else out


def unneutralise(df: pd.DataFrame) -> pd.DataFrame:
    """The reverse of `neutralise`, on a CSV taskdiv wrote."""
    for name in df.columns[[_is_text(df[c]) for c in df.columns]] if len(df.columns) else ():
        values = df[name]
        quoted = _matches(values, _FORMULA.replace("'*", "'+"))
        if quoted.any():
            df[name] = values.where(~quoted, values.astype(object).where(quoted, "").str[1:])
    return df


def _is_text(values: pd.Series) -> bool:
    return values.dtype == object or isinstance(values.dtype, pd.StringDtype)


def _matches(values: pd.Series, pattern: str) -> np.ndarray:
    """Which cells are text matching `pattern`: by pandas' string methods, or cell by cell in a
    column that mixes text with other values (a CSV column of 'x' and 'false' is read as both)."""
    import numpy as np

    if isinstance(values.dtype, pd.StringDtype) or pd.api.types.infer_dtype(values, skipna=True) in ("string",
                                                                                                     "empty"):
        return values.str.match(pattern, na=False).to_numpy(bool)
    found = re.compile(pattern)
    return np.array([isinstance(v, str) and found.match(v) is not None for v in values], dtype=bool)
