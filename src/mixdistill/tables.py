"""The one way the commands print a rich table: folded to fit a terminal, at its own width elsewhere.

Off a terminal (a pipe, a file, a CI log) rich assumes 80 columns and folds every cell to fit, so a run's path or
its config breaks across lines that ``grep`` and ``sort`` then see apart; there the table is printed at the width
its longest cells ask for instead, or at ``max_width`` where that is less (the ``methods`` and ``augments`` tables,
prose in their cells, take 160). ``COLUMNS`` set in the environment is a width asked for, and is kept.
"""

from __future__ import annotations

import os


def print_table(table, console=None, max_width: int | None = None, **print_kwargs):
    """Print ``table`` on ``console`` (a new standard-output console by default); returns the console."""
    from rich.console import Console
    from rich.measure import Measurement

    console = console or Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        wanted = Measurement.get(console, console.options.update_width(1 << 20), table).maximum
        console.width = max(console.width, min(wanted, max_width or wanted))
    console.print(table, **print_kwargs)
    return console
