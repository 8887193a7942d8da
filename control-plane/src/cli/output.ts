/** Output helpers: one JSON document with --json, a readable table otherwise. */
export function printJson(v: unknown): void {
  process.stdout.write(`${JSON.stringify(v, null, 2)}\n`);
}

export function table(rows: Array<Record<string, unknown>>, columns: Array<[string, string]>): string {
  if (rows.length === 0) return '(none)\n';
  const cells = rows.map((r) => columns.map(([k]) => fmt(r[k])));
  const widths = columns.map(([, h], i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)));
  const line = (vals: string[]) => vals.map((v, i) => v.padEnd(widths[i]!)).join('  ').trimEnd();
  return `${[line(columns.map(([, h]) => h)), ...cells.map(line)].join('\n')}\n`;
}

function fmt(v: unknown): string {
  if (v === null || v === undefined) return '-';
  if (Array.isArray(v)) return v.join(',') || '-';
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

export function print(s: string): void {
  process.stdout.write(s.endsWith('\n') ? s : `${s}\n`);
}

export function ago(iso: string | null | undefined): string {
  if (!iso) return '-';
  const ms = Date.now() - Date.parse(iso);
  if (ms < 60_000) return `${Math.max(0, Math.round(ms / 1000))}s ago`;
  if (ms < 3_600_000) return `${Math.round(ms / 60_000)}m ago`;
  return `${Math.round(ms / 3_600_000)}h ago`;
}
