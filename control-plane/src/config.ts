/**
 * Server configuration: read once from the environment, validated, frozen.
 * A bad value stops the process with a message naming the variable.
 */
import path from 'node:path';
import { parseDuration } from '@ferry/shared';

export interface ServerConfig {
  readonly host: string;
  readonly port: number;
  readonly dataDir: string;
  readonly databaseUrl: string;
  readonly logLevel: string;
  /** heartbeat interval announced to delegates; missing 3 marks a delegate disconnected */
  readonly heartbeatMs: number;
  /** a delegate disconnected this long loses its running tasks (DelegateLost) */
  readonly delegateGraceMs: number;
  /** how long an assigned task waits for task.accept before it returns to the queue */
  readonly leaseMs: number;
  /** how long a new socket may take to send hello */
  readonly helloTimeoutMs: number;
  readonly maxFrameBytes: number;
  readonly maxFramesPerSecond: number;
  /** largest HTTP body accepted (release bundles have their own limit) */
  readonly bodyLimit: number;
  readonly bundleLimit: number;
  /** id of this server process (several may share one PostgreSQL database) */
  readonly serverId: string;
  /** rings: soak between rings, probation, minimum sample of the health test */
  readonly ringSoakMs: number;
  readonly ringMinSample: number;
  readonly ringAlpha: number;
  readonly ringCheckMs: number;
  /** per account: executions running at once (0 = no limit) */
  readonly accountRunningLimit: number;
}

export class ConfigError extends Error {}

type Env = Record<string, string | undefined>;

function duration(env: Env, name: string, def: string): number {
  const raw = env[name] ?? def;
  const v = parseDuration(raw);
  if (v === undefined) throw new ConfigError(`${name}: not a duration: ${JSON.stringify(raw)} (use 500ms, 30s, 5m, 1h, 1d)`);
  return v;
}

function int(env: Env, name: string, def: number, min = 0): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return def;
  const v = Number(raw);
  if (!Number.isInteger(v) || v < min) throw new ConfigError(`${name}: expected an integer >= ${min}, got ${JSON.stringify(raw)}`);
  return v;
}

function num(env: Env, name: string, def: number): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return def;
  const v = Number(raw);
  if (!Number.isFinite(v)) throw new ConfigError(`${name}: expected a number, got ${JSON.stringify(raw)}`);
  return v;
}

export function loadServerConfig(env: Env = process.env): ServerConfig {
  const listen = env.FERRY_LISTEN ?? '127.0.0.1:8080';
  const m = /^(.*):(\d+)$/.exec(listen);
  if (!m || Number(m[2]) > 65535) throw new ConfigError(`FERRY_LISTEN: expected host:port, got ${JSON.stringify(listen)}`);
  const dataDir = path.resolve(env.FERRY_DATA_DIR ?? './.ferry');
  const databaseUrl = env.FERRY_DATABASE_URL ?? `sqlite:${path.join(dataDir, 'ferry.db')}`;
  if (!/^(sqlite:|postgres(ql)?:\/\/)/.test(databaseUrl)) {
    throw new ConfigError(`FERRY_DATABASE_URL: expected sqlite:PATH or postgres://…, got ${JSON.stringify(databaseUrl.replace(/:[^:@/]*@/, ':***@'))}`);
  }
  const logLevel = env.FERRY_LOG_LEVEL ?? 'info';
  if (!['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].includes(logLevel)) {
    throw new ConfigError(`FERRY_LOG_LEVEL: expected fatal|error|warn|info|debug|trace|silent, got ${JSON.stringify(logLevel)}`);
  }
  return Object.freeze({
    host: m[1]!.replace(/^\[|\]$/g, ''),
    port: Number(m[2]),
    dataDir,
    databaseUrl,
    logLevel,
    heartbeatMs: duration(env, 'FERRY_HEARTBEAT_INTERVAL', '10s'),
    delegateGraceMs: duration(env, 'FERRY_DELEGATE_GRACE', '60s'),
    leaseMs: duration(env, 'FERRY_LEASE', '15s'),
    helloTimeoutMs: duration(env, 'FERRY_HELLO_TIMEOUT', '10s'),
    maxFrameBytes: int(env, 'FERRY_MAX_FRAME_BYTES', 4 * 1024 * 1024, 1024),
    maxFramesPerSecond: int(env, 'FERRY_MAX_FRAMES_PER_SECOND', 2000, 1),
    bodyLimit: int(env, 'FERRY_BODY_LIMIT', 1024 * 1024, 1024),
    bundleLimit: int(env, 'FERRY_BUNDLE_LIMIT', 100 * 1024 * 1024, 1024),
    serverId: env.FERRY_SERVER_ID ?? globalThis.crypto.randomUUID(),
    ringSoakMs: duration(env, 'FERRY_RING_SOAK', '10m'),
    ringMinSample: int(env, 'FERRY_RING_MIN_SAMPLE', 20, 1),
    ringAlpha: num(env, 'FERRY_RING_ALPHA', 0.01),
    ringCheckMs: duration(env, 'FERRY_RING_CHECK_INTERVAL', '15s'),
    accountRunningLimit: int(env, 'FERRY_ACCOUNT_RUNNING_LIMIT', 0, 0),
  });
}
