"""Budgets as code: the `budgets.yaml` schema, its loader, the exact ledger and the renderers.

`spec` owns the models every consumer reads; `loader` turns a YAML file into a `BudgetFile` or one
`BudgetFileError` listing every problem with file:line; `ledger` counts exact use per window.
"""

from __future__ import annotations

from otel_tokens.budgets.loader import BudgetFileError, load_budget_file, parse_budget_text
from otel_tokens.budgets.spec import Budget, BudgetFile

__all__ = ["Budget", "BudgetFile", "BudgetFileError", "load_budget_file", "parse_budget_text"]
