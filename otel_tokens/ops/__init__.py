"""Operator commands and the status page: answers to "what did we spend, on what, and how long
until the budget runs out" without PromQL.

- `source`: where the numbers come from — a running collector (`/metrics`, `/api/v1/summary`) or
  any Prometheus-compatible query API (for a fleet of collectors, and for history).
- `usage`, `outlook`: pure builders — counter samples → usage rows; a budget's status → burn rate,
  projection to the window's end and time left.
- `tables`: terminal tables (rich) that fit 80 columns; `report`, `report_html`: the report as
  Markdown, JSON and an offline HTML page with SVG charts (pygal); `html`: pieces both pages share.
- `budget_edit`: `budget set`, a comment-preserving edit of budgets.yaml (ruamel.yaml).
- `summary`, `page`: the collector's `/api/v1/summary` document and the status page rendered from it
  (served by `otel_tokens.collector.status_page`).
- `commands`: the thin command functions `otel_tokens.cli` registers; `progress`: stderr spinner.
"""
