/**
 * The log spool: an on-disk outbox per task attempt. Every log chunk and the result is
 * written (appended, fdatasync'd in batches) before it may be sent, and stays until the
 * server acknowledges it, so neither a disconnect nor a kill -9 of the worker loses or
 * duplicates a line. The spool is bounded by bytes not yet acknowledged; a full spool
 * makes producers wait (`waitForRoom`), it never drops.
 */
import { EventEmitter } from 'node:events';
import { mkdir, open, readdir, readFile, rename, truncate, unlink, type FileHandle } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { dirname, join } from 'node:path';
import {
  encodeFrame, decodeDelegateFrame,
  type LogChunk, type TaskResult,
} from '@ferry/shared';
import type { Logger } from 'pino';
import {
  RecordType, encodeRecord, encodeJsonRecord, encodeAckRecord, readRecords,
  RECORD_HEADER_BYTES, type TaskMeta, type ProcessInfo,
} from './records.js';

export type SpooledFrame = LogChunk | TaskResult;

export interface SpoolEntry {
  seq: number;
  /** the encoded frame, sent as is */
  bytes: Buffer;
  result: boolean;
}

export const taskKey = (taskId: string, attempt: number): string => `${taskId}\u0000${attempt}`;

/** Makes a new file's directory entry durable too (a power cut, not only a kill -9). */
async function syncDir(dir: string): Promise<void> {
  try {
    const fh = await open(dir, 'r');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
  } catch { /* not supported everywhere; the data itself is synced */ }
}

export function fileNameFor(taskId: string, attempt: number): string {
  const safe = taskId.replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 64);
  const hash = createHash('sha256').update(taskKey(taskId, attempt)).digest('hex').slice(0, 12);
  return `${safe}-${attempt}-${hash}.spool`;
}

interface QueuedWrite {
  rec: Buffer;
  /** needs fdatasync before its frames count as durable */
  sync: boolean;
  seq: number;
}

/** Compaction rewrites a file once its acknowledged part outweighs the live part. */
const COMPACT_MIN_DEAD_BYTES = 1 << 20;

export class TaskSpool {
  readonly key: string;
  /** highest sequence assigned */
  lastSeq = 0;
  /** highest sequence the server acknowledged */
  ackedSeq = 0;
  /** highest sequence written and synced (or held in memory after a disk failure) */
  durableSeq = 0;
  /** sequence of the result, 0 while the task runs */
  resultSeq = 0;
  /** true after a disk write failed: entries live in memory only from then on */
  memoryOnly = false;
  process: ProcessInfo | undefined;
  /** the server no longer wants this task: nothing more is sent, the spool is about to be dropped */
  suppressed = false;
  /** unacknowledged entries, ascending by sequence */
  private readonly entries: SpoolEntry[] = [];
  private fh: FileHandle | null = null;
  private opened = false;
  private fileBytes = 0;
  private queue: QueuedWrite[] = [];
  private writing: Promise<void> | null = null;
  private forgotten = false;
  private readonly metaRecord: Buffer;
  private processRecord: Buffer | null = null;

  constructor(
    private readonly spool: Spool,
    readonly meta: TaskMeta,
    readonly path: string,
    recovered?: { entries: SpoolEntry[]; lastSeq: number; ackedSeq: number; resultSeq: number; fileBytes: number; process?: ProcessInfo },
  ) {
    this.key = taskKey(meta.taskId, meta.attempt);
    this.metaRecord = encodeJsonRecord(RecordType.Meta, meta);
    if (recovered) {
      this.entries.push(...recovered.entries);
      this.lastSeq = recovered.lastSeq;
      this.ackedSeq = recovered.ackedSeq;
      this.durableSeq = recovered.lastSeq;
      this.resultSeq = recovered.resultSeq;
      this.fileBytes = recovered.fileBytes;
      this.opened = true;
      if (recovered.process) this.setProcessRecord(recovered.process);
    } else {
      this.queue.push({ rec: this.metaRecord, sync: false, seq: 0 });
    }
  }

  get taskId(): string {
    return this.meta.taskId;
  }
  get attempt(): number {
    return this.meta.attempt;
  }
  get finished(): boolean {
    return this.resultSeq > 0;
  }
  /** the result is acknowledged: the task may be forgotten */
  get done(): boolean {
    return this.resultSeq > 0 && this.ackedSeq >= this.resultSeq;
  }
  get unackedBytes(): number {
    let n = 0;
    for (const e of this.entries) n += e.bytes.length;
    return n;
  }
  get pendingEntries(): number {
    return this.entries.length;
  }

