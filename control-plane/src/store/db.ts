/**
 * The database: Kysely over better-sqlite3 (embedded default, WAL) or PostgreSQL (pg).
 * Every query goes through Kysely's async API so both dialects share them, except the
 * task claim (scheduler/claim.ts).
 */
import fs from 'node:fs';
import path from 'node:path';
import { Kysely, Migrator, PostgresDialect, SqliteDialect, sql, type SqlBool, type Transaction } from 'kysely';
import SQLite from 'better-sqlite3';
import pg from 'pg';
import type { DB } from './schema.js';
import { migrationsFor } from './migrations/index.js';
import { GroupCommit } from './group-commit.js';
import type { Dialect } from './migrations/util.js';

export type { DB } from './schema.js';
export type { Dialect } from './migrations/util.js';
export type Trx = Transaction<DB>;
export type Executor = Kysely<DB> | Trx;

export interface Store {
  readonly db: Kysely<DB>;
  readonly dialect: Dialect;
  /** the raw pg pool (PostgreSQL only): LISTEN/NOTIFY */
  readonly pgPool?: pg.Pool;
  /** the single writer: hot-path writes share its group commits (store/group-commit.ts) */
  readonly writer: GroupCommit;
  migrate(): Promise<void>;
  ping(): Promise<boolean>;
  close(): Promise<void>;
}

// PostgreSQL bigint (int8) → number: all our bigints are epoch ms or counters < 2^53.
pg.types.setTypeParser(20, (v) => Number.parseInt(v, 10));

export function openStore(url: string): Store {
  if (url.startsWith('sqlite:')) {
    const file = url.slice('sqlite:'.length);
    if (file !== ':memory:') fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
    const sqlite = new SQLite(file);
    sqlite.pragma('journal_mode = WAL');
    // FULL: a commit is synced to disk before it returns, so an acknowledgement sent after
    // a commit means the data survives a power loss. Group commits keep this cheap.
    sqlite.pragma('synchronous = FULL');
    sqlite.pragma('busy_timeout = 5000');
    sqlite.pragma('foreign_keys = ON');
    // The default page cache (2 MiB) is smaller than a busy queue's working set; past it
    // every statement rereads pages from the OS.
    sqlite.pragma('cache_size = -65536');
    // Sorts and temporary indexes in memory, not in temporary files.
    sqlite.pragma('temp_store = memory');
    const db = new Kysely<DB>({ dialect: new SqliteDialect({ database: cachedStatements(sqlite) }) });
    const synchronous = { normal: sqlite.prepare('pragma synchronous = normal'), full: sqlite.prepare('pragma synchronous = full') };
    const writer = new GroupCommit(db, file === ':memory:' ? {} : {
      walFile: `${path.resolve(file)}-wal`,
      // the writer holds Kysely's only connection while it calls this
      setSynchronous: (mode) => { synchronous[mode].run(); },
    });
    return makeStore(db, 'sqlite', writer, undefined, async () => {
      await writer.close();
      await db.destroy();
    });
  }
  const pool = new pg.Pool({ connectionString: url, max: 10 });
  pool.on('error', () => { /* idle client errors surface on the next query */ });
  const db = new Kysely<DB>({ dialect: new PostgresDialect({ pool }) });
  const writer = new GroupCommit(db);
  return makeStore(db, 'postgres', writer, pool, async () => {
    await writer.close();
    await db.destroy();
  });
}

/**
 * Kysely prepares every query anew; on the hot paths (claims, acks, results) preparing
 * cost about as much as running. Statements are reusable in better-sqlite3 (each call runs
 * to completion synchronously), so they are cached by their SQL text, a bounded LRU.
 */
function cachedStatements(sqlite: SQLite.Database, max = 500): SQLite.Database {
  const cache = new Map<string, SQLite.Statement>();
  const wrapper = Object.create(sqlite) as SQLite.Database;
  wrapper.prepare = ((source: string) => {
    let stmt = cache.get(source);
    if (stmt) {
      cache.delete(source);
      cache.set(source, stmt);
      return stmt;
    }
    stmt = sqlite.prepare(source);
    cache.set(source, stmt);
    if (cache.size > max) cache.delete(cache.keys().next().value!);
    return stmt;
  }) as SQLite.Database['prepare'];
  wrapper.close = () => {
    cache.clear();
    return sqlite.close();
  };
  return wrapper;
}

function makeStore(db: Kysely<DB>, dialect: Dialect, writer: GroupCommit, pgPool: pg.Pool | undefined, close: () => Promise<void>): Store {
  let migrated = false;
  return {
    db,
    dialect,
    pgPool,
    writer,
    async migrate() {
      // Kysely's migrator takes a lock of its own (an advisory lock on PostgreSQL), so
      // several servers starting at once on one database migrate one at a time.
      await runMigrations(db, dialect);
      migrated = true;
    },
    async ping() {
      if (!migrated) return false;
      try {
        await sql`select 1`.execute(db);
        return true;
      } catch {
        return false;
      }
    },
    close,
  };
}

async function runMigrations(db: Kysely<DB>, dialect: Dialect): Promise<void> {
  const migrator = new Migrator({
    db,
    provider: { getMigrations: async () => migrationsFor(dialect) },
    migrationTableName: 'ferry_migrations',
    migrationLockTableName: 'ferry_migrations_lock',
  });
  const { error, results } = await migrator.migrateToLatest();
  if (error) {
    const failed = results?.find((r) => r.status === 'Error');
    throw new Error(`migration ${failed?.migrationName ?? '?'} failed: ${(error as Error).message}`);
  }
}

/**
 * A column as an expression no index can serve, for `id in (…) and status = …`. Without
 * statistics SQLite's planner takes the status index over a list of primary keys and then
 * walks every queued task (1 ms for a 16-task claim with 10,000 queued, instead of 60 µs);
 * wrapping the column keeps it on the primary key. Plain SQL, so PostgreSQL takes it too.
 */
export const unindexed = (column: 'status' | 'delegate_id') => sql<string>`(${sql.ref(column)} || '')`;

/**
 * `status = 'queued'` written literally, so the planner may use the partial queue index
 * (migration 0005); a bound parameter would not match the index's condition.
 */
export const isQueued = sql<SqlBool>`status = 'queued'`;
/** `status = 'assigned'` literally, for the partial lease index (migration 0005). */
export const isAssigned = sql<SqlBool>`status = 'assigned'`;

/** JSON helpers for text columns. */
export const toJson = (v: unknown): string => JSON.stringify(v);
export function fromJson<T>(s: string | null | undefined, fallback: T): T {
  if (s == null) return fallback;
  try {
    return JSON.parse(s) as T;
  } catch {
    return fallback;
  }
}

/** Takes `by` values of a named counter; returns the last (store/prepared.ts can compile it once). */
export const sequenceStatement = (db: Executor, a: { name: string; by: number }) => db
  .insertInto('sequences')
  .values({ name: a.name, value: a.by })
  .onConflict((oc) => oc.column('name').doUpdateSet({ value: sql`sequences.value + ${a.by}` }))
  .returning('value');

/** Next value of a named counter (FIFO order of tasks), inside the caller's transaction. */
export async function nextSequence(trx: Executor, name: string, by = 1): Promise<number> {
  const row = await sequenceStatement(trx, { name, by }).executeTakeFirstOrThrow();
  return Number(row.value);
}

