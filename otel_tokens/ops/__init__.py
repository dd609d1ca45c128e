"""Operator commands and the status page: answers to "what did we spend, on what, and how long
until the budget runs out" without PromQL.

- `source`: where the numbers come from — a running collector (`/metrics`, `/api/v1/summary`) or
  any Prometheus-compatible query API (for a fleet of collectors, and for history).
- `usage`, `standing`: pure builders — counter samples → usage rows; budget status → burn rate,
  projection and time left.
- `tables`: terminal tables (rich) that fit 80 columns; `report`, `report_html`: the report as
  Markdown, JSON and an offline HTML page with SVG charts (pygal).
- `budget_edit`: `budget set`, a comment-preserving edit of budgets.yaml (ruamel.yaml).
- `page`: the collector's status page (`/`, `/budgets`) and `/api/v1/summary`.
- `commands`: the thin command functions `otel_tokens.cli` registers.
"""
