"""The validation part of a text receipt: which sheet was checked, then errors, then warnings.

Each kind of problem is one block, in the order of the rows where it first occurs: its title,
the first rows and how many more, an example or a few, and its fix. Sentences come from the
catalog (:mod:`watcher.language`); rows, values and names are filled in.
"""

from __future__ import annotations

from collections.abc import Sequence
from gettext import NullTranslations

from watcher.models import escaped
from watcher.validate import KINDS, Problem, Report

__all__ = ("join", "problem_lines", "row_list", "sheet_lines")

_ROWS_NAMED = 3  # rows listed before "and N more"
_KINDS_SHOWN = 6  # blocks on one screen; the JSON receipt has them all
# Kinds about columns of the header row: the columns are named, not the row.
_HEADER_KINDS = frozenset({"unknown_column", "duplicate_header"})
# Kinds about a value seen on an earlier row: each example names its pair.
_PAIR_KINDS = frozenset({"duplicate_called_no", "duplicate_session_id"})
_EXAMPLES_OF_MANY = 3  # examples of a header or pair kind; other kinds show one


def join(t: NullTranslations, items: Sequence[str], *, last_and: bool) -> str:
    """``4, 9 and 17`` (or ``4, 9, 17`` before "and N more"), in the receipt's language."""
    if len(items) == 1:
        return items[0]
    head = items[0]
    for item in items[1:-1]:
        head = t.gettext("{first}, {next}").format(first=head, next=item)
    template = t.gettext("{first} and {last}") if last_and else t.gettext("{first}, {next}")
    return template.format(first=head, last=items[-1], next=items[-1])


def row_list(t: NullTranslations, rows: Sequence[int], count: int) -> str:
    """The first rows where a kind occurs and how many more: ``rows 17, 23 and 41 more``.

    Args:
        rows: the rows of the kind's examples, in order (a row may repeat).
        count: how often the kind occurs in the file.
    """
    named = sorted(set(rows))[:_ROWS_NAMED]
    more = count - sum(1 for row in rows if row in named)
    shown = [str(row) for row in named]
    if more <= 0:
        return t.ngettext("row {rows}", "rows {rows}", count).format(
            rows=join(t, shown, last_and=True)
        )
    return t.ngettext("rows {rows} and {more} more", "rows {rows} and {more} more", more).format(
        rows=join(t, shown, last_and=False), more=more
    )


def sheet_lines(t: NullTranslations, report: Report) -> list[str]:
    """Which sheet was checked, and what a person looking at the workbook may not see."""
    if report.sheet is None:
        return []
    sheet = escaped(report.sheet)
    lines = [
        t.ngettext(
            'Checked: sheet "{sheet}", {count} data row.',
            'Checked: sheet "{sheet}", {count} data rows.',
            report.data_rows,
        ).format(sheet=sheet, count=report.data_rows)
    ]
    if report.sheet_hidden:
        lines.append(
            t.gettext(
                "Note: this sheet is hidden in Excel. iSales reads the first sheet, hidden or "
                "not; unhide it (right-click a sheet tab, Unhide) to see what was checked."
            )
        )
    if report.other_sheets and (report.sheet_hidden or not report.is_valid):
        quoted = t.gettext('"{name}"')
        names = [quoted.format(name=escaped(name)) for name in report.other_sheets[:_ROWS_NAMED]]
        if len(report.other_sheets) > _ROWS_NAMED:
            names.append("...")
        lines.append(
            t.ngettext(
                "The workbook also has the sheet {names}; only the first sheet is read.",
                "The workbook also has the sheets {names}; only the first sheet is read.",
                len(report.other_sheets),
            ).format(names=join(t, names, last_and=len(report.other_sheets) <= _ROWS_NAMED))
        )
    return lines


def _example(t: NullTranslations, problem: Problem) -> str:
    excerpt = escaped(problem.excerpt)
    if problem.kind in _HEADER_KINDS:
        return t.gettext('column "{name}" (header row {row})').format(name=excerpt, row=problem.row)
    first = problem.params.get("first_row")
    if problem.kind in _PAIR_KINDS and first is not None:
        if excerpt:
            return t.gettext("row {row}: {value}, also on row {first_row}").format(
                row=problem.row, value=excerpt, first_row=first
            )
        return t.gettext("row {row}: the same as row {first_row}").format(
            row=problem.row, first_row=first
        )
    return t.gettext("row {row}, column {column}: {excerpt}").format(
        row=problem.row, column=escaped(problem.column or ""), excerpt=excerpt
    )


def _block(t: NullTranslations, kind: str, count: int, examples: list[Problem]) -> list[str]:
    """One kind: its title with where it occurs, examples, and its fix."""
    info = KINDS[kind]
    title = t.gettext(info.title)
    on_rows = [p for p in examples if p.row is not None]
    if not on_rows:  # a verdict on the whole file
        lines = [f"* {title}"]
    else:
        where = (
            t.ngettext("{count} column", "{count} columns", count).format(count=count)
            if kind in _HEADER_KINDS
            else row_list(t, [p.row for p in on_rows if p.row], count)
        )
        lines = ["* " + t.gettext("{title}: {where}").format(title=title, where=where)]
    if kind in _HEADER_KINDS | _PAIR_KINDS:
        shown = on_rows[:_EXAMPLES_OF_MANY]
    else:  # one example, if there is something to see (an empty cell is said by the title)
        shown = [p for p in on_rows if p.excerpt][:1]
    lines.extend(f"    {_example(t, p)}" for p in shown)
    lines.append("  " + t.gettext("Fix: {advice}").format(advice=t.gettext(info.advice)))
    return lines


def _first_row(report: Report, kind: str) -> int:
    return min((p.row or 0 for p in report.examples if p.kind == kind), default=0)


def problem_lines(t: NullTranslations, report: Report, name: str) -> list[str]:
    """Errors, then warnings, each labelled; kinds in the order of their first row."""
    kinds = sorted(report.counts, key=lambda kind: (_first_row(report, kind), kind))
    errors = [kind for kind in kinds if report.is_error(kind)]
    warnings = [kind for kind in kinds if not report.is_error(kind)]
    lines: list[str] = []
    room = _KINDS_SHOWN
    for label, group in (
        (t.gettext("Errors (these must be fixed):"), errors),
        (t.gettext("Warnings (these alone do not stop an import):"), warnings),
    ):
        if not group or room <= 0:
            continue
        if lines:
            lines.append("")
        lines.append(label)
        for kind in group[:room]:
            examples = sorted(
                (p for p in report.examples if p.kind == kind), key=lambda p: p.row or 0
            )
            lines.extend(_block(t, kind, report.counts[kind], examples))
        room -= len(group)
    hidden = len(kinds) - _KINDS_SHOWN
    if hidden > 0:
        lines.append(
            t.ngettext(
                "{count} more kind of problem is listed in {receipt}.",
                "{count} more kinds of problems are listed in {receipt}.",
                hidden,
            ).format(count=hidden, receipt=escaped(name) + ".result.json")
        )
    return lines
