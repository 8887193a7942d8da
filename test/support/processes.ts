/**
 * Ferry's real processes for end-to-end tests: the control plane (`ferry server`), the
 * delegate (`ferry-delegate`) and the CLI, run from the built binaries exactly as a user
 * runs them. Everything spawned is tracked (see spawn.ts); `useProcessGuard()` makes a
 * test file fail when it leaves a process running.
 *
 *   useProcessGuard();
 *   it('runs a pipeline', async () => {
 *     const server = await startServer();
 *     const token = await createDelegateToken(server);
 *     const delegate = startDelegate({ url: server.url, token });
 *     await waitForDelegates(server, { count: 1 });
 *     …
 *     await delegate.stop();
 *     await server.stop();
 *   });
 */
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeEach } from 'vitest';
import {
  assertNoLeftovers, cleanEnv, keptTempDirs, killAll, makeTempDir, OutputBuffer, REPO_ROOT, removeTempDirs,
  sleep, spawnTracked, trackedProcesses, type ExitInfo, type TrackedProcess,
} from './spawn.js';

export {
  assertNoLeftovers, cleanEnv, freePort, killAll, leftovers, makeTempDir, OutputBuffer, REPO_ROOT, removeTempDirs,
  sleep, spawnTracked, trackedProcesses, type ExitInfo, type LiveProcess, type OutputLine, TrackedProcess,
} from './spawn.js';

/** The built CLI and delegate (run with this Node); overridable to test another build. */
export const FERRY_BIN = process.env.FERRY_TEST_FERRY_BIN ?? join(REPO_ROOT, 'control-plane', 'bin', 'ferry.js');
export const DELEGATE_BIN = process.env.FERRY_TEST_DELEGATE_BIN ?? join(REPO_ROOT, 'delegate', 'bin', 'ferry-delegate.js');

type Env = Record<string, string | undefined>;

export interface LogWaitOptions {
  /** default 30 s */
  timeout?: number;
  /** only lines at or after this mark (`handle.output.mark()`); default: every line kept */
  from?: number;
}

export interface StopOptions {
  /** how long the process may take to exit after SIGTERM (default 30 s); then SIGKILL and throw */
  timeout?: number;
}

export interface KillOptions {
  /** signal the whole process group (default true: a crash takes the worker down too) */
  group?: boolean;
  /** wait until everything is gone (default: only for SIGKILL) */
  wait?: boolean;
}

/** SIGTERM, wait for exit, then for the process group to empty. */
async function stopTracked(proc: TrackedProcess, name: string, opts: StopOptions = {}): Promise<ExitInfo> {
  const timeout = opts.timeout ?? 30_000;
  proc.signal('SIGTERM');
  const info = await proc.waitExit(timeout);
  if (!info) {
    const tail = proc.output.tail();
    await proc.killHard();
    proc.untrack();
    throw new Error(`${name} (pid ${proc.pid}) did not exit within ${timeout} ms of SIGTERM (killed); last output:\n${tail}`);
  }
  if (!(await proc.waitGone(5_000))) {
    const left = proc.members().map((p) => `${p.pid} [${p.cmdline}]`).join(', ');
    await proc.killHard();
    proc.untrack();
    throw new Error(`${name} exited but left processes running (killed): ${left}`);
  }
  proc.untrack();
  return info;
}

async function killTracked(proc: TrackedProcess, signal: NodeJS.Signals, opts: KillOptions): Promise<void> {
  const group = opts.group ?? true;
  const wait = opts.wait ?? signal === 'SIGKILL';
  if (group) proc.signalGroup(signal);
  else proc.signal(signal);
  if (!wait) return;
  if (signal === 'SIGKILL' && group) {
    await proc.killHard();
    proc.untrack();
  } else {
    await proc.exited;
  }
}

// ---- server ----------------------------------------------------------------------------

export interface StartServerOptions {
  /** FERRY_DATA_DIR; default a fresh temp dir */
  dataDir?: string;
  /** extra environment (short clocks: FERRY_DELEGATE_GRACE, FERRY_HEARTBEAT_MS, …); undefined removes */
  env?: Env;
  /** default 0 (a free port; restart() keeps the port it got) */
  port?: number;
  /** FERRY_DATABASE_URL (default: the server's own SQLite in the data dir) */
  databaseUrl?: string;
  /** FERRY_LOG_LEVEL, default 'info' */
  logLevel?: string;
  /** the admin token when it is known already (a second server on a shared database writes none) */
  adminToken?: string;
  /** how long to wait for `listening on` (default 30 s) */
  timeout?: number;
  /** extra arguments after `server` */
  args?: string[];
}