  /**
   * Assigns the next sequence, encodes the frame and queues it for the disk. The frame
   * becomes sendable once durable (the spool emits 'ready').
   */
  append(build: (seq: number) => SpooledFrame): number {
    if (this.forgotten) throw new Error(`spool of task ${this.meta.taskId} was dropped`);
    if (this.resultSeq > 0) throw new Error(`task ${this.meta.taskId} already has a result`);
    const seq = this.lastSeq + 1;
    const frame = build(seq);
    const bytes = encodeFrame(frame);
    this.lastSeq = seq;
    const result = frame.type === 'task.result';
    if (result) this.resultSeq = seq;
    this.entries.push({ seq, bytes, result });
    this.spool.adjustBytes(bytes.length);
    this.enqueue({ rec: encodeRecord(RecordType.Frame, bytes), sync: true, seq });
    return seq;
  }

  /** Records the process group of the task, so a restarted worker can kill an orphan. */
  recordProcess(info: ProcessInfo): void {
    if (this.forgotten) return;
    this.setProcessRecord(info);
    this.enqueue({ rec: this.processRecord!, sync: false, seq: 0 });
  }

  private setProcessRecord(info: ProcessInfo): void {
    this.process = info;
    this.processRecord = encodeJsonRecord(RecordType.Process, info);
  }

  /** Entry with this sequence if it is durable and not acknowledged. */
  entry(seq: number): SpoolEntry | undefined {
    if (seq > this.durableSeq || seq <= this.ackedSeq) return undefined;
    const first = this.entries[0];
    if (!first) return undefined;
    return this.entries[seq - first.seq];
  }

  /** Cumulative acknowledgement. Returns true when it newly made the task done. */
  ack(seq: number): boolean {
    const wasDone = this.done;
    const upTo = Math.min(seq, this.lastSeq);
    if (upTo <= this.ackedSeq || this.forgotten) return false;
    this.ackedSeq = upTo;
    let freed = 0;
    while (this.entries.length > 0 && this.entries[0]!.seq <= upTo) freed += this.entries.shift()!.bytes.length;
    if (freed > 0) this.spool.adjustBytes(-freed);
    // An ack record needs no fdatasync of its own: losing one only means a resend,
    // and the server keeps chunks by (task, seq).
    this.enqueue({ rec: encodeAckRecord(upTo), sync: false, seq: 0 });
    return !wasDone && this.done;
  }

  /** Resolves when everything queued so far is on disk. */
  async settled(): Promise<void> {
    while (this.writing) await this.writing;
  }

  private enqueue(w: QueuedWrite): void {
    this.queue.push(w);
    this.kick();
  }

  private kick(): void {
    if (this.writing || this.forgotten) return;
    this.writing = this.drain().finally(() => {
      this.writing = null;
      if (this.queue.length > 0) this.kick();
    });
  }

  private async drain(): Promise<void> {
    while (this.queue.length > 0 && !this.forgotten) {
      const batch = this.queue.splice(0);
      let maxSeq = 0;
      let sync = false;
      for (const w of batch) {
        if (w.seq > maxSeq) maxSeq = w.seq;
        if (w.sync) sync = true;
      }
      if (!this.memoryOnly) {
        try {
          await this.writeBatch(batch.map((w) => w.rec), sync);
        } catch (err) {
          await this.failDisk(err as Error);
        }
      }
      if (maxSeq > this.durableSeq) {
        this.durableSeq = maxSeq;
        this.spool.emit('ready', this);
      }
      if (!this.memoryOnly && !this.forgotten && this.needsCompaction()) {
        try {
          await this.compact();
        } catch (err) {
          this.spool.logger?.warn({ taskId: this.meta.taskId, err: (err as Error).message }, 'spool compaction failed');
        }
      }
    }
  }

  private async writeBatch(recs: Buffer[], sync: boolean): Promise<void> {
    if (!this.fh) {
      // a new task truncates any stale file; a recovered one appends
      const fresh = !this.opened;
      this.fh = await open(this.path, fresh ? 'w' : 'a', 0o600);
      this.opened = true;
      if (fresh) await syncDir(dirname(this.path));
    }
    const total = recs.reduce((n, r) => n + r.length, 0);
    const { bytesWritten } = await this.fh.writev(recs);
    if (bytesWritten !== total) {
      const e = new Error(`short write to spool (${bytesWritten} of ${total} bytes)`) as NodeJS.ErrnoException;
      e.code = 'ENOSPC';
      throw e;
    }
    if (sync) await this.fh.datasync();
    this.fileBytes += total;
  }

  private async failDisk(err: Error): Promise<void> {
    this.memoryOnly = true;
    // Cut off a half-written record so the file stays readable; entries stay in memory.
    try {
      if (this.fh) await this.fh.truncate(this.fileBytes);
    } catch { /* the disk is failing; the reader cuts torn tails anyway */ }
    this.spool.emit('writeError', this, err);
  }

  private liveFileBytes(): number {
    let n = this.metaRecord.length + (this.processRecord?.length ?? 0) + 9;
    for (const e of this.entries) if (e.seq <= this.durableSeq) n += e.bytes.length + RECORD_HEADER_BYTES;
    return n;
  }

