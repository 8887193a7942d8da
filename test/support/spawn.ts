/**
 * Tracked child processes for end-to-end tests: each one runs in its own process group
 * (and session), its output goes to an in-memory ring buffer (and optionally a file),
 * and a registry remembers it so that a test file can kill what it started and fail when
 * something was left running.
 *
 * No vitest imports here: the global setup (main process) uses this module too.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream, mkdtempSync, readdirSync, readFileSync, rmSync, type WriteStream } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root (this file is test/support/spawn.ts). */
export const REPO_ROOT = resolve(fileURLToPath(new URL('.', import.meta.url)), '..', '..');

/**
 * Every tracked process and its descendants carry this variable, so that a descendant
 * that moved to its own process group or session (a step's shell, a delegate worker) is
 * still found by the leftover check. Not a FERRY_ name: Ferry's config must not see it.
 */
export const TAG_VAR = 'VITEST_FERRY_PROC_TAG';

// ---- output buffer ---------------------------------------------------------------------

export interface OutputLine {
  /** absolute index: grows across restarts and never reused, even when old lines are dropped */
  index: number;
  stream: 'stdout' | 'stderr';
  text: string;
}

interface LineWaiter {
  re: RegExp;
  from: number;
  resolve: (m: RegExpMatchArray) => void;
}

/** A line ring buffer capped by bytes (oldest lines are dropped first). */
export class OutputBuffer {
  private entries: OutputLine[] = [];
  private bytes = 0;
  private nextIndex = 0;
  private partial: Record<'stdout' | 'stderr', string> = { stdout: '', stderr: '' };
  private waiters = new Set<LineWaiter>();

  constructor(readonly maxBytes = 4 * 1024 * 1024) {}

  /** Feed raw output; complete lines become visible at once. */
  push(stream: 'stdout' | 'stderr', chunk: string): void {
    const text = this.partial[stream] + chunk;
    const parts = text.split('\n');
    this.partial[stream] = parts.pop() ?? '';
    for (const line of parts) this.add(stream, line.endsWith('\r') ? line.slice(0, -1) : line);
    // a very long unterminated line still counts (and is kept bounded)
    if (this.partial[stream].length > 64 * 1024) {
      this.add(stream, this.partial[stream]);
      this.partial[stream] = '';
    }
  }

  /** Make the unterminated tails visible (called when the process exits). */
  flush(): void {
    for (const stream of ['stdout', 'stderr'] as const) {
      if (this.partial[stream]) this.add(stream, this.partial[stream]);
      this.partial[stream] = '';
    }
  }

  private add(stream: 'stdout' | 'stderr', text: string): void {
    const entry = { index: this.nextIndex++, stream, text };
    this.entries.push(entry);
    this.bytes += text.length + 1;
    while (this.bytes > this.maxBytes && this.entries.length > 1) {
      this.bytes -= (this.entries.shift()?.text.length ?? 0) + 1;
    }
    for (const w of this.waiters) {
      if (entry.index < w.from) continue;
      const m = text.match(w.re);
      if (m) {
        this.waiters.delete(w);
        w.resolve(m);
      }
    }
  }

  /** The index the next line will get: pass it as `from` to wait only for later lines. */
  mark(): number {
    return this.nextIndex;
  }

  lines(from = 0): OutputLine[] {
    return this.entries.filter((e) => e.index >= from);
  }

  text(from = 0, stream?: 'stdout' | 'stderr'): string {
    return this.lines(from).filter((e) => !stream || e.stream === stream).map((e) => e.text).join('\n');
  }

  /** The last `n` lines, for error messages. */
  tail(n = 60): string {
    return this.entries.slice(-n).map((e) => (e.stream === 'stderr' ? `[err] ${e.text}` : e.text)).join('\n');
  }

  /** The first line at or after `from` that matches, else undefined. */
  find(re: RegExp, from = 0): RegExpMatchArray | undefined {
    for (const e of this.entries) {
      if (e.index < from) continue;
      const m = e.text.match(re);
      if (m) return m;
    }
    return undefined;
  }

