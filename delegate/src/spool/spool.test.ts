import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { appendFileSync, existsSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { encodeFrame, type LogChunk, type TaskResult } from '@ferry/shared';
import { FAIR_SHARE_BYTES, TASK_BACKLOG_BYTES, Spool, fileNameFor, segmentFileName, type SpoolOptions } from './spool.js';
import { RecordType, ackPayload, crc32, encodeLegacyRecord, jsCrc32, jsonPayload, readSegRecords } from './records.js';
import { spooledFrames, tempDir, waitFor } from '../testing.js';

const chunk = (taskId: string, attempt: number, text: string) => (seq: number): LogChunk => ({
  type: 'log.chunk', taskId, attempt, seq, lines: [{ s: 0, t: 1, l: text }],
});
const result = (taskId: string, attempt: number) => (seq: number): TaskResult => ({
  type: 'task.result', taskId, attempt, seq, status: 'Succeeded', exitCode: 0, outputs: {}, startedAt: 1, finishedAt: 2,
});
const lines = (frames: Array<LogChunk | TaskResult>): string[] => frames.map((f) => (f.type === 'log.chunk' ? f.lines[0]!.l : `result ${f.seq}`));

describe('Spool', () => {
  let tmp: ReturnType<typeof tempDir>;
  let opened: Spool[] = [];
  const newSpool = (maxBytes: number, opts: Partial<SpoolOptions> = {}): Spool => {
    const s = new Spool({ dir: tmp.dir, maxBytes, ...opts });
    opened.push(s);
    return s;
  };
  const segmentFiles = (): string[] => readdirSync(tmp.dir).filter((n) => n.endsWith('.seg')).sort();
  const diskBytes = (): number => segmentFiles().reduce((n, f) => n + statSync(join(tmp.dir, f)).size, 0);
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
    expect(segmentFiles()).toEqual([segmentFileName(1)]); // one log for both tasks

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
    expect(spool.size).toBe(1);
    expect(spool.get('a', 1)).toBeUndefined();
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

  it('kill-style reopen of a shared log: exactly the unacknowledged entries of each task, in order; no dropped or done task', async () => {
    const s1 = newSpool(1 << 20);
    await s1.open();
    const a = s1.create({ taskId: 'a', attempt: 1, startedAt: 1 });
    const b = s1.create({ taskId: 'b', attempt: 3, startedAt: 2 });
    const c = s1.create({ taskId: 'c', attempt: 1, startedAt: 3 });
    const d = s1.create({ taskId: 'd', attempt: 1, startedAt: 4 });
    for (let i = 1; i <= 5; i++) {
      a.append(chunk('a', 1, `a${i}`));
      b.append(chunk('b', 3, `b${i}`));
      if (i <= 2) c.append(chunk('c', 1, `c${i}`));
    }
    d.append(chunk('d', 1, 'd1'));
    b.append(result('b', 3));
    c.append(result('c', 1));
    d.append(result('d', 1));
    await a.settled();
    a.ack(2);
    b.ack(4);
    c.ack(3); // c is done but not dropped yet
    d.ack(2);
    await s1.drop('d', 1);
    a.append(chunk('a', 1, 'a6'));
    await a.settled();
    // no close

    const s2 = newSpool(1 << 20);
    const loaded = await s2.open();
    expect(loaded.map((t) => t.key).sort()).toEqual([a.key, b.key].sort());
    const ra = s2.get('a', 1)!;
    expect([ra.ackedSeq, ra.lastSeq, ra.durableSeq, ra.finished]).toEqual([2, 6, 6, false]);
    expect(lines(spooledFrames(ra))).toEqual(['a3', 'a4', 'a5', 'a6']);
    const rb = s2.get('b', 3)!;
    expect([rb.ackedSeq, rb.lastSeq, rb.resultSeq]).toEqual([4, 6, 6]);
    expect(lines(spooledFrames(rb))).toEqual(['b5', 'result 6']);
    expect(s2.usedBytes).toBe(ra.unackedBytes + rb.unackedBytes);
    expect(ra.append(chunk('a', 1, 'a7'))).toBe(7);
    await ra.settled();
    // the reopened spool wrote everything it needs into one fresh segment
    expect(segmentFiles()).toEqual([segmentFileName(2)]);

    const s3 = newSpool(1 << 20);
    await s3.open();
    expect(lines(spooledFrames(s3.get('a', 1)!))).toEqual(['a3', 'a4', 'a5', 'a6', 'a7']);
    expect(s3.size).toBe(2);
  });

  it('a dropped task does not come back after a reopen', async () => {
    const s1 = newSpool(1 << 20);
    await s1.open();
    const gone = s1.create({ taskId: 'gone', attempt: 1, startedAt: 1 });
    const kept = s1.create({ taskId: 'kept', attempt: 1, startedAt: 1 });
    gone.append(chunk('gone', 1, 'x'));
    kept.append(chunk('kept', 1, 'y'));
    await gone.settled();
    await s1.drop('gone', 1); // not done: forgotten by the server
    const s2 = newSpool(1 << 20);
    expect((await s2.open()).map((t) => t.taskId)).toEqual(['kept']);
  });

  it('cuts off a torn tail left by a crash mid-append', async () => {
    const s1 = newSpool(1 << 20);
    await s1.open();
    const t = s1.create({ taskId: 't', attempt: 1, startedAt: 1 });
    t.append(chunk('t', 1, 'whole'));
    await t.settled();
    const seg = join(tmp.dir, segmentFileName(1));
    const size = statSync(seg).size;
    appendFileSync(seg, Buffer.from([0, 0, 1, 0, 0xde, 0xad, 0xbe, 0xef, 2, 0x81])); // a record header promising 256 bytes
    const s2 = newSpool(1 << 20);
    const r = (await s2.open())[0]!;
    expect(r.lastSeq).toBe(1);
    expect(existsSync(seg)).toBe(false); // rewritten into a fresh segment
    const fresh = readFileSync(join(tmp.dir, segmentFileName(2)));
    expect(readSegRecords(fresh).validBytes).toBe(fresh.length);
    expect(fresh.length).toBeLessThan(size + 20);
    expect(r.append(chunk('t', 1, 'next'))).toBe(2);
    await r.settled();
    const s3 = newSpool(1 << 20);
    expect(spooledFrames((await s3.open())[0]!).map((f) => (f as LogChunk).lines[0]!.l)).toEqual(['whole', 'next']);
  });

  it('a record with a bad checksum ends the usable part of the segment', async () => {
    const s1 = newSpool(1 << 20);
    await s1.open();
    const t = s1.create({ taskId: 't', attempt: 1, startedAt: 1 });
    t.append(chunk('t', 1, 'first'));
    await t.settled();
    t.append(chunk('t', 1, 'second'));
    await t.settled();
    const seg = join(tmp.dir, segmentFileName(1));
    const buf = readFileSync(seg);
    buf.writeUInt8(buf.readUInt8(buf.length - 3) ^ 0xff, buf.length - 3); // inside the last frame, same length
    writeFileSync(seg, buf);
    const s2 = newSpool(1 << 20);
    const r = (await s2.open())[0]!;
    expect(r.lastSeq).toBe(1);
    expect(lines(spooledFrames(r))).toEqual(['first']);
    expect(r.append(chunk('t', 1, 'again'))).toBe(2);
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

  it('is fair: a task within its share writes on while a loud one waits, and wakes when its own acks free its share', async () => {
    const spool = newSpool(200_000);
    await spool.open();
    const loud = spool.create({ taskId: 'loud', attempt: 1, startedAt: 1 });
    const quiet = spool.create({ taskId: 'quiet', attempt: 1, startedAt: 1 });
    while (!spool.full) loud.append(chunk('loud', 1, 'x'.repeat(4000)));
    expect(loud.mustWait).toBe(true);
    // the quiet task holds nothing: it is not held up by the loud one
    expect(quiet.mustWait).toBe(false);
    await expect(quiet.waitForRoom()).resolves.toBeUndefined();
    // past its share, the quiet one waits too, until its own acknowledgement frees it,
    // even though the spool stays full of the loud task's data
    while (quiet.unackedBytes <= FAIR_SHARE_BYTES) quiet.append(chunk('quiet', 1, 'y'.repeat(4000)));
    expect(quiet.mustWait).toBe(true);
    let woke = false;
    const waiting = quiet.waitForRoom().then(() => { woke = true; });
    await new Promise((r) => setTimeout(r, 30));
    expect(woke).toBe(false);
    await quiet.settled();
    quiet.ack(quiet.lastSeq);
    await waiting;
    expect(woke).toBe(true);
    expect(spool.full).toBe(true);
    expect(loud.mustWait).toBe(true);
  });

  it('paces a task past its backlog even with room in the spool, until its acknowledgements catch up', async () => {
    const spool = newSpool(64 << 20);
    await spool.open();
    const t = spool.create({ taskId: 'fast', attempt: 1, startedAt: 1 });
    while (t.unackedBytes <= TASK_BACKLOG_BYTES) t.append(chunk('fast', 1, 'z'.repeat(16_000)));
    expect(spool.full).toBe(false);
    expect(t.mustWait).toBe(true);
    let woke = false;
    const waiting = t.waitForRoom().then(() => { woke = true; });
    await new Promise((r) => setTimeout(r, 30));
    expect(woke).toBe(false);
    await t.settled();
    t.ack(t.lastSeq - 2);
    await waiting;
    expect(woke).toBe(true);
    expect(t.mustWait).toBe(false);
  });

  it('group commit: frames of many tasks queued in one turn share one write and one fdatasync', async () => {
    const spool = newSpool(64 << 20);
    await spool.open();
    const tasks = Array.from({ length: 20 }, (_, i) => spool.create({ taskId: `g${i}`, attempt: 1, startedAt: 1 }));
    await spool.settle();
    const { writes, syncs } = spool.stats;
    const ready: string[] = [];
    spool.on('ready', (t: { taskId: string }) => ready.push(t.taskId));
    for (const t of tasks) {
      t.append(chunk(t.taskId, 1, 'line'));
      t.append(result(t.taskId, 1));
    }
    await spool.settle();
    expect(spool.stats.writes - writes).toBe(1);
    expect(spool.stats.syncs - syncs).toBe(1);
    expect(ready.sort()).toEqual(tasks.map((t) => t.taskId).sort());
    for (const t of tasks) expect(t.durableSeq).toBe(2);

    // acks and drops are written, not synced
    for (const t of tasks) t.ack(2);
    await Promise.all(tasks.map((t) => spool.drop(t.taskId, 1)));
    expect(spool.stats.syncs - syncs).toBe(1);

    // while a batch is on its way, new frames wait and go together in the next one
    const more = Array.from({ length: 10 }, (_, i) => spool.create({ taskId: `m${i}`, attempt: 1, startedAt: 1 }));
    await spool.settle();
    const before = spool.stats.syncs;
    const writes0 = spool.stats.writes;
    more[0]!.append(chunk('m0', 1, 'first'));
    while (spool.stats.writes === writes0) await new Promise((r) => setImmediate(r)); // the first frame is on its way
    for (const t of more.slice(1)) t.append(chunk(t.taskId, 1, 'later'));
    await spool.settle();
    expect(spool.stats.syncs - before).toBe(2);
  });

  it('rotates segments and reclaims them; a long-running task is carried forward and survives a reopen', async () => {
    const spool = newSpool(64 << 20, { segmentBytes: 2048 });
    await spool.open();
    const long = spool.create({ taskId: 'long', attempt: 1, startedAt: 1 });
    long.recordProcess({ pid: 4242, startTime: '7' });
    long.append(chunk('long', 1, 'early'));
    long.append(chunk('long', 1, 'unacked'));
    await long.settled();
    long.ack(1);
    for (let i = 0; i < 60; i++) {
      const id = `short-${i}`;
      const t = spool.create({ taskId: id, attempt: 1, startedAt: 1 });
      t.append(chunk(id, 1, `output of ${id} `.padEnd(200, '.')));
      t.append(result(id, 1));
      await t.settled();
      t.ack(2);
      await spool.drop(id, 1);
    }
    expect(spool.stats.segmentsCreated).toBeGreaterThan(5);
    expect(spool.stats.carriedForward).toBeGreaterThan(0);
    expect(existsSync(join(tmp.dir, segmentFileName(1)))).toBe(false);
    expect(segmentFiles().length).toBeLessThanOrEqual(3);
    expect(diskBytes()).toBeLessThan(3 * 2048 + 1024);
    expect(long.firstSegment).toBeGreaterThan(1);

    // killed here: a new spool on the same directory
    const s2 = newSpool(64 << 20, { segmentBytes: 2048 });
    const loaded = await s2.open();
    expect(loaded.map((t) => t.taskId)).toEqual(['long']);
    const r = loaded[0]!;
    expect([r.ackedSeq, r.lastSeq, r.finished]).toEqual([1, 2, false]);
    expect(r.process).toEqual({ pid: 4242, startTime: '7' });
    expect(lines(spooledFrames(r))).toEqual(['unacked']);
  });

  it('carries forward a task whose acknowledged output outweighs the rest, so old segments go', async () => {
    const spool = newSpool(64 << 20, { segmentBytes: 256 * 1024 });
    await spool.open();
    const t = spool.create({ taskId: 'c', attempt: 1, startedAt: 1 });
    for (let i = 0; i < 40; i++) t.append(chunk('c', 1, `${i}`.padEnd(64 * 1024, '.')));
    await t.settled();
    const big = diskBytes();
    expect(big).toBeGreaterThan(40 * 64 * 1024);
    t.ack(39);
    t.append(chunk('c', 1, 'after'));
    await t.settled();
    expect(diskBytes()).toBeLessThan(big / 4);
    const s2 = newSpool(64 << 20);
    const r = (await s2.open())[0]!;
    expect(r.ackedSeq).toBe(39);
    expect(r.lastSeq).toBe(41);
    expect(spooledFrames(r).map((f) => f.seq)).toEqual([40, 41]);
  });

  it('deletes its segments once no task is left (after a linger, or at close)', async () => {
    const spool = newSpool(1 << 20, { emptyLingerMs: 20 });
    await spool.open();
    const t = spool.create({ taskId: 'e', attempt: 1, startedAt: 1 });
    t.append(result('e', 1));
    await t.settled();
    expect(segmentFiles()).toHaveLength(1);
    t.ack(1);
    await spool.drop('e', 1);
    await waitFor(() => readdirSync(tmp.dir).length === 0, 2000, 'segments to go');
    // the next task starts a new segment
    const u = spool.create({ taskId: 'f', attempt: 1, startedAt: 1 });
    u.append(result('f', 1));
    await u.settled();
    expect(segmentFiles()).toHaveLength(1);
    u.ack(1);
    await spool.drop('f', 1);
    await spool.close();
    expect(readdirSync(tmp.dir)).toEqual([]);
  });

  it('loads legacy per-task .spool files, migrates them into the log and deletes them', async () => {
    const meta = (taskId: string) => encodeLegacyRecord(RecordType.Meta, jsonPayload({ v: 1, taskId, attempt: 1, startedAt: 9, kind: 'shell' }));
    const frame = (f: LogChunk | TaskResult) => encodeLegacyRecord(RecordType.Frame, encodeFrame(f));
    const legacy = (taskId: string, recs: Buffer[]) => writeFileSync(join(tmp.dir, fileNameFor(taskId, 1)), Buffer.concat(recs));
    legacy('old', [
      meta('old'), frame(chunk('old', 1, 'o1')(1)), frame(chunk('old', 1, 'o2')(2)), encodeLegacyRecord(RecordType.Ack, ackPayload(1)),
      encodeLegacyRecord(RecordType.Process, jsonPayload({ pid: 77 })), frame(chunk('old', 1, 'o3')(3)),
      Buffer.from([0, 0, 0, 9, 2]), // torn tail
    ]);
    legacy('finished', [meta('finished'), frame(result('finished', 1)(1))]);
    legacy('acked', [meta('acked'), frame(result('acked', 1)(1)), encodeLegacyRecord(RecordType.Ack, ackPayload(1))]);
    writeFileSync(join(tmp.dir, 'headless-1-000000000000.spool'), Buffer.from('not a spool'));
    writeFileSync(join(tmp.dir, `${fileNameFor('old', 1)}.compact`), Buffer.from('leftover'));

    const s1 = newSpool(1 << 20);
    const loaded = await s1.open();
    expect(loaded.map((t) => t.taskId).sort()).toEqual(['finished', 'old']);
    const old = s1.get('old', 1)!;
    expect([old.ackedSeq, old.lastSeq, old.finished]).toEqual([1, 3, false]);
    expect(old.meta).toEqual({ v: 1, taskId: 'old', attempt: 1, startedAt: 9, kind: 'shell' });
    expect(old.process).toEqual({ pid: 77 });
    expect(lines(spooledFrames(old))).toEqual(['o2', 'o3']);
    expect(s1.get('finished', 1)!.resultSeq).toBe(1);
    expect(readdirSync(tmp.dir)).toEqual([segmentFileName(1)]);
    expect(old.append(result('old', 1))).toBe(4);
    await old.settled();

    const s2 = newSpool(1 << 20);
    const again = await s2.open();
    expect(again.map((t) => t.taskId).sort()).toEqual(['finished', 'old']);
    expect(lines(spooledFrames(s2.get('old', 1)!))).toEqual(['o2', 'o3', 'result 4']);
    expect(s2.get('old', 1)!.process).toEqual({ pid: 77 });
  });

  it('keeps entries in memory and reports when the disk fails; later tasks use the disk again', async () => {
    let failing = true;
    const spool = newSpool(1 << 20, {
      // a real device that fails every write with ENOSPC
      openFile: (path, flags, mode) => (failing ? open('/dev/full', 'w') : open(path, flags, mode)),
    });
    await spool.open();
    const errors: string[] = [];
    spool.on('writeError', (_t, err: Error) => errors.push(err.message));
    const t = spool.create({ taskId: 'disk', attempt: 1, startedAt: 1 });
    t.append(chunk('disk', 1, 'kept in memory'));
    await t.settled();
    expect(errors.length).toBe(1);
    expect(errors[0]).toMatch(/ENOSPC/);
    expect(t.memoryOnly).toBe(true);
    expect(spooledFrames(t).map((f) => (f as LogChunk).lines[0]!.l)).toEqual(['kept in memory']);
    t.append(chunk('disk', 1, 'also in memory'));
    await t.settled();
    expect(errors.length).toBe(1);
    expect(t.durableSeq).toBe(2);

    failing = false;
    const later = spool.create({ taskId: 'later', attempt: 1, startedAt: 1 });
    later.append(chunk('later', 1, 'on disk'));
    await later.settled();
    expect(later.memoryOnly).toBe(false);
    expect(errors.length).toBe(1);
    const s2 = newSpool(1 << 20);
    expect((await s2.open()).map((x) => x.taskId)).toEqual(['later']);
  });

  it('checksums: the portable crc32 agrees with the one in use, also when continued', () => {
    const data = randomBytes(1000);
    expect(jsCrc32(data)).toBe(crc32(data));
    expect(jsCrc32(data.subarray(400), jsCrc32(data.subarray(0, 400)))).toBe(crc32(data));
    expect(crc32(Buffer.from('123456789'))).toBe(0xcbf43926);
  });
});
