/** Names and ids of accounts, pipelines, stages, steps and rings (CONTRACT §2). */
export const NAME_PATTERN = '^[a-z0-9][a-z0-9-_]*$';
const NAME_RE = new RegExp(NAME_PATTERN);

export const isName = (s: unknown): s is string => typeof s === 'string' && s.length <= 100 && NAME_RE.test(s);

/** `my-step` → `MY_STEP`, for environment variable names. */
export const envName = (name: string): string => name.toUpperCase().replace(/-/g, '_');

export const newId = (): string => globalThis.crypto.randomUUID();
