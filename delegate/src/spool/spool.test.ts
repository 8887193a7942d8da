import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { appendFileSync, existsSync, readdirSync, statSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import type { LogChunk, TaskResult } from '@ferry/shared';
import { Spool, fileNameFor } from './spool.js';
import { spooledFrames, tempDir } from '../testing.js';

const chunk = (taskId: string, attempt: number, text: string) => (seq: number): LogChunk => ({
  type: 'log.chunk', taskId, attempt, seq, lines: [{ s: 0, t: 1, l: text }],
});
const result = (taskId: string, attempt: number) => (seq: number): TaskResult => ({
  type: 'task.result', taskId, attempt, seq, status: 'Succeeded', exitCode: 0, outputs: {}, startedAt: 1, finishedAt: 2,
});

describe('Spool', () => {
  let tmp: ReturnType<typeof tempDir>;
  let opened: Spool[] = [];
  const newSpool = (maxBytes: number): Spool => {
    const s = new Spool({ dir: tmp.dir, maxBytes });
    opened.push(s);
    return s;
  };
  beforeEach(() => { tmp = tempDir(); opened = []; });
  afterEach(async () => {
    await Promise.all(opened.map((s) => s.close()));
    tmp.cleanup();
  });

  it('writes entries with per-task sequences, sends them in order and drops them on ack', async () => {
    const spool = newSpool(1 << 20);
    await spool.open();
    const a = spool.create({ taskId: 'a', attempt: 1, startedAt: 1 });
    const b = spool.create({ taskId: 'b', attempt: 2, startedAt: 1 });
    expect(a.append(chunk('a', 1, 'one'))).toBe(1);
    expect(a.append(chunk('a', 1, 'two'))).toBe(2);
    expect(b.append(chunk('b', 2, 'x'))).toBe(1);
    expect(a.append(result('a', 1))).toBe(3);
    expect(() => a.append(chunk('a', 1, 'late'))).toThrow(/already has a result/);
    await a.settled();
    await b.settled();
    expect(a.durableSeq).toBe(3);
    expect(existsSync(a.path)).toBe(true);

    const sent = new Map<string, number>();
    const order: string[] = [];
    for (let next = spool.nextToSend(sent); next; next = spool.nextToSend(sent)) {
      sent.set(next.task.key, next.entry.seq);
      order.push(`${next.task.taskId}:${next.entry.seq}`);
    }
    expect(order.filter((o) => o.startsWith('a:'))).toEqual(['a:1', 'a:2', 'a:3']);
    expect(order).toContain('b:1');

    const before = spool.usedBytes;
    expect(spool.ack('a', 1, 2)).toBeUndefined();
    expect(spool.usedBytes).toBeLessThan(before);
    expect(spooledFrames(a).map((f) => f.seq)).toEqual([3]);
    expect(spool.ack('a', 1, 3)).toBe(a); // result acknowledged: done
    expect(a.done).toBe(true);
    await spool.drop('a', 1);
    expect(existsSync(a.path)).toBe(false);
    expect(spool.size).toBe(1);
  });

  it('reopens after a crash with the unacknowledged entries and never reuses a sequence', async () => {
    const s1 = newSpool(1 << 20);
    await s1.open();
    const t = s1.create({ taskId: 'task-1', attempt: 1, startedAt: 5 });
    t.append(chunk('task-1', 1, 'l1'));
    t.append(chunk('task-1', 1, 'l2'));
    t.append(chunk('task-1', 1, 'l3'));
    await t.settled();
    t.ack(1);
    t.recordProcess({ pid: 12345, startTime: '99' });
    await t.settled();
    // no close: the process "dies" here; its writes are in the file

    const s2 = newSpool(1 << 20);
    const loaded = await s2.open();
    expect(loaded).toHaveLength(1);
    const r = loaded[0]!;
    expect(r.taskId).toBe('task-1');
    expect(r.ackedSeq).toBe(1);
    expect(r.lastSeq).toBe(3);
    expect(r.finished).toBe(false);
    expect(r.process).toEqual({ pid: 12345, startTime: '99' });
    expect(spooledFrames(r).map((f) => (f as LogChunk).lines[0]!.l)).toEqual(['l2', 'l3']);
    expect(r.append(result('task-1', 1))).toBe(4);
    await r.settled();

    const s3 = newSpool(1 << 20);
    const again = (await s3.open())[0]!;
    expect(again.finished).toBe(true);
    expect(again.resultSeq).toBe(4);
    expect(spooledFrames(again).map((f) => f.seq)).toEqual([2, 3, 4]);
  });

  it('cuts off a torn tail left by a crash mid-append', async () => {
    const s1 = newSpool(1 << 20);
    await s1.open();
    const t = s1.create({ taskId: 't', attempt: 1, startedAt: 1 });
    t.append(chunk('t', 1, 'whole'));
    await t.settled();
    const size = statSync(t.path).size;
    appendFileSync(t.path, Buffer.from([0, 0, 1, 0, 2, 0x81])); // a record header promising 256 bytes
    const s2 = newSpool(1 << 20);
    const r = (await s2.open())[0]!;
    expect(r.lastSeq).toBe(1);
    expect(statSync(t.path).size).toBe(size);
    expect(r.append(chunk('t', 1, 'next'))).toBe(2);
    await r.settled();
    const s3 = newSpool(1 << 20);
    expect(spooledFrames((await s3.open())[0]!).map((f) => (f as LogChunk).lines[0]!.l)).toEqual(['whole', 'next']);
  });

  it('is bounded: producers wait for room until acknowledgements free it', async () => {
    const spool = newSpool(2000);
    await spool.open();
    const t = spool.create({ taskId: 'big', attempt: 1, startedAt: 1 });
    while (!spool.full) t.append(chunk('big', 1, 'x'.repeat(300)));
    let roomy = false;
    const waiting = spool.waitForRoom().then(() => { roomy = true; });
    await new Promise((r) => setTimeout(r, 50));
    expect(roomy).toBe(false);
    await t.settled();
    t.ack(t.lastSeq - 1);
    await waiting;
    expect(roomy).toBe(true);
    expect(spool.full).toBe(false);
  });

  it('compacts a file whose acknowledged part outweighs the rest', async () => {
    const spool = newSpool(64 << 20);
    await spool.open();
    const t = spool.create({ taskId: 'c', attempt: 1, startedAt: 1 });
    for (let i = 0; i < 40; i++) t.append(chunk('c', 1, `${i}`.padEnd(64 * 1024, '.')));
    await t.settled();
    const big = statSync(t.path).size;
    t.ack(39);
    t.append(chunk('c', 1, 'after'));
    await t.settled();
    expect(statSync(t.path).size).toBeLessThan(big / 4);
    const s2 = newSpool(64 << 20);
    const r = (await s2.open())[0]!;
    expect(r.ackedSeq).toBe(39);
    expect(r.lastSeq).toBe(41);
    expect(spooledFrames(r).map((f) => f.seq)).toEqual([40, 41]);
    expect(readdirSync(tmp.dir).filter((n) => n.endsWith('.compact'))).toEqual([]);
  });

  it('keeps entries in memory and reports when the disk fails', async () => {
    const spool = newSpool(1 << 20);
    await spool.open();
    symlinkSync('/dev/full', join(tmp.dir, fileNameFor('disk', 1)));
    const errors: string[] = [];
    spool.on('writeError', (_t, err: Error) => errors.push(err.message));
    const t = spool.create({ taskId: 'disk', attempt: 1, startedAt: 1 });
    t.append(chunk('disk', 1, 'kept in memory'));
    await t.settled();
    expect(errors.length).toBe(1);
    expect(t.memoryOnly).toBe(true);
    expect(spooledFrames(t).map((f) => (f as LogChunk).lines[0]!.l)).toEqual(['kept in memory']);
  });
});