  private needsCompaction(): boolean {
    const live = this.liveFileBytes();
    const dead = this.fileBytes - live;
    return dead > COMPACT_MIN_DEAD_BYTES && dead > live;
  }

  /** Rewrites the file with only what is still unacknowledged; atomic through rename. */
  private async compact(): Promise<void> {
    const parts: Buffer[] = [this.metaRecord];
    if (this.processRecord) parts.push(this.processRecord);
    parts.push(encodeAckRecord(this.ackedSeq));
    // Keep the highest sequence ever written, so a reopened spool never reuses one.
    for (const e of this.entries) if (e.seq <= this.durableSeq) parts.push(encodeRecord(RecordType.Frame, e.bytes));
    const tmp = `${this.path}.compact`;
    const fh = await open(tmp, 'w', 0o600);
    let total = 0;
    try {
      total = parts.reduce((n, r) => n + r.length, 0);
      const { bytesWritten } = await fh.writev(parts);
      if (bytesWritten !== total) throw new Error('short write while compacting');
      await fh.datasync();
    } finally {
      await fh.close();
    }
    await rename(tmp, this.path);
    await this.fh?.close();
    this.fh = await open(this.path, 'a', 0o600);
    this.fileBytes = total;
  }

  /** Drops the file and the entries. */
  async drop(): Promise<void> {
    if (this.forgotten) return;
    this.forgotten = true;
    this.queue = [];
    await this.settled();
    const freed = this.unackedBytes;
    this.entries.length = 0;
    if (freed > 0) this.spool.adjustBytes(-freed);
    try {
      await this.fh?.close();
    } catch { /* closing a file on a failing disk */ }
    this.fh = null;
    await unlink(this.path).catch(() => undefined);
  }

  /** Closes the file without dropping it (worker shutdown). */
  async close(): Promise<void> {
    await this.settled();
    try {
      await this.fh?.close();
    } catch { /* ignore */ }
    this.fh = null;
  }
}

export interface SpoolOptions {
  dir: string;
  maxBytes: number;
  logger?: Logger;
}

/**
 * Events: 'ready' (task) a task has new durable entries to send; 'room' the spool went
 * below its bound; 'writeError' (task, err) a disk write failed; 'empty' no task left.
 */
export class Spool extends EventEmitter {
  readonly dir: string;
  readonly maxBytes: number;
  readonly logger: Logger | undefined;
  private readonly tasks = new Map<string, TaskSpool>();
  private used = 0;
  private roomWaiters: Array<() => void> = [];
  private listCache: TaskSpool[] | null = null;
  private rr = 0;

  constructor(opts: SpoolOptions) {
    super();
    this.dir = opts.dir;
    this.maxBytes = opts.maxBytes;
    this.logger = opts.logger;
    // writeError has a default listener so an unobserved failure is never an unhandled 'error'
    this.on('writeError', () => undefined);
  }

  get usedBytes(): number {
    return this.used;
  }
  get full(): boolean {
    return this.used >= this.maxBytes;
  }
  get size(): number {
    return this.tasks.size;
  }

  /** @internal */
  adjustBytes(delta: number): void {
    const wasFull = this.full;
    this.used += delta;
    if (wasFull && !this.full) {
      const waiters = this.roomWaiters;
      this.roomWaiters = [];
      for (const w of waiters) w();
      this.emit('room');
    }
  }

