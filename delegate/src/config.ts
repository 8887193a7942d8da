/**
 * Delegate settings (CONTRACT §2): flags win over environment variables, validated once
 * into one frozen object. A bad value is a ConfigError naming the flag or variable; the
 * process entry points turn it into exit code 2.
 */
import { parseArgs } from 'node:util';
import { hostname, homedir } from 'node:os';
import { resolve } from 'node:path';
import { parseDuration } from '@ferry/shared';

export interface DelegateConfig {
  readonly url: string;
  readonly token: string;
  readonly name: string;
  readonly tags: readonly string[];
  readonly capacity: number;
  readonly stateDir: string;
  readonly drainTimeoutMs: number;
  readonly spoolMaxBytes: number;
  readonly killGraceMs: number;
  readonly chunkFlushMs: number;
  readonly logLevel: string;
  readonly reconnectBaseMs: number;
  readonly reconnectMaxMs: number;
  /** how long a new version's worker has to connect and pass its self-checks (FERRY_PROBATION_TIMEOUT) */
  readonly probationTimeoutMs: number;
  /**
   * After an upgrade, this many unexpected worker exits within crashLoopWindowMs roll the
   * delegate back to the version it came from (FERRY_CRASH_LOOP_EXITS, default 3)
   */
  readonly crashLoopExits: number;
  /** how long after an upgrade its worker's crashes count (FERRY_CRASH_LOOP_WINDOW, default 10m) */
  readonly crashLoopWindowMs: number;
}

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

const OPTIONS = {
  url: { type: 'string' },
  token: { type: 'string' },
  name: { type: 'string' },
  tags: { type: 'string' },
  capacity: { type: 'string' },
  'state-dir': { type: 'string' },
  'drain-timeout': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

export const USAGE = `usage: ferry-delegate [--url URL] --token TOKEN [--name NAME] [--tags a,b]
                      [--capacity N] [--state-dir DIR] [--drain-timeout 10m]
Every flag may also be set through its environment variable (FERRY_URL,
FERRY_DELEGATE_TOKEN, FERRY_DELEGATE_NAME, FERRY_DELEGATE_TAGS,
FERRY_DELEGATE_CAPACITY, FERRY_STATE_DIR, FERRY_DRAIN_TIMEOUT).`;

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];
const TAG_RE = /^[A-Za-z0-9][A-Za-z0-9._:/=-]{0,127}$/;

