// Wraps dashboard JSON files as TypeScript so `tsc --noEmit` checks them against Grafana's schema.
//
//   node wrap.mjs OUT_DIR dashboard.json...
//
// Writes OUT_DIR/<name>.ts (`const d = {...} satisfies DashboardJson`) for each file and an
// OUT_DIR/tsconfig.json that extends this folder's tsconfig and lists exactly those files, so
// OUT_DIR may live anywhere (a pytest tmp_path) while types still resolve from here.
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const [outDir, ...inputs] = process.argv.slice(2);
if (!outDir || inputs.length === 0) {
  console.error("usage: node wrap.mjs OUT_DIR dashboard.json...");
  process.exit(2);
}
mkdirSync(outDir, { recursive: true });
const typesModule = join(here, "dashboard-json").replaceAll("\\", "/");
const files = inputs.map((input) => {
  const json = JSON.parse(readFileSync(input, "utf8")); // fails loudly on invalid JSON
  const name = basename(input).replace(/\.json$/, "").replace(/[^A-Za-z0-9_-]/g, "_") + ".ts";
  const text =
    `// generated from ${basename(input)} by wrap.mjs\n` +
    `import type { DashboardJson } from ${JSON.stringify(typesModule)};\n\n` +
    `const d = ${JSON.stringify(json, null, 2)} satisfies DashboardJson;\n\n` +
    `export default d;\n`;
  writeFileSync(join(outDir, name), text);
  return name;
});
const tsconfig = { extends: join(here, "tsconfig.json"), files, compilerOptions: { noEmit: true } };
writeFileSync(join(outDir, "tsconfig.json"), JSON.stringify(tsconfig, null, 2) + "\n");
console.log(`wrapped ${files.length} dashboard(s) in ${resolve(outDir)}`);
