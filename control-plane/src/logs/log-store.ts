/**
 * The log store: chunks keyed by (task, sequence), written by a group-commit loop so that
 * many chunks and results share one durable commit; each is acknowledged only after
 * that commit returns. A resent chunk hits the primary key and is ignored — harmless.
 * Live tails subscribe per task and per execution.
 */
import { EventEmitter } from 'node:events';
import { sql } from 'kysely';
import type { LogChunk, LogLine, TaskResult } from '@ferry/shared';
import type { Executor, Store } from '../store/db.js';
import type { Clock } from '../clock.js';
import type { Logger } from '../logger.js';
import type { Metrics } from '../metrics.js';
import type { Bus } from '../store/bus.js';
import type { AssignRow } from '../scheduler/claim.js';
import { prepare, type PreparedQuery } from '../store/prepared.js';

/** A stored line: [stream, epochMs, text]; stream 0 stdout, 1 stderr, 2 delegate/server note. */
export type StoredLine = [0 | 1 | 2, number, string];

export interface StoredChunk {
  taskId: string;
  seq: number;
  lines: StoredLine[];
}

/** Log text per ingest commit (see flushLoop). */
const MAX_BATCH_TEXT = 1 << 20;

/** Server notes sort before (negative) or after (large) every delegate sequence. */
const NOTE_BEFORE_BASE = -1_000_000_000;
const NOTE_AFTER_BASE = 1_000_000_000;

/** The task a result ended, as stored (returned by the result's update). */
export interface FinishedTask {
  executionId: string | null;
  kind: string;
  delegateVersion: string | null;
  startedAt: number | null;
}

export interface AcceptedResult {
  delegateId: string;
  frame: TaskResult;
  task: FinishedTask;
}

export interface ResultApplier {
  /**
   * Applies a result inside the ingest transaction, recording `lastSeq` as the task's
   * last stored sequence; null when the task no longer runs on that delegate (refused).
   */
  applyResult(trx: Executor, delegateId: string, frame: TaskResult, lastSeq: number): Promise<FinishedTask | null>;
  /** After the batch's results, in the same transaction: claims work for the slots they freed. */
  refill(trx: Executor, finished: Array<{ delegateId: string; taskId: string }>): Promise<Map<string, AssignRow[]>>;
  /** Called after the commit that applied accepted results, with what refill claimed. */
  afterResults(results: AcceptedResult[], refills: Map<string, AssignRow[]>): void;
}

interface Staged {
  /** new last sequences per task */
  seqs: Map<string, number>;
  /** executions of tasks loaded in this batch */
  execs: Map<string, string | null>;
  published: StoredChunk[];
  acks: Map<Pending, number>;
  results: AcceptedResult[];
  refills: Map<string, AssignRow[]>;
}

type Pending =
  | { kind: 'chunk'; delegateId: string; frame: LogChunk; resolve: (ackSeq: number) => void; reject: (e: Error) => void }
  | { kind: 'result'; delegateId: string; frame: TaskResult; resolve: (ackSeq: number) => void; reject: (e: Error) => void }
  | { kind: 'note'; taskId: string; text: string; where: 'before' | 'after'; resolve: (ackSeq: number) => void; reject: (e: Error) => void };

