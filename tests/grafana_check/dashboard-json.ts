// The type a dashboard JSON file must satisfy: Grafana's own `Dashboard` from @grafana/schema.
//
// One adaptation: JSON cannot name a TypeScript enum member, only its value, and Grafana reads
// dashboards from JSON by value. So every string enum (ThresholdsMode, FieldColorModeId, ...)
// also accepts its literal values ("absolute", "percentage"); numeric enums already accept their
// numbers. Everything else — required keys, value types, unknown keys in typed objects — is
// checked exactly as Grafana's TypeScript declares it.
import type { Dashboard } from "@grafana/schema";

type Json<T> = T extends string
  ? T | `${T}`
  : T extends readonly (infer U)[]
    ? Json<U>[]
    : T extends object
      ? { [K in keyof T]: Json<T[K]> }
      : T;

export type DashboardJson = Json<Dashboard>;
