"""Tables as data and their renderers: a :class:`Table` is a title, notes and blocks of rows;
:func:`render` writes it as Markdown, LaTeX or CSV, bold marking the best value per column within a block.
The layouts (the paper's Tables 1–3, per-sweep ablations) are built in ``lightgen.analysis.tables``."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from lightgen.errors import UserError


@dataclass
class Block:
    label: str
    rows: pd.DataFrame
    bold: bool = True          # mark the best per numeric column


@dataclass
class Table:
    title: str
    columns: list[str]
    blocks: list[Block]
    notes: list[str] = field(default_factory=list)
    partial: bool = False
    numeric: list[str] = field(default_factory=list)   # columns eligible for bold
    name: str = "table"

    def frame(self) -> pd.DataFrame:
        """All rows with a ``block`` column (the CSV layout)."""
        parts = [b.rows.assign(block=b.label) for b in self.blocks if len(b.rows)]
        if not parts:
            return pd.DataFrame(columns=["block"] + self.columns)
        return pd.concat(parts, ignore_index=True)[["block"] + self.columns]


def _best(rows: pd.DataFrame, numeric: list[str]) -> dict[str, float]:
    best = {}
    for c in numeric:
        if c in rows.columns:
            v = pd.to_numeric(rows[c], errors="coerce")
            if v.nunique() > 1 or (v.notna().sum() == 1 and len(rows) == 1):  # all tied: no "best"
                best[c] = float(v.max())
    return best


def _cell(v, col: str) -> str:
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            return "–"
        if col in ("Samples seen", "Train FLOPs"):
            return f"{v:.3g}"
        if col == "Δ Overall":
            return f"{v:+.3f}"
        if col in ("p", "p (Holm)"):
            return f"{v:.3f}"
        if col in ("Epochs", "Device h", "Items per composition", "Abs. margin", "β × abs. margin"):
            return f"{v:.3g}"
        return f"{v:.2f}"
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return str(v)


def _is_best(v, col: str, best: dict[str, float]) -> bool:
    try:
        return col in best and np.isfinite(float(v)) and abs(float(v) - best[col]) < 1e-9
    except (TypeError, ValueError):
        return False


def render(table: Table, fmt: str = "markdown") -> str:
    """Render a table as ``markdown``, ``latex`` or ``csv``."""
    if fmt == "markdown":
        return _markdown(table)
    if fmt == "latex":
        return _latex(table)
    if fmt == "csv":
        return _csv(table)
    raise UserError(f"--format must be markdown, latex or csv, got '{fmt}'")


def _title(table: Table) -> str:
    return table.title + (" (PARTIAL: the sweep is incomplete, see notes)" if table.partial else "")


def _markdown(table: Table) -> str:
    cols = table.columns
    lines = [f"### {_title(table)}", ""]
    lines += ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for block in table.blocks:
        lines.append("| " + f"**{block.label}**" + " |" * len(cols))
        best = _best(block.rows, table.numeric) if block.bold else {}
        for _, r in block.rows.iterrows():
            cells = []
            for c in cols:
                text = _cell(r[c], c)
                cells.append(f"**{text}**" if _is_best(r[c], c, best) else text)
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- {n}" for n in table.notes]
    return "\n".join(lines) + "\n"


def _tex(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("#", r"\#"), ("_", r"\_"),
                 ("$", r"\$"), ("β", r"$\beta$"), ("Δ", r"$\Delta$"),
                 ("×", r"$\times$"), ("–", "--"), ("—", "---"), ("~", r"\textasciitilde{}")):
        s = s.replace(a, b)
    return s


def _latex(table: Table) -> str:
    cols = table.columns
    out = [r"\begin{table}[t]", r"\centering", r"\small",
           r"\caption{" + _tex(_title(table)) + "}",
           r"\begin{tabular}{" + "l" * 3 + "c" * (len(cols) - 3) + "}", r"\toprule",
           " & ".join(_tex(c) for c in cols) + r" \\"]
    for block in table.blocks:
        out += [r"\midrule", r"\multicolumn{%d}{l}{\textit{%s}} \\" % (len(cols), _tex(block.label)), r"\midrule"]
        best = _best(block.rows, table.numeric) if block.bold else {}
        for _, r in block.rows.iterrows():
            cells = []
            for c in cols:
                text = _tex(_cell(r[c], c))
                cells.append(r"\textbf{" + text + "}" if _is_best(r[c], c, best) else text)
            out.append(" & ".join(cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    out += [r"\par\footnotesize " + _tex(n) for n in table.notes]
    out.append(r"\end{table}")
    return "\n".join(out) + "\n"


def _csv(table: Table) -> str:
    df = table.frame()
    df.insert(0, "partial", table.partial)
    df.insert(0, "table", table.title)
    buf = io.StringIO()
    df.to_csv(buf, index=False, quoting=csv.QUOTE_MINIMAL)
    return buf.getvalue()