  /** Resolves with the match of the first line (at or after `from`) that matches. */
  wait(re: RegExp, from = 0, signal?: AbortSignal): Promise<RegExpMatchArray> {
    const found = this.find(re, from);
    if (found) return Promise.resolve(found);
    return new Promise((resolveMatch, reject) => {
      const w: LineWaiter = { re, from, resolve: resolveMatch };
      this.waiters.add(w);
      signal?.addEventListener('abort', () => {
        this.waiters.delete(w);
        reject(signal.reason);
      }, { once: true });
    });
  }
}

// ---- registry --------------------------------------------------------------------------

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

const registry = new Set<TrackedProcess>();

export interface SpawnOptions {
  /** a short label for messages ("server", "delegate d-1", "cli token create") */
  name: string;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** also append the output to this file (debugging); opened in append mode */
  logFile?: string;
  /** share a buffer across restarts of the same logical process */
  output?: OutputBuffer;
  /** data for stdin; stdin is closed after it (or at once when absent) */
  input?: string | Buffer;
}

/**
 * One spawned child: own process group and session (`detached`), tracked until its whole
 * group and every tagged descendant are gone.
 */
export class TrackedProcess {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly tag: string;
  readonly output: OutputBuffer;
  readonly exited: Promise<ExitInfo>;
  readonly startedAt = Date.now();
  private exitInfo: ExitInfo | undefined;
  private file: WriteStream | undefined;

