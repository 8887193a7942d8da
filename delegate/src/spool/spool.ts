/**
 * The log spool: the delegate's on-disk outbox. Every log chunk and result frame of a task
 * attempt is written and fdatasync'd before it may be sent, and stays until the server
 * acknowledges it (cumulatively, per task attempt), so neither a disconnect nor a kill -9
 * of the worker loses or duplicates a line. The spool is bounded by bytes not yet
 * acknowledged; a full spool makes producers wait (`waitForRoom`), it never drops.
 *
 * Storage: one append-only log shared by all task attempts, cut into segment files
 * `log-<16-digit id>.seg` (record format in records.ts). Each attempt gets a number (ref)
 * with its first record, a Meta; later records (Frame, Ack, Process, Drop) carry the ref.
 *
 * Writing: a single writer per Spool. Records queued in the same turn of the event loop,
 * by any task, form one batch: one positional write to the current segment and, when the
 * batch holds frames, one fdatasync; then every task with frames in it has its durableSeq
 * raised and 'ready' emitted. Records queued while a batch is on its way form the next
 * batch (group commit). Ack, Process, Meta and Drop records are not synced on their own:
 * losing an ack only means a resend (the server keeps chunks by task and sequence), and a
 * frame's sync also makes everything written before it in the file durable. A segment
 * being closed for rotation is synced first, so a synced frame never depends on an
 * unsynced record in an older segment.
 *
 * Segments: a new segment is started once the current one holds `segmentBytes`; its
 * directory entry is synced once, when it is created. A task attempt needs the segment
 * holding its latest Meta record and every later one; attempts that are done, dropped or
 * memory-only need none. Segments no live attempt needs are deleted, always the oldest
 * first, so a Drop or Ack record is never deleted while older records it overrides remain
 * (a dropped attempt cannot come back with half its history). When older segments are held
 * by attempts whose live state is smaller than the rest of those segments, the attempts
 * are carried forward: their state (meta, process, ack position, durable unacknowledged
 * frames) is written again into the current segment and synced, then the older segments
 * are deleted. Copying thus never costs more than it frees, and the disk holds at most
 * about twice the live data plus one segment (and one batch). A spool without tasks deletes its segments
 * after `emptyLingerMs` (at once on close).
 *
 * Recovery (open): all segments are replayed in order; a torn or garbled tail ends the
 * usable part of a segment and is cut off. Attempts neither dropped nor done come back with
 * their unacknowledged frames, ack position, result and process; lastSeq never goes below
 * a sequence written or acknowledged before, so no sequence is reused. Per-task `*.spool`
 * files of earlier delegates are read too. Everything recovered is written into a fresh
 * segment (synced) and the old files are deleted, so the log starts out compact.
 *
 * Disk failure: a failed or short write is cut back off the segment (a segment whose torn
 * tail cannot be cut is abandoned: nothing more is appended to it) and the task attempts
 * with records in that batch go memory-only: their entries stay in memory, nothing more of
 * them is written (except a Drop), and 'writeError' is emitted once for each. Other and
 * later attempts keep using the disk.
 */
import { EventEmitter } from 'node:events';
import { mkdir, open, readdir, readFile, truncate, unlink, type FileHandle } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { encodeFrame, type LogChunk, type TaskResult } from '@ferry/shared';
import type { Logger } from 'pino';
import {
  RecordType, ackPayload, jsonPayload, putSegRecord, segRecordBytes,
  type ProcessInfo, type SegmentHeader, type SpoolEntry, type TaskMeta,
} from './records.js';
import { parseLegacySpool } from './legacy.js';
import { LogReplay, recoveredState, taskKey, type RecoveredState } from './replay.js';

export { taskKey };
export type { SpoolEntry };
export type SpooledFrame = LogChunk | TaskResult;

/** Name of a legacy per-task spool file (before the segment log); only read now, to migrate. */
export function fileNameFor(taskId: string, attempt: number): string {
  const safe = taskId.replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 64);
  const hash = createHash('sha256').update(taskKey(taskId, attempt)).digest('hex').slice(0, 12);
  return `${safe}-${attempt}-${hash}.spool`;
}

