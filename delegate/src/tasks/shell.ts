/**
 * shell: runs a script with bash (or spec.shell) in its own process group, in a fresh
 * work dir, with a minimal environment plus the task's env and secrets. Output is read
 * line by line (stdout 0, stderr 1) and paused while the spool is full, so the script
 * blocks on its pipe instead of losing lines.
 */
import { mkdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { execa } from 'execa';
import type { ShellSpec } from '@ferry/shared';
import { LineSplitter } from './lines.js';
import { failed, type AbortCause, type TaskContext, type TaskHandler, type TaskOutcome } from './types.js';
import { processStartTime, terminateGroup } from './process-group.js';

const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
/** Variables a step inherits from the delegate's own environment; nothing else (no token). */
const INHERITED = ['PATH', 'HOME', 'USER', 'LOGNAME', 'SHELL', 'LANG', 'LANGUAGE', 'TZ', 'TMPDIR', 'TERM', 'HOSTNAME'];
/** After the script exits, output still arriving from its children is read until the pipes are quiet this long. */
const QUIET_AFTER_EXIT_MS = 200;
/** … and at most this long (a background child may hold the pipe open forever). */
const MAX_READ_AFTER_EXIT_MS = 2000;
const MAX_OUTPUTS_BYTES = 1 << 20;
/** … and at most this many bytes, which may overshoot the spool bound a little. */
const MAX_BYTES_AFTER_EXIT = 4 << 20;

export function stepEnvironment(base: NodeJS.ProcessEnv, extra: Record<string, string>): Record<string, string> {
  const env: Record<string, string> = {};
  for (const k of INHERITED) {
    const v = base[k];
    if (v !== undefined) env[k] = v;
  }
  for (const [k, v] of Object.entries(base)) if (k.startsWith('LC_') && v !== undefined) env[k] = v;
  env.PATH ??= DEFAULT_PATH;
  return Object.assign(env, extra);
}

/** `KEY=VALUE` lines (and `KEY<<DELIM` … `DELIM` blocks) of the $FERRY_OUTPUT file. */
export function parseOutputs(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  const lines = text.split(/\r?\n/);
  let total = 0;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    let key: string | undefined;
    let value: string | undefined;
    const heredoc = /^([A-Za-z_][A-Za-z0-9_-]*)<<(.+)$/.exec(line);
    if (heredoc) {
      const end = heredoc[2]!;
      const body: string[] = [];
      for (i += 1; i < lines.length && lines[i] !== end; i++) body.push(lines[i]!);
      key = heredoc[1];
      value = body.join('\n');
    } else {
      const eq = line.indexOf('=');
      if (eq <= 0) continue;
      key = line.slice(0, eq).trim();
      value = line.slice(eq + 1);
      if (!/^[A-Za-z_][A-Za-z0-9_-]*$/.test(key)) continue;
    }
    if (key === undefined || value === undefined || key.length > 256) continue;
    total += key.length + value.length;
    if (total > MAX_OUTPUTS_BYTES) break;
    out[key] = value;
  }
  return out;
}

function shellCommand(spec: ShellSpec): [string, string[]] {
  const parts = (spec.shell ?? 'bash').trim().split(/\s+/).filter(Boolean);
  const [cmd, ...args] = parts.length > 0 ? parts : ['bash'];
  return [cmd!, [...args, '-c', spec.script]];
}