  constructor(readonly command: string, readonly args: readonly string[], readonly opts: SpawnOptions) {
    this.tag = `${opts.name.replace(/[^a-zA-Z0-9_.-]+/g, '_')}.${randomBytes(6).toString('hex')}`;
    this.output = opts.output ?? new OutputBuffer();
    const env = { ...(opts.env ?? process.env), [TAG_VAR]: this.tag };
    this.child = spawn(command, [...args], {
      cwd: opts.cwd ?? REPO_ROOT,
      env,
      detached: true,
      stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
    if (this.child.pid === undefined) {
      // spawn failed synchronously (ENOENT is reported through 'error' right after)
      this.pid = -1;
    } else {
      this.pid = this.child.pid;
    }
    if (opts.logFile) {
      this.file = createWriteStream(opts.logFile, { flags: 'a' });
      this.file.on('error', () => { this.file = undefined; });
      this.file.write(`---- ${new Date().toISOString()} start ${command} ${args.join(' ')} (pid ${this.pid})\n`);
    }
    const feed = (stream: 'stdout' | 'stderr') => (chunk: Buffer) => {
      const s = chunk.toString('utf8');
      this.output.push(stream, s);
      this.file?.write(s);
    };
    this.child.stdout?.on('data', feed('stdout'));
    this.child.stderr?.on('data', feed('stderr'));
    if (opts.input !== undefined && this.child.stdin) {
      this.child.stdin.on('error', () => {}); // the child may exit without reading
      this.child.stdin.end(opts.input);
    }
    // 'exit', not 'close': a descendant holding the pipes open must not delay it
    this.exited = new Promise<ExitInfo>((resolveExit) => {
      const done = (info: ExitInfo) => {
        if (this.exitInfo) return;
        this.exitInfo = info;
        this.output.flush();
        this.file?.end(`---- ${new Date().toISOString()} exit code=${info.code} signal=${info.signal}\n`);
        this.file = undefined;
        resolveExit(info);
      };
      this.child.on('exit', (code, signal) => done({ code, signal }));
      this.child.on('error', (err) => {
        this.output.push('stderr', `spawn error: ${err.message}\n`);
        if (this.child.pid === undefined || this.child.exitCode !== null) done({ code: -1, signal: null });
      });
    });
    // let the test process exit even if a child is still running (the guards kill it)
    this.child.unref();
    (this.child.stdout as unknown as { unref?: () => void } | null)?.unref?.();
    (this.child.stderr as unknown as { unref?: () => void } | null)?.unref?.();
    registry.add(this);
  }

  /** The main process has exited (its group may still have members). */
  get hasExited(): boolean {
    return this.exitInfo !== undefined;
  }

  get exitStatus(): ExitInfo | undefined {
    return this.exitInfo;
  }

  /** Live processes that belong to this one: its group, its session, or tagged. */
  members(): LiveProcess[] {
    if (this.pid <= 0) return [];
    return findProcesses((p) => p.pgrp === this.pid || p.sid === this.pid || p.tag === this.tag)
      .filter((p) => p.pid !== process.pid);
  }

  get alive(): boolean {
    return !this.hasExited || this.members().length > 0;
  }

  /** Signal the main process only. */
  signal(sig: NodeJS.Signals): void {
    if (this.pid > 0 && !this.hasExited) {
      try { process.kill(this.pid, sig); } catch { /* gone */ }
    }
  }

  /** Signal the whole process group, plus every tagged descendant that left it. */
  signalGroup(sig: NodeJS.Signals): void {
    if (this.pid <= 0) return;
    try { process.kill(-this.pid, sig); } catch { /* no such group */ }
    for (const p of this.members()) {
      try { process.kill(p.pid, sig); } catch { /* gone */ }
    }
  }

  /** Wait for the main process to exit; undefined on timeout. */
  async waitExit(timeoutMs: number): Promise<ExitInfo | undefined> {
    let timer: NodeJS.Timeout | undefined;
    const t = new Promise<undefined>((r) => { timer = setTimeout(() => r(undefined), timeoutMs); });
    try {
      return await Promise.race([this.exited, t]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Wait until the group and every tagged descendant are gone; false on timeout. */
  async waitGone(timeoutMs: number): Promise<boolean> {
    const end = Date.now() + timeoutMs;
    if ((await this.waitExit(timeoutMs)) === undefined) return false;
    for (;;) {
      if (this.members().length === 0) return true;
      if (Date.now() >= end) return false;
      await sleep(50);
    }
  }

  /** SIGKILL everything that belongs to this process and wait until it is gone. */
  async killHard(timeoutMs = 10_000): Promise<void> {
    this.signalGroup('SIGKILL');
    const end = Date.now() + timeoutMs;
    while (!(await this.waitGone(200))) {
      if (Date.now() >= end) throw new Error(`${this.opts.name} (pid ${this.pid}) survived SIGKILL: ${describe(this.members())}`);
      this.signalGroup('SIGKILL');
    }
  }

  /** Wait for a line matching `re`; rejects when the process exits first or on timeout. */
  async waitForLog(re: RegExp, opts: { timeout?: number; from?: number } = {}): Promise<RegExpMatchArray> {
    const timeout = opts.timeout ?? 30_000;
    const ac = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(
        `${this.opts.name}: no output line matching ${re} within ${timeout} ms; last output:\n${this.output.tail()}`)), timeout);
    });
    const died = this.exited.then(async (info) => {
      await sleep(20); // let the last lines arrive
      const m = this.output.find(re, opts.from ?? 0);
      if (m) return m;
      throw new Error(`${this.opts.name} exited (code ${info.code}, signal ${info.signal}) before printing a line matching ${re}; last output:\n${this.output.tail()}`);
    });
    try {
      return await Promise.race([this.output.wait(re, opts.from ?? 0, ac.signal), timedOut, died]);
    } finally {
      clearTimeout(timer);
      ac.abort(new Error('done'));
    }
  }

  untrack(): void {
    registry.delete(this);
  }
}

export function spawnTracked(command: string, args: readonly string[], opts: SpawnOptions): TrackedProcess {
  return new TrackedProcess(command, args, opts);
}

/** Every process this worker started and still tracks. */
export function trackedProcesses(): TrackedProcess[] {
  return [...registry];
}

/** Processes started here that are still alive (main process, its group, or tagged descendants). */
export function leftovers(): { proc: TrackedProcess; members: LiveProcess[] }[] {
  const out: { proc: TrackedProcess; members: LiveProcess[] }[] = [];
  for (const proc of registry) {
    const members = proc.members();
    if (!proc.hasExited || members.length > 0) out.push({ proc, members });
    else registry.delete(proc); // fully gone: forget it
  }
  return out;
}

/** SIGKILL every tracked process group (and tagged descendants) and wait until gone. */
export async function killAll(): Promise<void> {
  const procs = [...registry];
  await Promise.all(procs.map(async (p) => {
    try {
      await p.killHard();
    } finally {
      registry.delete(p);
    }
  }));
}

/**
 * Throws when a tracked process (or anything it started) is still alive — after killing
 * it, so that one failing file does not poison the next.
 */
export async function assertNoLeftovers(): Promise<void> {
  const left = leftovers();
  if (left.length === 0) return;
  const report = left.map(({ proc, members }) =>
    `  ${proc.opts.name} (pid ${proc.pid}, ${proc.hasExited ? 'exited, descendants alive' : 'running'}): ${describe(members)}`).join('\n');
  await killAll();
  throw new Error(`processes left running (killed now; stop them in the test):\n${report}`);
}

// Last resort when the worker exits: never leave processes behind.
process.once('exit', () => {
  for (const p of registry) {
    try { process.kill(-p.pid, 'SIGKILL'); } catch { /* gone */ }
    try { if (!p.hasExited) process.kill(p.pid, 'SIGKILL'); } catch { /* gone */ }
  }
});

// ---- /proc scan ------------------------------------------------------------------------

export interface LiveProcess {
  pid: number;
  ppid: number;
  pgrp: number;
  sid: number;
  state: string;
  tag: string | undefined;
  cmdline: string;
}

/** Live (non-zombie) processes matching `pred`, read from /proc (Linux). */
export function findProcesses(pred: (p: LiveProcess) => boolean): LiveProcess[] {
  let names: string[];
  try {
    names = readdirSync('/proc');
  } catch {
    return [];
  }
  const out: LiveProcess[] = [];
  for (const name of names) {
    if (!/^\d+$/.test(name)) continue;
    const p = readProc(Number(name));
    if (p && p.state !== 'Z' && p.state !== 'X' && pred(p)) out.push(p);
  }
  return out;
}

function readProc(pid: number): LiveProcess | undefined {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // comm may contain spaces and parentheses: fields start after the last ')'
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const state = rest[0] ?? '?';
  const ppid = Number(rest[1]);
  const pgrp = Number(rest[2]);
  const sid = Number(rest[3]);
  let tag: string | undefined;
  let cmdline = '';
  try {
    const environ = readFileSync(`/proc/${pid}/environ`, 'utf8');
    const at = environ.indexOf(`${TAG_VAR}=`);
    if (at === 0 || (at > 0 && environ[at - 1] === '\0')) {
      const end = environ.indexOf('\0', at);
      tag = environ.slice(at + TAG_VAR.length + 1, end < 0 ? undefined : end);
    }
  } catch { /* not ours to read */ }
  try {
    cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ').trim().slice(0, 200);
  } catch { /* gone */ }
  return { pid, ppid, pgrp, sid, state, tag, cmdline };
}

function describe(ps: LiveProcess[]): string {
  return ps.length === 0 ? 'main process only' : ps.map((p) => `${p.pid} [${p.cmdline}]`).join(', ');
}

// ---- small helpers ---------------------------------------------------------------------

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A port that was free a moment ago on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolvePort(port));
    });
  });
}

const tempDirs = new Set<string>();

/** A fresh directory under the OS temp dir, removed by `removeTempDirs()`. */
export function makeTempDir(prefix = 'ferry-test-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  tempDirs.add(dir);
  return dir;
}

/** Remove every directory made by `makeTempDir` (kept when FERRY_TEST_KEEP=1). */
export function removeTempDirs(): void {
  if (process.env.FERRY_TEST_KEEP === '1') return;
  for (const dir of tempDirs) {
    try { rmSync(dir, { recursive: true, force: true }); } catch { /* busy: leave it */ }
    tempDirs.delete(dir);
  }
}

export function keptTempDirs(): string[] {
  return [...tempDirs];
}

/**
 * The environment for a Ferry process: this process's environment without any FERRY_*
 * variable (a developer's shell must not leak into a test), plus `extra`.
 */
export function cleanEnv(extra: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k.startsWith('FERRY_') || k === TAG_VAR) continue;
    env[k] = v;
  }
  for (const [k, v] of Object.entries(extra)) {
    if (v === undefined) delete env[k];
    else env[k] = v;
  }
  return env;
}
