/**
 * Secret masking: every secret value, and its base64 and URL-encoded forms, is
 * replaced by `***`. Longest patterns first so a secret containing another is masked whole.
 */
function b64(s: string): string {
  const bytes = new TextEncoder().encode(s);
  let bin = '';
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin);
}

export function secretForms(value: string): string[] {
  if (value.length === 0) return [];
  const forms = new Set<string>([value, b64(value), encodeURIComponent(value), b64(value).replace(/=+$/, '')]);
  try { forms.add(encodeURIComponent(value).replace(/%20/g, '+')); } catch { /* ignore */ }
  return [...forms].filter((f) => f.length >= 3 || f === value);
}

export class Masker {
  private readonly re: RegExp | null;
  constructor(values: Iterable<string>) {
    const forms = new Set<string>();
    for (const v of values) for (const f of secretForms(v)) forms.add(f);
    const list = [...forms].sort((a, b) => b.length - a.length).map((f) => f.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
    this.re = list.length ? new RegExp(list.join('|'), 'g') : null;
  }
  mask(line: string): string {
    return this.re ? line.replace(this.re, '***') : line;
  }
  get active(): boolean {
    return this.re !== null;
  }
}