export class LogStore {
  private readonly events = new EventEmitter();
  private pending: Pending[] = [];
  private flushing = false;
  private closed = false;
  /** highest contiguous durable sequence per task (cache of tasks.last_seq) */
  private readonly lastSeq = new Map<string, number>();
  private readonly executionOf = new Map<string, string | null>();
  private applier: ResultApplier | null = null;
  private idle: Array<() => void> = [];
  /** batches committed and waiting for their sync */
  private syncing = 0;
  private bus: Bus | null = null;
  /** a task's last stored sequence (once per task and batch) */
  private readonly setLastSeq: PreparedQuery<{ taskId: string; seq: number }, unknown>;

  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
    private readonly logger: Logger,
    private readonly metrics: Metrics,
  ) {
    this.events.setMaxListeners(0);
    this.setLastSeq = prepare(store.db, (db, a: { taskId: string; seq: number }) => db.updateTable('tasks').set({ last_seq: a.seq }).where('id', '=', a.taskId));
  }

  setResultApplier(a: ResultApplier): void {
    this.applier = a;
  }

  /** Live tails on every server: chunks stored by another server are read back and published here. */
  setBus(bus: Bus): void {
    this.bus = bus;
    bus.on('log.chunk', (e, local) => {
      if (local) return;
      const wantTask = this.events.listenerCount(`task:${e.taskId}`) > 0;
      const wantExec = e.executionId !== null && this.events.listenerCount(`exec:${e.executionId}`) > 0;
      if (!wantTask && !wantExec) return;
      void this.store.db.selectFrom('log_chunks').select(['seq', 'lines']).where('task_id', '=', e.taskId).where('seq', '=', e.seq).executeTakeFirst().then((r) => {
        if (!r) return;
        const c: StoredChunk = { taskId: e.taskId, seq: Number(r.seq), lines: JSON.parse(r.lines) as StoredLine[] };
        if (wantTask) this.events.emit(`task:${e.taskId}`, c);
        if (wantExec) this.events.emit(`exec:${e.executionId}`, c);
      }).catch(() => undefined);
    });
  }

  /** Stores a chunk; resolves with the cumulative sequence to acknowledge. */
  submitChunk(delegateId: string, frame: LogChunk): Promise<number> {
    return this.enqueue((resolve, reject) => ({ kind: 'chunk', delegateId, frame, resolve, reject }));
  }

  /** Stores a result (after every chunk submitted before it); resolves with the ack sequence, or -1 if refused. */
  submitResult(delegateId: string, frame: TaskResult): Promise<number> {
    return this.enqueue((resolve, reject) => ({ kind: 'result', delegateId, frame, resolve, reject }));
  }

  /** A line written by the server into a task's log, before or after the delegate's lines. */
  appendNote(taskId: string, text: string, where: 'before' | 'after' = 'before'): Promise<number> {
    return this.enqueue((resolve, reject) => ({ kind: 'note', taskId, text, where, resolve, reject }));
  }

  private enqueue(make: (res: (n: number) => void, rej: (e: Error) => void) => Pending): Promise<number> {
    if (this.closed) return Promise.reject(new Error('log store closed'));
    return new Promise<number>((resolve, reject) => {
      this.pending.push(make(resolve, reject));
      if (!this.flushing) {
        this.flushing = true;
        setImmediate(() => void this.flushLoop());
      }
    });
  }

  /** Resolves when everything submitted so far is durable. */
  drain(): Promise<void> {
    if (!this.flushing && this.pending.length === 0 && this.syncing === 0) return Promise.resolve();
    return new Promise((r) => this.idle.push(r));
  }

  private maybeIdle(): void {
    if (this.flushing || this.pending.length > 0 || this.syncing > 0) return;
    const idle = this.idle;
    this.idle = [];
    for (const r of idle) r();
  }

  async close(): Promise<void> {
    await this.drain();
    this.closed = true;
  }

  private async flushLoop(): Promise<void> {
    try {
      while (this.pending.length > 0) {
        // A commit holds the event loop while it writes (SQLite is synchronous), so a batch
        // stops at about 1 MiB of log text: a burst of chunks is spread over several
        // commits and everything else — other delegates, API readers — keeps moving.
        let bytes = 0;
        let n = 0;
        while (n < this.pending.length && bytes < MAX_BATCH_TEXT) {
          const p = this.pending[n++]!;
          if (p.kind === 'chunk') for (const l of p.frame.lines) bytes += l.l.length + 16;
        }
        await this.flush(this.pending.splice(0, n));
      }
    } finally {
      this.flushing = false;
      this.maybeIdle();
    }
  }

  /**
   * Stages a batch inside the writer's transaction. It may run twice (the writer retries
   * an item alone when its batch fails), so it only reads the caches and returns what to
   * change; flush() applies that once the commit returned.
   */
  private async stage(trx: Executor, batch: Pending[]): Promise<Staged> {
    const now = this.clock.now();
    const st: Staged = { seqs: new Map(), execs: new Map(), published: [], acks: new Map(), results: [], refills: new Map() };
    const last = (taskId: string): number | undefined => st.seqs.get(taskId) ?? this.lastSeq.get(taskId);
    const missing = [...new Set(batch.map((p) => (p.kind === 'note' ? p.taskId : p.frame.taskId)))].filter((t) => !this.lastSeq.has(t));
    for (let i = 0; i < missing.length; i += 500) {
      const rows = await trx.selectFrom('tasks').select(['id', 'last_seq', 'execution_id']).where('id', 'in', missing.slice(i, i + 500)).execute();
      for (const r of rows) {
        st.seqs.set(r.id, r.last_seq);
        st.execs.set(r.id, r.execution_id);
      }
    }
    const rows: Array<{ task_id: string; seq: number; attempt: number; lines: string; line_count: number; created_at: number }> = [];
    const touched = new Set<string>();
    // Notes need sequence numbers of their own range.
    const noteSeq = new Map<string, { before: number; after: number }>();
    for (const p of batch) {
      if (p.kind === 'chunk') {
        const f = p.frame;
        const prev = last(f.taskId);
        if (prev === undefined) { st.acks.set(p, -1); continue; } // unknown task: nothing to store
        if (f.seq <= prev) { st.acks.set(p, prev); continue; } // a resend of a stored chunk
        const lines = f.lines.map((l: LogLine): StoredLine => [l.s, l.t, l.l]);
        rows.push({ task_id: f.taskId, seq: f.seq, attempt: f.attempt, lines: JSON.stringify(lines), line_count: lines.length, created_at: now });
        if (f.seq === prev + 1) st.seqs.set(f.taskId, f.seq);
        touched.add(f.taskId);
        st.published.push({ taskId: f.taskId, seq: f.seq, lines });
        st.acks.set(p, last(f.taskId)!);
      } else if (p.kind === 'note') {
        let ns = noteSeq.get(p.taskId);
        if (!ns) {
          const r = await trx.selectFrom('log_chunks').select([
            sql<number>`min(case when seq < 0 then seq else null end)`.as('lo'),
            sql<number>`max(case when seq >= ${NOTE_AFTER_BASE} then seq else null end)`.as('hi'),
          ]).where('task_id', '=', p.taskId).executeTakeFirst();
          // before-notes count up from the base so they keep their order
          const beforeCount = await trx.selectFrom('log_chunks').select(sql<number>`count(*)`.as('n')).where('task_id', '=', p.taskId).where('seq', '<', 0).executeTakeFirst();
          ns = { before: NOTE_BEFORE_BASE + Number(beforeCount?.n ?? 0), after: r?.hi != null ? Number(r.hi) : NOTE_AFTER_BASE };
          noteSeq.set(p.taskId, ns);
        }
        const seq = p.where === 'before' ? ++ns.before : ++ns.after;
        const lines: StoredLine[] = [[2, now, p.text]];
        rows.push({ task_id: p.taskId, seq, attempt: 0, lines: JSON.stringify(lines), line_count: 1, created_at: now });
        st.published.push({ taskId: p.taskId, seq, lines });
        if (!this.executionOf.has(p.taskId) && !st.execs.has(p.taskId)) {
          const t = await trx.selectFrom('tasks').select('execution_id').where('id', '=', p.taskId).executeTakeFirst();
          st.execs.set(p.taskId, t?.execution_id ?? null);
        }
        st.acks.set(p, seq);
      }
    }
    for (let i = 0; i < rows.length; i += 400) {
      await trx.insertInto('log_chunks').values(rows.slice(i, i + 400)).onConflict((oc) => oc.columns(['task_id', 'seq']).doNothing()).execute();
    }
    for (const p of batch) {
      if (p.kind !== 'result') continue;
      const f = p.frame;
      const prev = last(f.taskId);
      if (prev === undefined) { st.acks.set(p, -1); continue; }
      // A result ends the log: it is taken only once every chunk before it is stored
      // (one that failed to store is resent after the reconnect, then the result again).
      if (f.seq > prev + 1) { st.acks.set(p, prev); continue; }
      if (!this.applier) throw new Error('no result applier');
      // The result's update also records the task's last sequence.
      const seq = Math.max(prev, f.seq);
      const applied = await this.applier.applyResult(trx, p.delegateId, f, seq);
      if (applied) {
        st.seqs.set(f.taskId, seq);
        touched.delete(f.taskId);
        st.results.push({ delegateId: p.delegateId, frame: f, task: applied });
      }
      st.acks.set(p, applied ? f.seq : -1);
    }
    for (const t of touched) {
      await this.setLastSeq.execute(trx, { taskId: t, seq: last(t)! });
    }
    if (st.results.length && this.applier) st.refills = await this.applier.refill(trx, st.results.map((r) => ({ delegateId: r.delegateId, taskId: r.frame.taskId })));
    return st;
  }

  /**
   * Commits a batch and resolves once it is committed; the next batch may be staged while
   * this one's sync runs. Acknowledgements, live tails and results follow the sync.
   */
  private flush(batch: Pending[]): Promise<void> {
    return new Promise<void>((committed) => {
      this.syncing++;
      this.store.writer.run((trx) => this.stage(trx, batch), (st) => {
        // the next batch must see what this one stored
        for (const [t, seq] of st.seqs) this.lastSeq.set(t, seq);
        for (const [t, e] of st.execs) this.executionOf.set(t, e);
        committed();
      }).then((st) => this.finish(batch, st), (err: unknown) => {
        this.logger.error({ err }, 'log store commit failed');
        for (const p of batch) p.reject(err as Error);
        committed();
      }).finally(() => {
        this.syncing--;
        this.maybeIdle();
      });
    });
  }

  /** After the batch is durable: acknowledge, publish to live tails, hand results on. */
  private finish(batch: Pending[], st: Staged): void {
    let lineCount = 0;
    for (const c of st.published) lineCount += c.lines.length;
    this.metrics.logLinesStored.inc(lineCount);
    for (const p of batch) p.resolve(st.acks.get(p) ?? -1);
    for (const c of st.published) {
      this.events.emit(`task:${c.taskId}`, c);
      const exec = this.executionOf.get(c.taskId);
      if (exec) this.events.emit(`exec:${exec}`, c);
      if (this.bus?.distributed) this.bus.publish({ type: 'log.chunk', taskId: c.taskId, executionId: exec ?? null, seq: c.seq });
    }
    if (st.results.length) {
      for (const r of st.results) { this.lastSeq.delete(r.frame.taskId); this.executionOf.delete(r.frame.taskId); }
      this.applier?.afterResults(st.results, st.refills);
    }
  }

  /** Chunks of one task in sequence order, optionally after a sequence. */
  async readTask(taskId: string, afterSeq = -2_147_483_648): Promise<StoredChunk[]> {
    const rows = await this.store.db.selectFrom('log_chunks').select(['seq', 'lines']).where('task_id', '=', taskId).where('seq', '>', afterSeq).orderBy('seq').execute();
    return rows.map((r) => ({ taskId, seq: Number(r.seq), lines: JSON.parse(r.lines) as StoredLine[] }));
  }

  /** Subscribe to chunks of a task (`task:ID`) or of an execution (`exec:ID`). Returns the unsubscribe. */
  subscribe(channel: string, fn: (c: StoredChunk) => void): () => void {
    this.events.on(channel, fn);
    return () => this.events.off(channel, fn);
  }

  /** The task's execution became known (the engine created the task). */
  bindExecution(taskId: string, executionId: string): void {
    this.executionOf.set(taskId, executionId);
  }
}