export const segmentFileName = (id: number): string => `log-${String(id).padStart(16, '0')}.seg`;
const SEGMENT_NAME = /^log-(\d{16})\.seg$/;

export const DEFAULT_SEGMENT_BYTES = 16 << 20;
export const DEFAULT_EMPTY_LINGER_MS = 250;

const EMPTY = Buffer.alloc(0);

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

/** @internal A record waiting for the writer. */
export interface PendingRecord {
  task: TaskSpool;
  type: RecordType;
  payload: Uint8Array;
  /** the frame's sequence, 0 for other records */
  seq: number;
  /** order of queueing (the writer's queue only) */
  id?: number;
}

/**
 * A writer batch stops at about this many bytes, so one batch's fdatasync stays short.
 * Tasks with little queued go first, whole (see takeBatch).
 */
const BATCH_BYTES = 1 << 20;

interface Segment {
  id: number;
  path: string;
  /** bytes written and kept */
  bytes: number;
  /** open while it is the current segment */
  fh: FileHandle | null;
  /** written since the last fdatasync */
  unsynced: boolean;
}

/** Counters of the writer's work (for tests and benchmarks). */
export interface SpoolStats {
  /** batches handled */
  batches: number;
  /** write calls to segment files */
  writes: number;
  /** fdatasync calls */
  syncs: number;
  segmentsCreated: number;
  segmentsDeleted: number;
  /** task attempts rewritten into a newer segment */
  carriedForward: number;
}

/**
 * A task holding no more than this unacknowledged may write even while the spool is
 * full, so a quiet step is never held up by a loud one (its lines stay live); the bound
 * is exceeded by at most this much per running task.
 */
export const FAIR_SHARE_BYTES = 64 << 10;

/**
 * A task's producer also waits once the task holds this much unacknowledged, even with
 * room in the spool: a step printing faster than the server stores reads its pipe at the
 * pace of the acknowledgements instead of flooding the delegate (whose event loop then
 * serves every other task late). The spool's whole bound still buffers disconnects.
 */