  /** Resolves at once if there is room, else when acknowledgements free some. */
  waitForRoom(signal?: AbortSignal): Promise<void> {
    if (!this.full || signal?.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      const done = (): void => {
        signal?.removeEventListener('abort', done);
        this.roomWaiters = this.roomWaiters.filter((w) => w !== done);
        resolve();
      };
      this.roomWaiters.push(done);
      signal?.addEventListener('abort', done, { once: true });
    });
  }

  /** Loads the spool dir left by an earlier worker. */
  async open(): Promise<TaskSpool[]> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const names = (await readdir(this.dir)).filter((n) => n.endsWith('.spool')).sort();
    const loaded: TaskSpool[] = [];
    for (const name of names) {
      const path = join(this.dir, name);
      try {
        const t = await this.load(path);
        if (t) loaded.push(t);
      } catch (err) {
        this.logger?.error({ file: name, err: (err as Error).message }, 'unreadable spool file; leaving it in place');
      }
    }
    for (const n of await readdir(this.dir)) if (n.endsWith('.compact')) await unlink(join(this.dir, n)).catch(() => undefined);
    return loaded;
  }

  private async load(path: string): Promise<TaskSpool | undefined> {
    const buf = await readFile(path);
    const { records, validBytes } = readRecords(buf);
    const first = records[0];
    let meta: TaskMeta | undefined;
    if (first?.type === RecordType.Meta) {
      try {
        const m = JSON.parse(first.payload.toString('utf8')) as TaskMeta;
        if (typeof m.taskId === 'string' && Number.isInteger(m.attempt) && m.attempt >= 1) meta = m;
      } catch { /* fall through */ }
    }
    if (!meta) {
      this.logger?.warn({ file: path }, 'spool file without a task header; removing it');
      await unlink(path).catch(() => undefined);
      return undefined;
    }
    let acked = 0;
    let lastSeq = 0;
    let resultSeq = 0;
    let process: ProcessInfo | undefined;
    const frames: SpoolEntry[] = [];
    let usable = validBytes;
    for (const r of records.slice(1)) {
      if (r.type === RecordType.Ack && r.payload.length === 4) {
        acked = Math.max(acked, r.payload.readUInt32BE(0));
      } else if (r.type === RecordType.Process) {
        try { process = JSON.parse(r.payload.toString('utf8')) as ProcessInfo; } catch { /* ignore */ }
      } else if (r.type === RecordType.Frame) {
        const d = decodeDelegateFrame(r.payload);
        if (!d.ok || (d.frame.type !== 'log.chunk' && d.frame.type !== 'task.result') || d.frame.taskId !== meta.taskId || d.frame.seq <= lastSeq) {
          // A record that decodes to garbage ends the usable part, like a torn tail.
          usable = r.offset;
          break;
        }
        lastSeq = d.frame.seq;
        if (d.frame.type === 'task.result') resultSeq = d.frame.seq;
        frames.push({ seq: d.frame.seq, bytes: Buffer.from(r.payload), result: d.frame.type === 'task.result' });
      }
    }
    if (usable < buf.length) await truncate(path, usable);
    lastSeq = Math.max(lastSeq, acked);
    const entries = frames.filter((f) => f.seq > acked);
    const key = taskKey(meta.taskId, meta.attempt);
    if (this.tasks.has(key)) return undefined;
    const t = new TaskSpool(this, meta, path, { entries, lastSeq, ackedSeq: acked, resultSeq, fileBytes: usable, process });
    this.tasks.set(key, t);
    this.listCache = null;
    this.adjustBytes(t.unackedBytes);
    return t;
  }

  /** A new task's spool. The header is written with the first batch. */
  create(meta: Omit<TaskMeta, 'v'>): TaskSpool {
    const key = taskKey(meta.taskId, meta.attempt);
    const existing = this.tasks.get(key);
    if (existing) return existing;
    const t = new TaskSpool(this, { v: 1, ...meta }, join(this.dir, fileNameFor(meta.taskId, meta.attempt)));
    this.tasks.set(key, t);
    this.listCache = null;
    return t;
  }

  get(taskId: string, attempt: number): TaskSpool | undefined {
    return this.tasks.get(taskKey(taskId, attempt));
  }

  list(): TaskSpool[] {
    this.listCache ??= [...this.tasks.values()];
    return this.listCache;
  }

  /**
   * The next durable, unacknowledged entry not yet sent in this session, taking the tasks
   * in turn. `sent` holds per task the highest sequence sent in the session.
   */
  nextToSend(sent: ReadonlyMap<string, number>): { task: TaskSpool; entry: SpoolEntry } | undefined {
    const list = this.list();
    const n = list.length;
    for (let i = 0; i < n; i++) {
      const idx = (this.rr + i) % n;
      const t = list[idx]!;
      if (t.suppressed) continue;
      const e = t.entry(Math.max(sent.get(t.key) ?? 0, t.ackedSeq) + 1);
      if (e) {
        this.rr = (idx + 1) % n;
        return { task: t, entry: e };
      }
    }
    return undefined;
  }

  /** Cumulative acknowledgement; returns the task spool when the ack made it done. */
  ack(taskId: string, attempt: number, seq: number): TaskSpool | undefined {
    const t = this.get(taskId, attempt);
    if (!t) return undefined;
    return t.ack(seq) ? t : undefined;
  }

  async drop(taskId: string, attempt: number): Promise<void> {
    const key = taskKey(taskId, attempt);
    const t = this.tasks.get(key);
    if (!t) return;
    this.tasks.delete(key);
    this.listCache = null;
    await t.drop();
    if (this.tasks.size === 0) this.emit('empty');
  }

  /** Resolves when no task is left in the spool, or after timeoutMs (returns false). */
  waitEmpty(timeoutMs: number): Promise<boolean> {
    if (this.tasks.size === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.off('empty', onEmpty);
        resolve(false);
      }, timeoutMs);
      const onEmpty = (): void => {
        clearTimeout(timer);
        resolve(true);
      };
      this.once('empty', onEmpty);
    });
  }

  async close(): Promise<void> {
    await Promise.all(this.list().map((t) => t.close()));
  }
}
