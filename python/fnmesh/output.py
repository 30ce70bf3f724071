"""What the command line prints: tables, JSON and errors; with colour and boxed tables (rich)
when the stream is a terminal, plain aligned text when it is piped or redirected, so that
``grep``, ``awk`` and ``cut`` work on it. ``NO_COLOR`` turns colour off on a terminal too.

rich is imported only when a terminal is written to, so that ``import fnmesh`` and piped
output never load it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

__all__ = ["Output"]


class Output:
    """Prints to ``out`` (results) and ``err`` (errors), each styled only on a terminal."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr

    @staticmethod
    def _styled(stream: TextIO) -> bool:
        isatty = getattr(stream, "isatty", None)
        return bool(isatty is not None and isatty())

    def _console(self, stream: TextIO) -> Any:
        from rich.console import Console

        return Console(file=stream, no_color="NO_COLOR" in os.environ, highlight=False, soft_wrap=True)

    def json(self, value: Any) -> None:
        """``value`` as JSON: indented and highlighted on a terminal, one line otherwise."""
        if self._styled(self.out):
            self._console(self.out).print_json(json.dumps(value, ensure_ascii=False))
        else:
            self.out.write(json.dumps(value, ensure_ascii=False) + "\n")
            self.out.flush()

    def line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """A table of ``rows``; an empty cell (None or "") shows as ``-``. Piped: a header line
        in capitals, then one line per row with columns aligned by spaces."""
        cells = [[_cell(v) for v in row] for row in rows]
        if self._styled(self.out):
            from rich.table import Table

            table = Table(title=title, title_justify="left", header_style="bold cyan")
            for column in columns:
                table.add_column(column, overflow="fold")
            for row in cells:
                table.add_row(*row)
            self._console(self.out).print(table)
            return
        header = [c.upper() for c in columns]
        widths = [max(len(r[i]) for r in [header, *cells]) for i in range(len(columns))]
        for row in [header, *cells]:
            padded = [value.ljust(widths[i]) for i, value in enumerate(row[:-1])]
            self.out.write("  ".join([*padded, row[-1]]).rstrip() + "\n")
        self.out.flush()

    def error(self, message: str, code: str | None = None) -> None:
        """``fnmesh: CODE: message`` on the error stream, the code in red on a terminal."""
        if self._styled(self.err):
            from rich.markup import escape

            label = f"[bold red]{escape(code)}[/]: " if code else ""
            self._console(self.err).print(f"[red]fnmesh:[/] {label}{escape(message)}")
            return
        self.err.write(f"fnmesh: {code}: {message}\n" if code else f"fnmesh: {message}\n")
        self.err.flush()


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    text = str(value)
    # One row per record: a newline in a description would break the columns of a pipe.
    return " ".join(text.split()) if "\n" in text or "\t" in text else text