export class FerryServer {
  readonly dataDir: string;
  readonly output = new OutputBuffer();
  private proc!: TrackedProcess;
  private _port: number;
  private _url = '';
  private _adminToken: string | undefined;
  private env: Env;

  constructor(private readonly opts: StartServerOptions) {
    this.dataDir = opts.dataDir ?? makeTempDir('ferry-server-');
    mkdirSync(this.dataDir, { recursive: true });
    this._port = opts.port ?? 0;
    this._adminToken = opts.adminToken;
    this.env = { ...opts.env };
  }

  get url(): string { return this._url; }
  get port(): number { return this._port; }
  get pid(): number { return this.proc.pid; }
  get process(): TrackedProcess { return this.proc; }
  get running(): boolean { return !this.proc.hasExited; }
  get databaseUrl(): string { return this.opts.databaseUrl ?? `sqlite:${join(this.dataDir, 'ferry.db')}`; }
  get adminToken(): string {
    if (!this._adminToken) throw new Error(`server ${this.url}: no admin token (pass adminToken for a server on a shared database)`);
    return this._adminToken;
  }

  /** Spawn and wait for `listening on`; used by startServer() and restart(). */
  async start(): Promise<this> {
    const timeout = this.opts.timeout ?? 30_000;
    const deadline = Date.now() + timeout;
    for (let tries = 1; ; tries++) {
      const from = this.output.mark();
      this.proc = spawnTracked(process.execPath, [FERRY_BIN, 'server', ...(this.opts.args ?? [])], {
        name: `ferry server :${this._port || 'auto'}`,
        env: cleanEnv({
          FERRY_LISTEN: `127.0.0.1:${this._port}`,
          FERRY_DATA_DIR: this.dataDir,
          FERRY_LOG_LEVEL: this.opts.logLevel ?? 'info',
          ...(this.opts.databaseUrl ? { FERRY_DATABASE_URL: this.opts.databaseUrl } : {}),
          ...this.env,
        }),
        output: this.output,
        logFile: join(this.dataDir, 'server.log'),
      });
      try {
        const m = await this.proc.waitForLog(/listening on (https?:\/\/[^\s"'\\]+)/, { timeout: Math.max(1, deadline - Date.now()), from });
        this._url = (m[1] ?? '').replace(/\/+$/, '');
        this._port = Number(new URL(this._url).port);
        break;
      } catch (err) {
        await this.proc.killHard().catch(() => {});
        this.proc.untrack();
        // restart() on the same port: the old socket may linger for a moment
        const busy = /EADDRINUSE|address already in use/i.test(this.output.text(from));
        if (busy && this._port !== 0 && tries < 20 && Date.now() < deadline) {
          await sleep(250);
          continue;
        }
        throw new Error(`ferry server did not start (data dir ${this.dataDir}): ${(err as Error).message}`);
      }
    }
    if (!this._adminToken) this._adminToken = await this.readAdminToken(10_000);
    return this;
  }

  private async readAdminToken(timeoutMs: number): Promise<string | undefined> {
    const file = join(this.dataDir, 'admin-token');
    const end = Date.now() + timeoutMs;
    while (Date.now() < end) {
      if (existsSync(file)) {
        const tok = readFileSync(file, 'utf8').trim();
        if (tok) return tok;
      }
      if (this.proc.hasExited) break;
      await sleep(50);
    }
    return undefined;
  }

  waitForLog(re: RegExp, opts: LogWaitOptions = {}): Promise<RegExpMatchArray> {
    return this.proc.waitForLog(re, opts);
  }

  /** Send `signal` (default SIGKILL, to the process group); SIGKILL waits until it is gone. */
  kill(signal: NodeJS.Signals = 'SIGKILL', opts: KillOptions = {}): Promise<void> {
    return killTracked(this.proc, signal, opts);
  }

  /** SIGTERM and wait for a clean exit (throws if it hangs or leaves processes). */
  async stop(opts: StopOptions = {}): Promise<ExitInfo> {
    if (this.proc.hasExited && this.proc.members().length === 0) {
      this.proc.untrack();
      return this.proc.exitStatus ?? { code: null, signal: null };
    }
    return stopTracked(this.proc, `ferry server ${this.url}`, opts);
  }

  /** Stop (if running) and start again: same data dir, same port, same env (plus `env`). */
  async restart(opts: { env?: Env; stop?: StopOptions } = {}): Promise<this> {
    if (this.proc.alive) await this.stop(opts.stop);
    this.env = { ...this.env, ...opts.env };
    return this.start();
  }

  /** Run the CLI against this server with the admin token (unless `token` is given). */
  cli(args: string[], opts: Omit<CliOptions, 'url'> = {}): Promise<CliResult> {
    return ferryCli(args, { url: this.url, token: opts.token ?? this._adminToken, ...opts });
  }

  /** Call the HTTP API (`path` below /api/v1, or absolute from `/`) with the admin token. */
  api<T = unknown>(method: string, path: string, body?: unknown, opts: { token?: string; headers?: Record<string, string> } = {}): Promise<ApiResponse<T>> {
    return apiRequest<T>(this.url, method, path, body, { token: opts.token ?? this._adminToken, headers: opts.headers });
  }
}

/** Start `ferry server` on 127.0.0.1 and wait until it listens and has written its admin token. */
export function startServer(opts: StartServerOptions = {}): Promise<FerryServer> {
  return new FerryServer(opts).start();
}

// ---- delegate --------------------------------------------------------------------------

export interface StartDelegateOptions {
  /** the control plane (FERRY_URL) */
  url: string;
  /** FERRY_DELEGATE_TOKEN */
  token: string;
  /** FERRY_STATE_DIR; default a fresh temp dir */
  stateDir?: string;
  /** FERRY_DELEGATE_NAME; default a unique `d-…` */
  name?: string;
  /** FERRY_DELEGATE_TAGS */
  tags?: string[] | string;
  /** FERRY_DELEGATE_CAPACITY */
  capacity?: number;
  env?: Env;
  /** extra command-line arguments */
  args?: string[];
}

let delegateCounter = 0;

export class FerryDelegate {
  readonly stateDir: string;
  readonly name: string;
  readonly output = new OutputBuffer();
  private proc!: TrackedProcess;
  private env: Env;

  constructor(private readonly opts: StartDelegateOptions) {
    this.stateDir = opts.stateDir ?? makeTempDir('ferry-delegate-');
    mkdirSync(this.stateDir, { recursive: true });
    this.name = opts.name ?? `d-${process.pid}-${++delegateCounter}`;
    this.env = { ...opts.env };
  }

  get pid(): number { return this.proc.pid; }
  get process(): TrackedProcess { return this.proc; }
  get running(): boolean { return !this.proc.hasExited; }
  get url(): string { return this.opts.url; }

  /** Spawn the delegate (does not wait for it to connect: see waitForDelegates). */
  start(): this {
    const tags = Array.isArray(this.opts.tags) ? this.opts.tags.join(',') : this.opts.tags;
    this.proc = spawnTracked(process.execPath, [DELEGATE_BIN, ...(this.opts.args ?? [])], {
      name: `ferry-delegate ${this.name}`,
      env: cleanEnv({
        FERRY_URL: this.opts.url,
        FERRY_DELEGATE_TOKEN: this.opts.token,
        FERRY_STATE_DIR: this.stateDir,
        FERRY_DELEGATE_NAME: this.name,
        FERRY_DELEGATE_TAGS: tags,
        FERRY_DELEGATE_CAPACITY: this.opts.capacity === undefined ? undefined : String(this.opts.capacity),
        ...this.env,
      }),
      output: this.output,
      logFile: join(this.stateDir, 'delegate.log'),
    });
    return this;
  }

  waitForLog(re: RegExp, opts: LogWaitOptions = {}): Promise<RegExpMatchArray> {
    return this.proc.waitForLog(re, opts);
  }

  /** Send `signal` (default SIGKILL, to the process group: supervisor and worker); SIGKILL waits. */
  kill(signal: NodeJS.Signals = 'SIGKILL', opts: KillOptions = {}): Promise<void> {
    return killTracked(this.proc, signal, opts);
  }

  /** SIGTERM (drain) and wait for a clean exit; raise `timeout` for long drains. */
  async stop(opts: StopOptions = {}): Promise<ExitInfo> {
    if (this.proc.hasExited && this.proc.members().length === 0) {
      this.proc.untrack();
      return this.proc.exitStatus ?? { code: null, signal: null };
    }
    return stopTracked(this.proc, `ferry-delegate ${this.name}`, opts);
  }

  /** Stop (if running) and start again with the same state dir: the same delegate id. */
  async restart(opts: { env?: Env; stop?: StopOptions } = {}): Promise<this> {
    if (this.proc.alive) await this.stop(opts.stop);
    this.env = { ...this.env, ...opts.env };
    return this.start();
  }
}

export function startDelegate(opts: StartDelegateOptions): FerryDelegate {
  return new FerryDelegate(opts).start();
}

// ---- CLI -------------------------------------------------------------------------------

export interface CliOptions {
  /** FERRY_URL */
  url?: string;
  /** FERRY_TOKEN */
  token?: string;
  env?: Env;
  /** written to stdin (then closed) */
  input?: string;
  /** default 60 s; then the CLI is killed and the call throws */
  timeout?: number;
}

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** stdout parsed as JSON; throws (with stderr) when the command failed or printed no JSON */
  json<T = unknown>(): T;
  /** this result; throws (with stderr) unless the exit code was 0 */
  ok(): CliResult;
}

/** Run `ferry ARGS…` (the built CLI) and collect its output. */
export async function ferryCli(args: string[], opts: CliOptions = {}): Promise<CliResult> {
  const timeout = opts.timeout ?? 60_000;
  const output = new OutputBuffer(64 * 1024 * 1024);
  const proc = spawnTracked(process.execPath, [FERRY_BIN, ...args], {
    name: `ferry ${args.slice(0, 3).join(' ')}`,
    env: cleanEnv({ FERRY_URL: opts.url, FERRY_TOKEN: opts.token, ...opts.env }),
    output,
    input: opts.input ?? '',
  });
  const chunks: Record<'stdout' | 'stderr', Buffer[]> = { stdout: [], stderr: [] };
  proc.child.stdout?.on('data', (c: Buffer) => chunks.stdout.push(c));
  proc.child.stderr?.on('data', (c: Buffer) => chunks.stderr.push(c));
  const closed = new Promise<void>((r) => proc.child.once('close', () => r()));
  const info = await proc.waitExit(timeout);
  if (!info) {
    await proc.killHard();
    proc.untrack();
    throw new Error(`ferry ${args.join(' ')} did not finish within ${timeout} ms; output:\n${output.tail()}`);
  }
  // the pipes close right after exit, unless a descendant holds them
  await Promise.race([closed, sleep(2_000)]);
  if (!(await proc.waitGone(5_000))) await proc.killHard();
  proc.untrack();
  const stdout = Buffer.concat(chunks.stdout).toString('utf8');
  const stderr = Buffer.concat(chunks.stderr).toString('utf8');
  const describeRun = () => `ferry ${args.join(' ')} → exit ${info.code ?? info.signal}\nstdout: ${stdout.slice(0, 4000)}\nstderr: ${stderr.slice(0, 4000)}`;
  const result: CliResult = {
    code: info.code,
    signal: info.signal,
    stdout,
    stderr,
    json<T>(): T {
      if (info.code !== 0) throw new Error(`command failed: ${describeRun()}`);
      try {
        return JSON.parse(stdout) as T;
      } catch (err) {
        throw new Error(`stdout is not one JSON document (${(err as Error).message}): ${describeRun()}`);
      }
    },
    ok(): CliResult {
      if (info.code !== 0) throw new Error(`command failed: ${describeRun()}`);
      return result;
    },
  };
  return result;
}

export interface TokenCreated {
  id: string;
  kind: string;
  name: string;
  account: string;
  role: string | null;
  token: string;
}

/** A new delegate token (of `account`, default the server's default account), via the CLI. */
export async function createDelegateToken(server: { url: string; adminToken: string }, account?: string): Promise<string> {
  const args = ['token', 'create', '--kind', 'delegate', '--json'];
  if (account) args.push('--account', account);
  const res = await ferryCli(args, { url: server.url, token: server.adminToken });
  return res.json<TokenCreated>().token;
}

// ---- HTTP ------------------------------------------------------------------------------

export interface ApiResponse<T> {
  status: number;
  headers: Headers;
  /** parsed JSON when the answer is JSON, else the text */
  body: T;
  text: string;
}

export async function apiRequest<T = unknown>(
  baseUrl: string, method: string, path: string, body?: unknown,
  opts: { token?: string; headers?: Record<string, string> } = {},
): Promise<ApiResponse<T>> {
  const url = `${baseUrl}${path.startsWith('/') ? path : `/api/v1/${path}`}`;
  const headers: Record<string, string> = { ...opts.headers };
  if (opts.token) headers.authorization = `Bearer ${opts.token}`;
  let payload: string | Buffer | undefined;
  if (body !== undefined) {
    if (typeof body === 'string' || Buffer.isBuffer(body)) payload = body;
    else {
      payload = JSON.stringify(body);
      headers['content-type'] ??= 'application/json';
    }
  }
  const res = await fetch(url, { method, headers, body: payload });
  const text = await res.text();
  let parsed: unknown = text;
  if ((res.headers.get('content-type') ?? '').includes('json') && text) {
    try { parsed = JSON.parse(text); } catch { /* keep the text */ }
  }
  return { status: res.status, headers: res.headers, body: parsed as T, text };
}

// ---- waiting ---------------------------------------------------------------------------

export interface WaitForOptions {
  /** default 30 s */
  timeout?: number;
  /** default 200 ms */
  interval?: number;
  /** what was awaited, for the error */
  message?: string;
}

/**
 * Poll `fn` until it returns a truthy value (returned) or the time is up (throws with
 * `message`, the last value and the last error `fn` threw).
 */
export async function waitFor<T>(fn: () => T | Promise<T>, opts: WaitForOptions = {}): Promise<NonNullable<T>> {
  const timeout = opts.timeout ?? 30_000;
  const interval = opts.interval ?? 200;
  const end = Date.now() + timeout;
  let last: unknown;
  let lastError: unknown;
  for (;;) {
    try {
      last = await fn();
      if (last) return last as NonNullable<T>;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() >= end) break;
    await sleep(Math.min(interval, Math.max(0, end - Date.now())));
  }
  const parts = [`timed out after ${timeout} ms waiting for ${opts.message ?? 'condition'}`];
  if (last !== undefined) parts.push(`last value: ${safeJson(last)}`);
  if (lastError) parts.push(`last error: ${(lastError as Error).message ?? String(lastError)}`);
  throw new Error(parts.join('\n'));
}

function safeJson(v: unknown): string {
  try { return JSON.stringify(v).slice(0, 2000); } catch { return String(v); }
}

export interface DelegateInfo {
  id: string;
  name: string;
  account: string;
  version: string;
  ring: string;
  tags: string[];
  capabilities: string[];
  capacity: number;
  running: number;
  connected: boolean;
  lastSeenAt: string | null;
  upgrade: null | { version: string; state: string; error: string | null };
}

/** Wait until at least `count` delegates (optionally with these names) are connected; resolves with the list. */
export async function waitForDelegates(
  server: { url: string; adminToken: string },
  opts: { count?: number; names?: string[]; timeout?: number } = {},
): Promise<DelegateInfo[]> {
  const count = opts.count ?? opts.names?.length ?? 1;
  return waitFor(async () => {
    const list = (await ferryCli(['delegates', '--json'], { url: server.url, token: server.adminToken })).json<DelegateInfo[]>();
    const connected = list.filter((d) => d.connected && (!opts.names || opts.names.includes(d.name)));
    return connected.length >= count ? list : undefined;
  }, { timeout: opts.timeout ?? 30_000, interval: 300, message: `${count} connected delegate(s)${opts.names ? ` named ${opts.names.join(', ')}` : ''}` });
}

// ---- the guard -------------------------------------------------------------------------

/**
 * Call first thing in a test file (its afterAll then runs last). After a failed test it
 * kills what that test started; after the file it fails if anything it started is still
 * running (and kills it), and removes the temp dirs unless a test failed (or FERRY_TEST_KEEP=1).
 */
export function useProcessGuard(): void {
  let before = new Set<TrackedProcess>();
  beforeEach(() => {
    before = new Set(trackedProcesses());
  });
  afterEach(async (ctx) => {
    if (ctx.task.result?.state !== 'fail') return;
    await Promise.all(trackedProcesses().filter((p) => !before.has(p)).map(async (p) => {
      await p.killHard().catch(() => {});
      p.untrack();
    }));
  });
  afterAll(async (suite) => {
    let failed = false;
    const visit = (t: { result?: { state?: string }; tasks?: unknown[] }): void => {
      if (t.result?.state === 'fail') failed = true;
      for (const c of t.tasks ?? []) visit(c as typeof t);
    };
    visit(suite as unknown as { tasks?: unknown[] });
    try {
      await assertNoLeftovers();
    } finally {
      if (failed && keptTempDirs().length > 0) {
        console.warn(`[ferry tests] a test failed; kept for inspection:\n  ${keptTempDirs().join('\n  ')}`);
      } else {
        removeTempDirs();
      }
    }
  });
}