export function createShellHandler(opts: { env?: NodeJS.ProcessEnv } = {}): TaskHandler<ShellSpec> {
  const baseEnv = opts.env ?? process.env;

  async function run(ctx: TaskContext<ShellSpec>): Promise<TaskOutcome> {
    const { assign, log, signal, masker } = ctx;
    await rm(ctx.workDir, { recursive: true, force: true });
    await mkdir(ctx.workDir, { recursive: true, mode: 0o700 });
    // Beside the work dir's contents, not in it: a script may expect an empty cwd (git clone .).
    const outputFile = `${ctx.workDir}.output`;
    await rm(outputFile, { force: true });
    try {
      const env = stepEnvironment(baseEnv, {
        ...assign.env,
        ...assign.secrets,
        FERRY_OUTPUT: outputFile,
        FERRY_TASK_ID: assign.taskId,
        FERRY_TASK_ATTEMPT: String(assign.attempt),
      });
      const [cmd, args] = shellCommand(ctx.spec);
      const child = execa(cmd, args, {
        cwd: ctx.workDir,
        env,
        extendEnv: false,
        detached: true,
        cleanup: false,
        stdin: 'ignore',
        stdout: 'pipe',
        stderr: 'pipe',
        buffer: false,
        reject: false,
        windowsHide: true,
      });
      const settled = child.then((r) => r, (err: unknown) => ({ failed: true, exitCode: undefined, signal: undefined, originalMessage: String(err) }));
      const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
        child.once('exit', (code, sig) => resolve({ code, signal: sig }));
      });
      const pid = child.pid;
      if (pid === undefined) {
        const r = await settled;
        return failed('StepFailed', `cannot start ${cmd}: ${masker.mask((r as { originalMessage?: string }).originalMessage ?? 'spawn failed')}`);
      }
      ctx.onProcess({ pid, startTime: processStartTime(pid) });

      const reader = new OutputReader(ctx, [child.stdout, child.stderr]);
      let terminating: Promise<void> | null = null;
      const onAbort = (): void => {
        const cause = signal.reason as AbortCause | undefined;
        log.note(cause?.kind === 'timeout'
          ? `ferry: step timed out after ${cause.timeoutMs}ms; stopping its processes`
          : `ferry: step canceled${cause?.kind === 'cancel' && cause.reason ? `: ${cause.reason}` : ''}; stopping its processes`);
        terminating = terminateGroup(pid, ctx.killGraceMs, exited);
      };
      if (signal.aborted) onAbort();
      else signal.addEventListener('abort', onAbort, { once: true });

      const exit = await Promise.race([exited, settled.then((r) => ({ code: r.exitCode ?? null, signal: (r.signal ?? null) as NodeJS.Signals | null }))]);
      signal.removeEventListener('abort', onAbort);
      await reader.finish();
      if (terminating) await terminating;
      void settled;

      let outputs: Record<string, string> = {};
      try {
        outputs = parseOutputs(await readFile(outputFile, 'utf8'));
        for (const k of Object.keys(outputs)) outputs[k] = masker.mask(outputs[k]!);
      } catch { /* no outputs written */ }

      if (exit.code === 0) return { status: 'Succeeded', exitCode: 0, outputs };
      const why = exit.code !== null ? `exit code ${exit.code}` : `killed by ${exit.signal ?? 'a signal'}`;
      return failed('StepFailed', why, { exitCode: exit.code, outputs });
    } finally {
      await rm(ctx.workDir, { recursive: true, force: true }).catch(() => undefined);
      await rm(outputFile, { force: true }).catch(() => undefined);
    }
  }

  return {
    kind: 'shell',
    run,
    async selfCheck() {
      const r = await execa('bash', ['-c', 'echo ok'], { reject: false, timeout: 10_000, env: stepEnvironment(baseEnv, {}), extendEnv: false });
      if (r.timedOut) throw new Error("bash -c 'echo ok' did not finish within 10s");
      if (r.exitCode !== 0 || String(r.stdout).trim() !== 'ok') throw new Error(`bash -c 'echo ok' gave ${r.signal ? `signal ${r.signal}` : r.code ? r.code : `exit ${r.exitCode}`}: ${String(r.stderr).slice(0, 200)}`);
    },
  };
}

/**
 * Reads stdout and stderr into the task's log, line by line, in the order the lines
 * arrive. Both streams pause while the spool is full.
 */
class OutputReader {
  private readonly ended: Promise<void>[] = [];
  private lastData = Date.now();
  private paused = false;
  /** set once the script exited: the pipes only hold what is left, read it regardless of the spool bound */
  private finishing = false;
  private bytesAfterExit = 0;
  private readonly streams: Readable[];

  constructor(private readonly ctx: TaskContext, streams: Array<Readable | null | undefined>) {
    this.streams = streams.filter((s): s is Readable => !!s);
    this.streams.forEach((stream, i) => {
      const fd = (i === 0 ? 0 : 1) as 0 | 1;
      const splitter = new LineSplitter((l) => ctx.log.line(fd, l));
      this.ended.push(new Promise((resolve) => {
        let ended = false;
        const done = (): void => {
          if (ended) return;
          ended = true;
          splitter.end();
          resolve();
        };
        stream.once('end', done);
        stream.once('close', done);
        stream.once('error', done);
      }));
      stream.on('data', (buf: Buffer) => {
        this.lastData = Date.now();
        if (this.finishing) this.bytesAfterExit += buf.length;
        splitter.push(buf);
        if (!this.finishing && !this.paused && ctx.log.shouldPause) this.pause();
      });
    });
  }

  private pause(): void {
    this.paused = true;
    for (const s of this.streams) s.pause();
    void this.ctx.log.waitForRoom().then(() => this.resume());
  }

  private resume(): void {
    if (!this.paused) return;
    this.paused = false;
    this.lastData = Date.now();
    for (const s of this.streams) if (!s.destroyed) s.resume();
  }

  /**
   * After the script exited: read what its pipes still hold (at most a pipe buffer each
   * from the script itself), then let go of pipes a background child may keep open.
   */
  async finish(): Promise<void> {
    this.finishing = true;
    this.resume();
    const all = Promise.all(this.ended);
    let done = false;
    void all.then(() => { done = true; });
    const start = Date.now();
    this.lastData = Math.max(this.lastData, start - QUIET_AFTER_EXIT_MS / 2);
    while (!done) {
      await Promise.race([all, new Promise((r) => setTimeout(r, 20))]);
      if (done) break;
      const now = Date.now();
      if (now - this.lastData >= QUIET_AFTER_EXIT_MS) break;
      if (now - start >= MAX_READ_AFTER_EXIT_MS || this.bytesAfterExit > MAX_BYTES_AFTER_EXIT) {
        this.ctx.log.note('ferry: the step exited; no longer reading output of processes it left running');
        break;
      }
    }
    for (const s of this.streams) s.destroy();
    await all;
  }
}
