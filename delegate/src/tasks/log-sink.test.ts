import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Masker, type LogChunk } from '@ferry/shared';
import { Spool } from '../spool/spool.js';
import { IMMEDIATE_IN_FLIGHT, LogSink, chunkLimits, type ChunkLimits } from './log-sink.js';
import { LineSplitter } from './lines.js';
import { spooledFrames, tempDir } from '../testing.js';

describe('LogSink chunk batching', () => {
  let tmp: ReturnType<typeof tempDir>;
  let spool: Spool;
  beforeEach(async () => {
    tmp = tempDir();
    spool = new Spool({ dir: tmp.dir, maxBytes: 64 << 20 });
    await spool.open();
  });
  afterEach(async () => {
    await spool.close();
    tmp.cleanup();
  });

  const sink = (limits: ChunkLimits, secrets: string[] = []) => {
    const task = spool.create({ taskId: `t${Math.random()}`, attempt: 1, startedAt: 0 });
    return { task, sink: new LogSink(task, spool, new Masker(secrets), () => limits) };
  };

  it('cuts chunks at maxLines', async () => {
    const { task, sink: s } = sink({ maxLines: 3, maxBytes: 1 << 20, flushMs: 10_000 });
    for (let i = 1; i <= 7; i++) s.line(0, `line ${i}`);
    s.close();
    await task.settled();
    const chunks = spooledFrames(task) as LogChunk[];
    expect(chunks.map((c) => c.lines.length)).toEqual([3, 3, 1]);
    expect(chunks.map((c) => c.seq)).toEqual([1, 2, 3]);
    expect(chunks.flatMap((c) => c.lines.map((l) => l.l))).toEqual(Array.from({ length: 7 }, (_, i) => `line ${i + 1}`));
  });

  it('cuts chunks at maxBytes and splits a line longer than a chunk', async () => {
    const { task, sink: s } = sink({ maxLines: 1000, maxBytes: 2048, flushMs: 10_000 });
    for (let i = 0; i < 20; i++) s.line(1, 'y'.repeat(200));
    s.line(0, 'z'.repeat(2000));
    s.close();
    await task.settled();
    const chunks = spooledFrames(task) as LogChunk[];
    for (const c of chunks) expect(c.lines.reduce((n, l) => n + l.l.length + 24, 0)).toBeLessThanOrEqual(2048 + 224);
    const zs = chunks.flatMap((c) => c.lines).filter((l) => l.l.startsWith('z'));
    expect(zs.length).toBeGreaterThan(1);
    expect(zs.map((l) => l.l).join('')).toBe('z'.repeat(2000));
    expect(chunks.flatMap((c) => c.lines).filter((l) => l.s === 1)).toHaveLength(20);
  });

  it('sends lines at once while few chunks are unacknowledged, and batches for flushMs past that', async () => {
    const { task, sink: s } = sink({ maxLines: 1000, maxBytes: 1 << 20, flushMs: 150 });
    s.line(0, 'first');
    s.line(0, 'second');
    expect(task.lastSeq).toBe(0);
    // the lines of this tick form one chunk on the next turn of the loop
    await new Promise((r) => setImmediate(r));
    expect(task.lastSeq).toBe(1);
    for (let i = 2; i <= IMMEDIATE_IN_FLIGHT; i++) {
      s.line(0, `line ${i}`);
      await new Promise((r) => setImmediate(r));
      expect(task.lastSeq).toBe(i);
    }
    // IMMEDIATE_IN_FLIGHT chunks are unacknowledged: the next lines wait for the flush timer
    s.line(0, 'batched');
    await new Promise((r) => setTimeout(r, 40));
    expect(task.lastSeq).toBe(IMMEDIATE_IN_FLIGHT);
    await new Promise((r) => setTimeout(r, 200));
    expect(task.lastSeq).toBe(IMMEDIATE_IN_FLIGHT + 1);
    // all acknowledged: the next line goes at once again
    await task.settled();
    task.ack(task.lastSeq);
    s.line(0, 'after the acks');
    await new Promise((r) => setImmediate(r));
    expect(task.lastSeq).toBe(IMMEDIATE_IN_FLIGHT + 2);
    s.close();
    await task.settled();
    const chunks = spooledFrames(task) as LogChunk[];
    expect(chunks.map((c) => c.lines.map((l) => l.l))).toEqual([['after the acks']]);
  });

  it('masks secrets before anything is spooled', async () => {
    const { task, sink: s } = sink(chunkLimits({ maxFrameBytes: 1 << 20, maxChunkLines: 100 }, 10), ['hunter2-secret']);
    s.line(0, 'token=hunter2-secret and b64=' + Buffer.from('hunter2-secret').toString('base64'));
    s.close();
    await task.settled();
    const text = (spooledFrames(task) as LogChunk[])[0]!.lines[0]!.l;
    expect(text).toBe('token=*** and b64=***');
  });
});

describe('LineSplitter', () => {
  it('splits across buffers, keeps multi-byte characters whole and ends a last line without newline', () => {
    const lines: string[] = [];
    const s = new LineSplitter((l) => lines.push(l));
    const bytes = Buffer.from('héllo\r\nwörld\npartial');
    for (const b of bytes) s.push(Buffer.from([b]));
    s.end();
    expect(lines).toEqual(['héllo', 'wörld', 'partial']);
  });
});