export const TASK_BACKLOG_BYTES = 1 << 20;

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
  /** @internal the number this attempt's records carry in the log */
  readonly ref: number;
  /**
   * @internal id of the segment holding this attempt's latest Meta record, 0 before it is
   * written: recovery needs that segment and all later ones.
   */
  firstSegment = 0;
  /** @internal some record of this attempt may be on disk, so its drop is recorded */
  onDisk = false;
  /** @internal dropped: nothing more is written or sent */
  forgotten = false;
  /** @internal payload of the Meta record */
  readonly metaPayload: Buffer;
  /** @internal payload of the latest Process record */
  processPayload: Buffer | null = null;
  /** unacknowledged entries, ascending by sequence, contiguous */
  private readonly entries: SpoolEntry[] = [];
  /** bytes of the entries */
  private entryBytes = 0;
  /** producers waiting for this task's share to free (waitForRoom) */
  private shareWaiters: Array<() => void> = [];

  constructor(
    private readonly spool: Spool,
    readonly meta: TaskMeta,
    ref: number,
    recovered?: RecoveredState,
  ) {
    this.key = taskKey(meta.taskId, meta.attempt);
    this.ref = ref;
    this.metaPayload = jsonPayload(meta);
    if (recovered) {
      this.entries.push(...recovered.entries);
      for (const e of recovered.entries) this.entryBytes += e.bytes.length;
      this.lastSeq = recovered.lastSeq;
      this.ackedSeq = recovered.ackedSeq;
      this.durableSeq = recovered.lastSeq;
      this.resultSeq = recovered.resultSeq;
      this.onDisk = true;
      if (recovered.process) this.setProcess(recovered.process);
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
    return this.entryBytes;
  }
  get pendingEntries(): number {
    return this.entries.length;
  }

  /** Whether this task's producer must wait: the spool is full and the task holds more than its fair share. */
  get mustWait(): boolean {
    return (this.spool.full && this.entryBytes > FAIR_SHARE_BYTES) || this.entryBytes > TASK_BACKLOG_BYTES;
  }

  /** Resolves when this task may write again (room in the spool, or its own acknowledgements freed its share). */
  async waitForRoom(signal?: AbortSignal): Promise<void> {
    while (this.mustWait && !signal?.aborted) {
      await new Promise<void>((resolve) => {
        const ac = new AbortController();
        const done = (): void => {
          signal?.removeEventListener('abort', done);
          this.shareWaiters = this.shareWaiters.filter((w) => w !== done);
          ac.abort();
          resolve();
        };
        this.shareWaiters.push(done);
        signal?.addEventListener('abort', done, { once: true });
        // room in the spool may be enough; the loop checks again
        if (this.spool.full) void this.spool.waitForRoom(ac.signal).then(done);
      });
    }
  }

  /** @internal whether recovery needs this attempt's records (it keeps its segments) */
  get pinsLog(): boolean {
    return this.firstSegment > 0 && !this.memoryOnly && !this.forgotten && !this.done;
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
    this.entryBytes += bytes.length;
    this.spool.adjustBytes(bytes.length);
    this.spool.enqueue(this, RecordType.Frame, bytes, seq);
    return seq;
  }

  /** Records the process group of the task, so a restarted worker can kill an orphan. */
  recordProcess(info: ProcessInfo): void {
    if (this.forgotten) return;
    this.setProcess(info);
    this.spool.enqueue(this, RecordType.Process, this.processPayload!, 0);
  }

  private setProcess(info: ProcessInfo): void {
    this.process = info;
    this.processPayload = jsonPayload(info);
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
    let n = 0;
    while (n < this.entries.length && this.entries[n]!.seq <= upTo) freed += this.entries[n++]!.bytes.length;
    if (n > 0) this.entries.splice(0, n);
    this.entryBytes -= freed;
    if (freed > 0) this.spool.adjustBytes(-freed);
    if (this.shareWaiters.length > 0 && !this.mustWait) for (const w of [...this.shareWaiters]) w();
    // An ack record needs no fdatasync of its own: losing one only means a resend,
    // and the server keeps chunks by (task, seq).
    this.spool.enqueue(this, RecordType.Ack, ackPayload(upTo), 0);
    return !wasDone && this.done;
  }

  /** Resolves when everything queued so far (by any task) is written. */
  settled(): Promise<void> {
    return this.spool.settle();
  }

  /**
   * @internal The records that recreate this attempt in a newer segment: meta, process,
   * ack position and the durable unacknowledged frames.
   */
  snapshot(): PendingRecord[] {
    const out: PendingRecord[] = [{ task: this, type: RecordType.Meta, payload: this.metaPayload, seq: 0 }];
    if (this.processPayload) out.push({ task: this, type: RecordType.Process, payload: this.processPayload, seq: 0 });
    if (this.ackedSeq > 0) out.push({ task: this, type: RecordType.Ack, payload: ackPayload(this.ackedSeq), seq: 0 });
    for (const e of this.entries) if (e.seq <= this.durableSeq) out.push({ task: this, type: RecordType.Frame, payload: e.bytes, seq: e.seq });
    return out;
  }

  /** @internal bytes of snapshot() in a segment, or a little more */
  snapshotBytes(): number {
    return segRecordBytes(this.metaPayload.length) + (this.processPayload ? segRecordBytes(this.processPayload.length) : 0) + segRecordBytes(4)
      + this.entryBytes + this.entries.length * segRecordBytes(0);
  }

  /** Forgets the entries and records the drop in the log. */
  async drop(): Promise<void> {
    if (this.forgotten) return;
    this.forgotten = true;
    const freed = this.entryBytes;
    this.entries.length = 0;
    this.entryBytes = 0;
    if (freed > 0) this.spool.adjustBytes(-freed);
    this.spool.enqueue(this, RecordType.Drop, EMPTY, 0);
    await this.spool.settle();
  }

  /** Waits for its writes (worker shutdown); the log itself is closed by Spool.close. */
  async close(): Promise<void> {
    await this.spool.settle();
  }
}