/** Parses flags (argv as process.argv: node, script, ...flags) and env. Throws ConfigError. */
export function loadConfig(argv: readonly string[], env: NodeJS.ProcessEnv): DelegateConfig {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({ args: argv.slice(2), options: OPTIONS, strict: true, allowPositionals: false }));
  } catch (err) {
    throw new ConfigError((err as Error).message);
  }
  if (values.help) throw new ConfigError(USAGE);

  const pick = (flag: keyof typeof OPTIONS, envName: string): { value: string | undefined; source: string } => {
    const f = values[flag];
    if (typeof f === 'string') return { value: f, source: `--${flag}` };
    const e = env[envName];
    return { value: e === '' ? undefined : e, source: envName };
  };
  const internal = (envName: string): { value: string | undefined; source: string } => {
    const e = env[envName];
    return { value: e === '' ? undefined : e, source: envName };
  };

  const url = pick('url', 'FERRY_URL');
  const urlValue = (url.value ?? 'http://127.0.0.1:8080').replace(/\/+$/, '');
  try {
    const u = new URL(urlValue);
    if (!['http:', 'https:', 'ws:', 'wss:'].includes(u.protocol)) throw new Error('scheme');
  } catch {
    throw new ConfigError(`${url.source}: not an http(s) URL: ${JSON.stringify(urlValue)}`);
  }

  const token = pick('token', 'FERRY_DELEGATE_TOKEN');
  if (!token.value || !token.value.trim()) {
    throw new ConfigError('--token / FERRY_DELEGATE_TOKEN is required (a delegate token of one account)');
  }
  if (/\s/.test(token.value.trim())) throw new ConfigError(`${token.source}: the token must not contain whitespace`);

  const name = pick('name', 'FERRY_DELEGATE_NAME');
  const nameValue = (name.value ?? hostname()).trim();
  if (!nameValue || nameValue.length > 256) throw new ConfigError(`${name.source}: name must be 1-256 characters`);

  const tags = pick('tags', 'FERRY_DELEGATE_TAGS');
  const tagList = (tags.value ?? '').split(',').map((t) => t.trim()).filter((t) => t.length > 0);
  for (const t of tagList) if (!TAG_RE.test(t)) throw new ConfigError(`${tags.source}: invalid tag ${JSON.stringify(t)}`);
  if (tagList.length > 64) throw new ConfigError(`${tags.source}: at most 64 tags`);

  const capacity = pick('capacity', 'FERRY_DELEGATE_CAPACITY');
  const capacityValue = int(capacity, 4, 0, 10_000);

  const stateDir = pick('state-dir', 'FERRY_STATE_DIR');
  const stateDirValue = resolve(expandHome(stateDir.value ?? '~/.ferry-delegate'));

  const level = internal('FERRY_LOG_LEVEL');
  const levelValue = (level.value ?? 'info').toLowerCase();
  if (!LOG_LEVELS.includes(levelValue)) throw new ConfigError(`${level.source}: one of ${LOG_LEVELS.join(', ')}`);

  const spoolMax = internal('FERRY_SPOOL_MAX_BYTES');
  const spoolMaxBytes = bytes(spoolMax, 64 * 1024 * 1024);

  const cfg: DelegateConfig = {
    url: urlValue,
    token: token.value.trim(),
    name: nameValue,
    tags: Object.freeze(tagList),
    capacity: capacityValue,
    stateDir: stateDirValue,
    drainTimeoutMs: duration(pick('drain-timeout', 'FERRY_DRAIN_TIMEOUT'), '10m'),
    spoolMaxBytes,
    killGraceMs: duration(internal('FERRY_KILL_GRACE'), '10s'),
    chunkFlushMs: duration(internal('FERRY_CHUNK_FLUSH_MS'), '50ms', 1),
    logLevel: levelValue,
    reconnectBaseMs: duration(internal('FERRY_RECONNECT_BASE'), '500ms', 1),
    reconnectMaxMs: duration(internal('FERRY_RECONNECT_MAX'), '30s', 1),
    probationTimeoutMs: duration(internal('FERRY_PROBATION_TIMEOUT'), '60s', 1),
    crashLoopExits: int(internal('FERRY_CRASH_LOOP_EXITS'), 3, 1, 1000),
    crashLoopWindowMs: duration(internal('FERRY_CRASH_LOOP_WINDOW'), '10m'),
  };
  if (cfg.reconnectMaxMs < cfg.reconnectBaseMs) {
    throw new ConfigError('FERRY_RECONNECT_MAX: must not be below FERRY_RECONNECT_BASE');
  }
  return Object.freeze(cfg);
}

function expandHome(p: string): string {
  if (p === '~') return homedir();
  if (p.startsWith('~/')) return resolve(homedir(), p.slice(2));
  return p;
}

function int(v: { value: string | undefined; source: string }, def: number, min: number, max: number): number {
  if (v.value === undefined) return def;
  const s = v.value.trim();
  if (!/^\d+$/.test(s)) throw new ConfigError(`${v.source}: not an integer: ${JSON.stringify(v.value)}`);
  const n = Number(s);
  if (n < min || n > max) throw new ConfigError(`${v.source}: must be between ${min} and ${max}`);
  return n;
}

function duration(v: { value: string | undefined; source: string }, def: string, min = 0): number {
  const raw = v.value ?? def;
  const ms = parseDuration(raw);
  if (ms === undefined) throw new ConfigError(`${v.source}: not a duration (500ms, 30s, 5m, 1h, 1d): ${JSON.stringify(raw)}`);
  if (ms < min) throw new ConfigError(`${v.source}: must be at least ${min}ms`);
  return ms;
}

const BYTE_UNITS: Record<string, number> = { '': 1, b: 1, k: 1024, kb: 1024, kib: 1024, m: 1 << 20, mb: 1 << 20, mib: 1 << 20, g: 1 << 30, gb: 1 << 30, gib: 1 << 30 };

function bytes(v: { value: string | undefined; source: string }, def: number): number {
  if (v.value === undefined) return def;
  const m = /^(\d+)\s*([a-z]*)$/i.exec(v.value.trim());
  const unit = m ? BYTE_UNITS[m[2]!.toLowerCase()] : undefined;
  if (!m || unit === undefined) throw new ConfigError(`${v.source}: not a size in bytes (e.g. 67108864, 64MiB): ${JSON.stringify(v.value)}`);
  const n = Number(m[1]) * unit;
  if (n < 4096) throw new ConfigError(`${v.source}: must be at least 4096 bytes`);
  return n;
}

/** The config without the token, for logs. */
export function redactedConfig(cfg: DelegateConfig): Record<string, unknown> {
  const { token: _token, ...rest } = cfg;
  return { ...rest, token: '[redacted]' };
}
