import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { DEFAULT_LIMITS, type LogChunk, type TaskAssign, type TaskResult } from '@ferry/shared';
import { Spool, type TaskSpool } from '../spool/spool.js';
import { TaskRunner } from './runner.js';
import { chunkLimits } from './log-sink.js';
import { createHandlers } from './index.js';
import { parseOutputs } from './shell.js';
import { processGone, silentLogger, spooledFrames, tempDir, waitFor } from '../testing.js';

let seq = 0;
function assign(script: string, extra: Partial<TaskAssign> = {}): TaskAssign {
  seq += 1;
  return {
    type: 'task.assign', taskId: `shell-${seq}`, attempt: 1, leaseMs: 30_000,
    spec: { kind: 'shell', script }, env: {}, secrets: {}, ...extra,
  };
}

describe('shell handler', () => {
  let tmp: ReturnType<typeof tempDir>;
  let spool: Spool;
  let runner: TaskRunner;

  const setup = async (spoolMaxBytes = 64 << 20): Promise<void> => {
    spool = new Spool({ dir: join(tmp.dir, 'spool'), maxBytes: spoolMaxBytes });
    await spool.open();
    runner = new TaskRunner({
      spool, handlers: createHandlers(), capabilities: new Set(['shell', 'noop', 'http', 'verify']), capacity: 8,
      stateDir: tmp.dir, killGraceMs: 500, chunkLimits: () => chunkLimits(DEFAULT_LIMITS, 20), logger: silentLogger(),
    });
  };

  beforeEach(async () => {
    tmp = tempDir();
    await setup();
  });
  afterEach(async () => {
    runner.cancelAll('test over');
    await runner.waitIdle(5000);
    await spool.close();
    tmp.cleanup();
  });

  async function run(a: TaskAssign): Promise<{ result: TaskResult; lines: LogChunk['lines']; task: TaskSpool }> {
    expect(runner.assign(a)).toEqual({ accept: true, again: false });
    await waitFor(() => !runner.isRunning(a.taskId, a.attempt), 20_000, 'task end');
    const task = spool.get(a.taskId, a.attempt)!;
    await task.settled();
    const frames = spooledFrames(task);
    const result = frames.at(-1) as TaskResult;
    expect(result.type).toBe('task.result');
    expect(result.seq).toBe(task.lastSeq);
    const lines = (frames.filter((f) => f.type === 'log.chunk') as LogChunk[]).flatMap((c) => c.lines);
    return { result, lines, task };
  }

  it('records the exit code and keeps stdout and stderr apart', async () => {
    const { result, lines } = await run(assign('echo out; echo err >&2; exit 3'));
    expect(result.status).toBe('Failed');
    expect(result.exitCode).toBe(3);
    expect(result.error).toMatchObject({ kind: 'StepFailed', message: 'exit code 3' });
    expect(lines.filter((l) => l.s !== 2).map((l) => [l.s, l.l]).sort()).toEqual([[0, 'out'], [1, 'err']]);
  });

  it('succeeds with exit 0, reads $FERRY_OUTPUT, runs in a fresh work dir it removes afterwards', async () => {
    const a = assign('pwd; test -z "$(ls -A)" && echo empty; echo "VERSION=1.4.2" >> "$FERRY_OUTPUT"; echo "URL=http://x/?a=b" >> "$FERRY_OUTPUT"; echo "$FERRY_STAGE_ID"', {
      env: { FERRY_STAGE_ID: 'dev' },
    });
    const { result, lines } = await run(a);
    expect(result.status).toBe('Succeeded');
    expect(result.exitCode).toBe(0);
    expect(result.outputs).toEqual({ VERSION: '1.4.2', URL: 'http://x/?a=b' });
    const cwd = lines[0]!.l;
    expect(cwd).toBe(join(tmp.dir, 'work', `${a.taskId}-1`));
    expect(lines.map((l) => l.l)).toEqual([cwd, 'empty', 'dev']);
    expect(existsSync(cwd)).toBe(false);
    expect(readdirSync(join(tmp.dir, 'work'))).toEqual([]);
  });

  it('fails with StepFailed when the shell cannot be started', async () => {
    const { result } = await run(assign('echo hi', { spec: { kind: 'shell', script: 'echo hi', shell: 'no-such-shell-xyz' } }));
    expect(result.status).toBe('Failed');
    expect(result.error?.kind).toBe('StepFailed');
    expect(result.error?.message).toMatch(/cannot start no-such-shell-xyz/);
  });

  it('does not hand the delegate token to steps', async () => {
    process.env.FERRY_DELEGATE_TOKEN = 'delegate-token-value';
    try {
      const { lines } = await run(assign('echo "token=[$FERRY_DELEGATE_TOKEN]"'));
      expect(lines.map((l) => l.l)).toEqual(['token=[]']);
    } finally {
      delete process.env.FERRY_DELEGATE_TOKEN;
    }
  });

  it('masks a secret in plain, base64 and URL-encoded form', async () => {
    const secret = 'p@ss word/42';
    const { lines } = await run(assign(
      'echo "plain $DB_PASSWORD"; printf "%s" "$DB_PASSWORD" | base64; echo "url p%40ss%20word%2F42"; echo "$DB_PASSWORD" >&2',
      { secrets: { DB_PASSWORD: secret } },
    ));
    const texts = lines.map((l) => l.l);
    expect(texts).toContain('plain ***');
    expect(texts).toContain('***');
    expect(texts).toContain('url ***');
    const all = texts.join('\n');
    expect(all).not.toContain(secret);
    expect(all).not.toContain(Buffer.from(secret).toString('base64'));
    expect(all).not.toContain(encodeURIComponent(secret));
  });

  it('times out: kills the whole process group and fails with Timeout', async () => {
    const pidFile = join(tmp.dir, 'bg.pid');
    const t0 = Date.now();
    const { result, lines } = await run(assign(`sleep 1000 & echo $! > ${pidFile}; echo started; sleep 1000`, { timeoutMs: 400, killGraceMs: 300 }));
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(result.status).toBe('Failed');
    expect(result.error).toMatchObject({ kind: 'Timeout' });
    expect(lines.some((l) => l.s === 2 && /timed out/.test(l.l))).toBe(true);
    const pid = Number(readFileSync(pidFile, 'utf8'));
    await waitFor(() => processGone(pid), 15_000, `background child ${pid} to be gone`);
  });

  it('cancel kills a background child and reports Canceled', async () => {
    const pidFile = join(tmp.dir, 'bg.pid');
    const a = assign(`sleep 1000 & echo $! > ${pidFile}; wait`);
    expect(runner.assign(a).accept).toBe(true);
    await waitFor(() => existsSync(pidFile) && readFileSync(pidFile, 'utf8').trim() !== '', 10_000, 'pid file');
    const pid = Number(readFileSync(pidFile, 'utf8'));
    expect(processGone(pid)).toBe(false);
    expect(runner.cancel(a.taskId, 1, 'user aborted')).toBe(true);
    await waitFor(() => !runner.isRunning(a.taskId, 1), 10_000, 'task end');
    const task = spool.get(a.taskId, 1)!;
    await task.settled();
    const result = spooledFrames(task).at(-1) as TaskResult;
    expect(result.status).toBe('Canceled');
    expect(result.error).toMatchObject({ kind: 'Canceled', message: 'user aborted' });
    await waitFor(() => processGone(pid), 15_000, `background child ${pid} to be gone`);
  });

  it('escalates to SIGKILL when the script ignores SIGTERM', async () => {
    const a = assign(`trap '' TERM; echo ready; while true; do sleep 0.05; done`, { killGraceMs: 300 });
    expect(runner.assign(a).accept).toBe(true);
    await waitFor(() => (spool.get(a.taskId, 1)?.lastSeq ?? 0) > 0, 10_000, 'first output');
    const t0 = Date.now();
    runner.cancel(a.taskId, 1, 'stop');
    await waitFor(() => !runner.isRunning(a.taskId, 1), 10_000, 'task end');
    expect(Date.now() - t0).toBeLessThan(4000);
    const task = spool.get(a.taskId, 1)!;
    await task.settled(); // the result is durable (spooled) only after the group sync
    const result = spooledFrames(task).at(-1) as TaskResult;
    expect(result.status).toBe('Canceled');
  });

  it('does not run the same task attempt twice and takes a repeated assignment idempotently', async () => {
    const a = assign('sleep 0.3; echo once');
    expect(runner.assign(a)).toEqual({ accept: true, again: false });
    expect(runner.assign(a)).toEqual({ accept: true, again: true });
    expect(runner.runningCount).toBe(1);
    await waitFor(() => !runner.isRunning(a.taskId, 1), 10_000);
    expect(runner.assign(a)).toEqual({ accept: true, again: true }); // still spooled, not acknowledged
    await spool.drop(a.taskId, 1);
    expect(runner.assign(a)).toMatchObject({ accept: false, reason: 'duplicate' });
  });

  it('backpressure: a full spool blocks the step on its pipe, and nothing is lost', async () => {
    await spool.close();
    await setup(64 * 1024);
    const a = assign('for i in $(seq 1 30000); do echo "line $i"; done; echo done');
    expect(runner.assign(a).accept).toBe(true);
    const task = () => spool.get(a.taskId, 1)!;
    await waitFor(() => spool.full, 10_000, 'a full spool');
    await new Promise((r) => setTimeout(r, 300));
    const stalledAt = task().lastSeq;
    await new Promise((r) => setTimeout(r, 300));
    expect(runner.isRunning(a.taskId, 1)).toBe(true);
    expect(task().lastSeq).toBe(stalledAt); // the step is blocked, not dropping
    expect(spool.usedBytes).toBeLessThan(64 * 1024 + 200 * 1024);

    // acknowledge like the server would, collecting everything
    const got: string[] = [];
    while (runner.isRunning(a.taskId, 1) || task().ackedSeq < task().lastSeq) {
      await task().settled();
      for (const f of spooledFrames(task())) if (f.type === 'log.chunk') got.push(...f.lines.filter((l) => l.s === 0).map((l) => l.l));
      const done = task().durableSeq;
      task().ack(done);
      if (task().finished && task().ackedSeq >= task().resultSeq) break;
      await new Promise((r) => setTimeout(r, 5));
    }
    expect(got.length).toBe(30001);
    expect(got[0]).toBe('line 1');
    expect(got[29999]).toBe('line 30000');
    expect(got.at(-1)).toBe('done');
  }, 60_000);
});

describe('parseOutputs', () => {
  it('reads KEY=VALUE lines and heredoc blocks, skipping junk', () => {
    expect(parseOutputs('A=1\nnot a pair\nB = 2\nC=x=y\nM<<EOF\nl1\nl2\nEOF\n=bad\n')).toEqual({ A: '1', B: ' 2', C: 'x=y', M: 'l1\nl2' });
  });
});