export interface SpoolOptions {
  dir: string;
  maxBytes: number;
  logger?: Logger;
  /** a segment is closed and a new one started once it holds this many bytes (default 16 MiB) */
  segmentBytes?: number;
  /** how long a spool without tasks keeps its segment before deleting it (default 250 ms) */
  emptyLingerMs?: number;
  /** opens a new segment file (default: fs/promises open); tests pass one that fails */
  openFile?: (path: string, flags: string, mode: number) => Promise<FileHandle>;
}

/**
 * Events: 'ready' (task) a task has new durable entries to send; 'room' the spool went
 * below its bound; 'writeError' (task, err) a disk write failed; 'empty' no task left.
 */
export class Spool extends EventEmitter {
  readonly dir: string;
  readonly maxBytes: number;
  readonly logger: Logger | undefined;
  readonly segmentBytes: number;
  readonly emptyLingerMs: number;
  readonly stats: SpoolStats = { batches: 0, writes: 0, syncs: 0, segmentsCreated: 0, segmentsDeleted: 0, carriedForward: 0 };
  private readonly openFile: (path: string, flags: string, mode: number) => Promise<FileHandle>;
  private readonly tasks = new Map<string, TaskSpool>();
  private used = 0;
  private roomWaiters: Array<() => void> = [];
  private listCache: TaskSpool[] | null = null;
  private rr = 0;

  // the writer
  private queue: PendingRecord[] = [];
  /** the writer's current run (a batch, or deleting the segments of an empty spool) */
  private writing: Promise<void> | null = null;
  /** records queued and records handled, ever: settle() waits for the second to reach the first */
  private queuedCount = 0;
  /** the batch being written */
  private inFlight: PendingRecord[] = [];
  private settlers: Array<{ upTo: number; resolve: () => void }> = [];
  /** the segments of this log, ascending by id; the last is the current one while it is open */
  private segments: Segment[] = [];
  private current: Segment | null = null;
  private nextSegmentId = 1;
  private nextRef = 1;
  private dirReady = false;
  private opened = false;
  private lingerTimer: NodeJS.Timeout | null = null;

