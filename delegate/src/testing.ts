/** Helpers for this package's tests (real files, real processes; no test framework here). */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino, type Logger } from 'pino';
import { decodeDelegateFrame, type LogChunk, type TaskResult } from '@ferry/shared';
import type { TaskSpool } from './spool/spool.js';

export function tempDir(prefix = 'ferry-delegate-test-'): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export const silentLogger = (): Logger => pino({ level: process.env.FERRY_TEST_LOG_LEVEL ?? 'silent' });

/** The frames a task spool holds that are not acknowledged, in sequence order. */
export function spooledFrames(t: TaskSpool): Array<LogChunk | TaskResult> {
  const out: Array<LogChunk | TaskResult> = [];
  for (let seq = t.ackedSeq + 1; seq <= t.durableSeq; seq++) {
    const e = t.entry(seq);
    if (!e) continue;
    const d = decodeDelegateFrame(e.bytes);
    if (!d.ok) throw new Error(`bad spooled frame: ${d.message}`);
    out.push(d.frame as LogChunk | TaskResult);
  }
  return out;
}

export async function waitFor(cond: () => boolean | Promise<boolean>, timeoutMs = 10_000, what = 'condition'): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export function processGone(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return false;
  } catch {
    return true;
  }
}