  constructor(opts: SpoolOptions) {
    super();
    this.dir = opts.dir;
    this.maxBytes = opts.maxBytes;
    this.logger = opts.logger;
    this.segmentBytes = Math.max(1, opts.segmentBytes ?? DEFAULT_SEGMENT_BYTES);
    this.emptyLingerMs = Math.max(0, opts.emptyLingerMs ?? DEFAULT_EMPTY_LINGER_MS);
    this.openFile = opts.openFile ?? ((path, flags, mode) => open(path, flags, mode));
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

  /**
   * Loads the spool dir left by an earlier worker (segments and legacy per-task files),
   * writes what is still needed into a fresh segment and deletes the old files. Call it
   * once, before create().
   */
  async open(): Promise<TaskSpool[]> {
    if (this.opened) return [];
    this.opened = true;
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    this.dirReady = true;
    const names = await readdir(this.dir);
    const segNames: Array<{ id: number; name: string }> = [];
    for (const name of names) {
      const m = SEGMENT_NAME.exec(name);
      if (m) segNames.push({ id: Number(m[1]), name });
    }
    segNames.sort((a, b) => a.id - b.id);
    for (const s of segNames) if (s.id >= this.nextSegmentId) this.nextSegmentId = s.id + 1;

    const replay = new LogReplay();
    const obsolete: string[] = [];
    for (const s of segNames) {
      if (this.segments.some((own) => own.id === s.id)) continue;
      const path = join(this.dir, s.name);
      let buf: Buffer;
      try {
        buf = await readFile(path);
      } catch (err) {
        this.logger?.error({ file: s.name, err: (err as Error).message }, 'unreadable spool segment; leaving it in place');
        continue;
      }
      const r = replay.segment(buf);
      if (r.unsupported) {
        this.logger?.error({ file: s.name, problem: r.problem }, 'spool segment of an unknown format; leaving it in place');
        continue;
      }
      if (r.usable < buf.length) {
        this.logger?.warn({ file: s.name, problem: r.problem, cutBytes: buf.length - r.usable }, 'spool segment ends in a torn or garbled record; cutting it off');
        await truncate(path, r.usable).catch(() => undefined);
      }
      obsolete.push(path);
    }

    const legacyNames = names.filter((n) => n.endsWith('.spool')).sort();
    for (const name of legacyNames) {
      const path = join(this.dir, name);
      let buf: Buffer;
      try {
        buf = await readFile(path);
      } catch (err) {
        this.logger?.error({ file: name, err: (err as Error).message }, 'unreadable spool file; leaving it in place');
        continue;
      }
      const l = parseLegacySpool(buf);
      if (!l) this.logger?.warn({ file: name }, 'spool file without a task header; removing it');
      else if (!replay.addLegacy(l)) this.logger?.warn({ file: name }, 'spool file already migrated into the log; removing it');
      obsolete.push(path);
    }
    this.nextRef = replay.maxRef + 1;

    const loaded: TaskSpool[] = [];
    for (const r of replay.live.values()) {
      if (this.tasks.has(r.key)) continue;
      const { state, gapAt } = recoveredState(r);
      if (!state) continue; // done: its result is acknowledged
      if (gapAt !== undefined) this.logger?.warn({ taskId: r.meta.taskId, attempt: r.meta.attempt, missingSeq: gapAt }, 'spool lost frames of a task; keeping those before the gap');
      const t = new TaskSpool(this, r.meta, r.ref, state);
      this.tasks.set(r.key, t);
      this.adjustBytes(t.unackedBytes);
      loaded.push(t);
    }
    this.listCache = null;

    if (loaded.length > 0) {
      try {
        const seg = await this.append(loaded.flatMap((t) => t.snapshot()), true);
        for (const t of loaded) t.firstSegment = seg;
      } catch (err) {
        // The old files stay as they are for the next start; these tasks live in memory.
        this.logger?.error({ err: (err as Error).message }, 'could not write the recovered spool; keeping the old files');
        for (const t of loaded) t.memoryOnly = true;
        // emitted once the caller has had the chance to listen
        setImmediate(() => {
          for (const t of loaded) if (!t.forgotten) this.emit('writeError', t, err);
        });
        return loaded;
      }
    }
    for (const path of obsolete) await unlink(path).catch(() => undefined);
    for (const n of await readdir(this.dir)) if (n.endsWith('.compact')) await unlink(join(this.dir, n)).catch(() => undefined);
    return loaded;
  }

  /** A new task's spool. Its header is written with the next batch. */
  create(meta: Omit<TaskMeta, 'v'>): TaskSpool {
    const key = taskKey(meta.taskId, meta.attempt);
    const existing = this.tasks.get(key);
    if (existing) return existing;
    const t = new TaskSpool(this, { v: 1, ...meta }, this.nextRef++);
    this.tasks.set(key, t);
    this.listCache = null;
    this.cancelLinger();
    this.enqueue(t, RecordType.Meta, t.metaPayload, 0);
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
    if (this.tasks.size === 0) {
      this.emit('empty');
      this.whenIdle();
    }
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

  /**
   * Waits for the writer and closes the current segment (synced). A spool without tasks
   * deletes its segments. Writing later opens a new segment.
   */
  async close(): Promise<void> {
    this.cancelLinger();
    await this.settle();
    while (this.writing) await this.writing;
    if (this.tasks.size === 0) {
      await this.retire();
      return;
    }
    const seg = this.current;
    if (!seg?.fh) return;
    this.current = null;
    const fh = seg.fh;
    seg.fh = null;
    try {
      if (seg.unsynced) await fh.datasync();
      seg.unsynced = false;
    } catch { /* acks only: a resend at worst */ }
    try {
      await fh.close();
    } catch { /* ignore */ }
  }

  // ---------------------------------------------------------------- the writer

  /** @internal Queues a record; the writer takes everything queued in this turn as one batch. */
  enqueue(task: TaskSpool, type: RecordType, payload: Uint8Array, seq: number): void {
    this.queue.push({ task, type, payload, seq, id: ++this.queuedCount });
    if (!this.writing) this.kick();
  }

  /** @internal Resolves when every record queued so far has been written (or given up on). */
  async settle(): Promise<void> {
    const upTo = this.queuedCount;
    if (this.oldestPending() > upTo) return;
    await new Promise<void>((resolve) => this.settlers.push({ upTo, resolve }));
  }

  private kick(): void {
    this.writing = new Promise<void>((resolve) => setImmediate(resolve))
      .then(() => this.drain())
      .catch((err: unknown) => this.logger?.error({ err: (err as Error).message }, 'spool writer failed'))
      .finally(() => {
        this.writing = null;
        if (this.queue.length > 0) this.kick();
        else this.whenIdle();
      });
  }

  private async drain(): Promise<void> {
    while (this.queue.length > 0) {
      const batch = this.takeBatch();
      this.inFlight = batch;
      try {
        await this.writeBatch(batch);
      } catch (err) {
        this.logger?.error({ err: (err as Error).message }, 'spool writer failed');
      } finally {
        this.inFlight = [];
        const oldest = this.oldestPending();
        const waiting = this.settlers;
        this.settlers = [];
        for (const st of waiting) {
          if (st.upTo < oldest) st.resolve();
          else this.settlers.push(st);
        }
      }
    }
  }

  /** Queue id of the oldest record not yet handled (Infinity if none). */
  private oldestPending(): number {
    let min = Infinity;
    for (const p of this.queue) if (p.id! < min) min = p.id!;
    for (const p of this.inFlight) if (p.id! < min) min = p.id!;
    return min;
  }

  /**
   * The next batch: every record of tasks with little queued (a quiet step's line is not
   * written behind megabytes of a loud one's), then the oldest of the rest up to
   * BATCH_BYTES. A task's records always keep their order; tasks need no order between them.
   */
  private takeBatch(): PendingRecord[] {
    const queued = new Map<TaskSpool, number>();
    let total = 0;
    for (const p of this.queue) {
      queued.set(p.task, (queued.get(p.task) ?? 0) + p.payload.length);
      total += p.payload.length;
    }
    if (total <= BATCH_BYTES) {
      const all = this.queue;
      this.queue = [];
      return all;
    }
    const batch: PendingRecord[] = [];
    const rest: PendingRecord[] = [];
    let bytes = 0;
    for (const p of this.queue) {
      if (queued.get(p.task)! <= FAIR_SHARE_BYTES) {
        batch.push(p);
        bytes += p.payload.length;
      }
    }
    const held = new Set<TaskSpool>();
    for (const p of this.queue) {
      if (queued.get(p.task)! <= FAIR_SHARE_BYTES) continue;
      if (held.has(p.task) || (bytes >= BATCH_BYTES && batch.length > 0)) {
        held.add(p.task);
        rest.push(p);
        continue;
      }
      batch.push(p);
      bytes += p.payload.length;
    }
    this.queue = rest;
    // the write keeps queue order within each task; restore it across tasks too
    batch.sort((a, b) => a.id! - b.id!);
    return batch;
  }

  private async writeBatch(batch: PendingRecord[]): Promise<void> {
    this.stats.batches++;
    const disk: PendingRecord[] = [];
    let sync = false;
    for (const p of batch) {
      const t = p.task;
      if (p.type === RecordType.Drop) {
        // a task that never reached the disk has nothing to cancel there
        if (t.onDisk) disk.push(p);
        continue;
      }
      if (t.forgotten || t.memoryOnly) continue;
      disk.push(p);
      if (p.type === RecordType.Frame) sync = true;
    }
    if (disk.length > 0) {
      for (const p of disk) p.task.onDisk = true;
      try {
        const seg = await this.append(disk, sync);
        for (const p of disk) if (p.type === RecordType.Meta) p.task.firstSegment = seg;
      } catch (err) {
        this.failTasks(disk, err as Error);
      }
    }
    // durable now (or held in memory): sendable
    let ready: Map<TaskSpool, number> | null = null;
    for (const p of batch) if (p.type === RecordType.Frame && !p.task.forgotten) (ready ??= new Map()).set(p.task, p.seq);
    if (ready) {
      for (const [t, seq] of ready) {
        if (seq <= t.durableSeq) continue;
        t.durableSeq = seq;
        this.emit('ready', t);
      }
    }
    await this.reclaim();
  }

  /** The tasks with records in a failed batch go memory-only. */
  private failTasks(disk: PendingRecord[], err: Error): void {
    const hit = new Set<TaskSpool>();
    for (const p of disk) if (!p.task.forgotten && !p.task.memoryOnly) hit.add(p.task);
    for (const t of hit) t.memoryOnly = true;
    this.logger?.error({ err: err.message, tasks: hit.size }, 'spool write failed');
    for (const t of hit) this.emit('writeError', t, err);
  }

  /**
   * Appends records to the current segment (rotating or creating it as needed) with one
   * write, and fdatasync when asked. Returns the segment's id. On failure the segment is
   * cut back to where it was, or abandoned when that fails, and the error is thrown.
   */
  private async append(recs: PendingRecord[], sync: boolean): Promise<number> {
    let seg = this.current;
    if (seg && seg.bytes >= this.segmentBytes) {
      await this.rotate(seg);
      seg = null;
    }
    seg ??= await this.createSegment();
    const fh = seg.fh!;
    const head = seg.bytes === 0 ? jsonPayload({ v: 1, id: seg.id } satisfies SegmentHeader) : null;
    let total = head ? segRecordBytes(head.length) : 0;
    for (const r of recs) total += segRecordBytes(r.payload.length);
    const buf = Buffer.allocUnsafe(total);
    let off = head ? putSegRecord(buf, 0, RecordType.Segment, 0, head) : 0;
    for (const r of recs) off = putSegRecord(buf, off, r.type, r.task.ref, r.payload);
    const at = seg.bytes;
    try {
      this.stats.writes++;
      const { bytesWritten } = await fh.write(buf, 0, total, at);
      if (bytesWritten !== total) {
        const e = new Error(`short write to spool (${bytesWritten} of ${total} bytes)`) as NodeJS.ErrnoException;
        e.code = 'ENOSPC';
        throw e;
      }
      if (sync) {
        this.stats.syncs++;
        await fh.datasync();
      }
    } catch (err) {
      await this.cutBack(seg, at);
      throw err;
    }
    seg.bytes = at + total;
    seg.unsynced = !sync;
    return seg.id;
  }

  /** Removes a failed write's bytes; a segment that cannot be cut is not appended to again. */
  private async cutBack(seg: Segment, bytes: number): Promise<void> {
    try {
      await seg.fh!.truncate(bytes);
      return;
    } catch { /* the disk is failing; recovery stops at the torn record anyway */ }
    if (this.current === seg) this.current = null;
    const fh = seg.fh;
    seg.fh = null;
    try {
      await fh?.close();
    } catch { /* ignore */ }
  }

  private async createSegment(): Promise<Segment> {
    if (!this.dirReady) {
      await mkdir(this.dir, { recursive: true, mode: 0o700 });
      this.dirReady = true;
    }
    for (let tries = 0; ; tries++) {
      const id = this.nextSegmentId++;
      const path = join(this.dir, segmentFileName(id));
      let fh: FileHandle;
      try {
        fh = await this.openFile(path, 'wx', 0o600);
      } catch (err) {
        // a file of that name from somewhere else: never write into it
        if ((err as NodeJS.ErrnoException).code === 'EEXIST' && tries < 16) continue;
        throw err;
      }
      await syncDir(this.dir);
      const seg: Segment = { id, path, bytes: 0, fh, unsynced: false };
      this.segments.push(seg);
      this.current = seg;
      this.stats.segmentsCreated++;
      return seg;
    }
  }

  /** Closes the current segment, synced, so a new one is started. */
  private async rotate(seg: Segment): Promise<void> {
    this.current = null;
    const fh = seg.fh;
    seg.fh = null;
    if (!fh) return;
    try {
      if (seg.unsynced) {
        this.stats.syncs++;
        await fh.datasync();
      }
      seg.unsynced = false;
    } catch (err) {
      this.logger?.warn({ err: (err as Error).message }, 'syncing a full spool segment failed');
    }
    try {
      await fh.close();
    } catch { /* ignore */ }
  }

  /**
   * Deletes the oldest segments no live task needs. When older segments are held only by
   * tasks whose live state is smaller than the rest of those segments, the tasks are
   * carried forward first, so copying never costs more than it frees.
   */
  private async reclaim(): Promise<void> {
    const cur = this.current;
    if (this.segments.length === 0 || (this.segments.length === 1 && this.segments[0] === cur)) return;
    if (cur) await this.carryForward(cur);
    let keepFrom = this.current?.id ?? Number.POSITIVE_INFINITY;
    for (const t of this.tasks.values()) if (t.pinsLog && t.firstSegment < keepFrom) keepFrom = t.firstSegment;
    const gone: Segment[] = [];
    while (this.segments.length > 0 && this.segments[0]!.id < keepFrom && this.segments[0] !== this.current) gone.push(this.segments.shift()!);
    for (const s of gone) await this.deleteSegment(s);
  }

  private async carryForward(cur: Segment): Promise<void> {
    const carry: TaskSpool[] = [];
    let live = 0;
    for (const t of this.tasks.values()) {
      if (!t.pinsLog || t.firstSegment >= cur.id) continue;
      carry.push(t);
      live += t.snapshotBytes();
    }
    if (carry.length === 0) return;
    let old = 0;
    for (const s of this.segments) if (s.id < cur.id) old += s.bytes;
    if (old - live < live) return; // copying would cost more than it frees; wait for more dead bytes
    try {
      const seg = await this.append(carry.flatMap((t) => t.snapshot()), true);
      for (const t of carry) t.firstSegment = seg;
      this.stats.carriedForward += carry.length;
    } catch (err) {
      this.logger?.warn({ err: (err as Error).message }, 'carrying spooled tasks forward failed; keeping the old segments');
    }
  }

  private async deleteSegment(s: Segment): Promise<void> {
    const fh = s.fh;
    s.fh = null;
    if (this.current === s) this.current = null;
    try {
      await fh?.close();
    } catch { /* ignore */ }
    try {
      await unlink(s.path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') this.logger?.warn({ file: s.path, err: (err as Error).message }, 'could not delete a spool segment');
    }
    this.stats.segmentsDeleted++;
  }

  /** Deletes every segment of a spool without tasks. */
  private async retire(): Promise<void> {
    const segs = this.segments;
    this.segments = [];
    this.current = null;
    for (const s of segs) await this.deleteSegment(s);
  }

  /** With no task left, the segments go after emptyLingerMs (unless a task comes first). */
  private whenIdle(): void {
    if (this.tasks.size > 0 || this.segments.length === 0 || this.lingerTimer) return;
    this.lingerTimer = setTimeout(() => {
      this.lingerTimer = null;
      // a busy writer calls whenIdle again when it is done
      if (this.tasks.size > 0 || this.writing) return;
      this.writing = this.retire()
        .catch((err: unknown) => this.logger?.warn({ err: (err as Error).message }, 'deleting spool segments failed'))
        .finally(() => {
          this.writing = null;
          if (this.queue.length > 0) this.kick();
        });
    }, this.emptyLingerMs);
    this.lingerTimer.unref();
  }

  private cancelLinger(): void {
    if (!this.lingerTimer) return;
    clearTimeout(this.lingerTimer);
    this.lingerTimer = null;
  }
}
