/**
 * Table types for Kysely. Times are epoch ms (bigint in PostgreSQL, parsed to number),
 * booleans are 0/1 integers, JSON lives in text columns (the owning module parses it).
 */
import type { ColumnType, Generated } from 'kysely';

export interface AccountsTable {
  id: string;
  name: string;
  ring: string;
  running_limit: number | null;
  created_at: number;
}

export interface TokensTable {
  id: string;
  account_id: string;
  kind: 'delegate' | 'user';
  name: string;
  role: 'admin' | 'deployer' | 'viewer' | null;
  /** JSON: {"service": "...", "environmentType": "..."} */
  scopes: string;
  /** sha256 hex of the secret part */
  hash: string;
  created_at: number;
  revoked_at: number | null;
  last_used_at: number | null;
}

export interface SecretsTable {
  account_id: string;
  name: string;
  /** base64(iv | tag | ciphertext), AES-256-GCM with the data dir's key */
  ciphertext: string;
  updated_at: number;
}

export interface DelegatesTable {
  id: string;
  account_id: string;
  token_id: string;
  name: string;
  version: string;
  tags: string;
  capabilities: string;
  capacity: number;
  running: number;
  connected: number;
  session_id: string | null;
  server_id: string | null;
  connected_at: number | null;
  last_seen_at: number;
  disconnected_at: number | null;
  /** JSON: {"version","state","error"} or null */
  upgrade: string | null;
  /** JSON array of versions this delegate failed to upgrade to */
  failed_versions: string;
  created_at: number;
}

export interface TasksTable {
  id: string;
  account_id: string;
  execution_id: string | null;
  kind: string;
  /** JSON TaskSpec */
  spec: string;
  /** JSON env map */
  env: string;
  /** JSON array of secret names */
  secret_names: string;
  /** JSON array of tags every eligible delegate must carry */
  selectors: string;
  /** JSON array of capabilities required */
  capabilities: string;
  priority: number;
  status: 'queued' | 'assigned' | 'running' | 'succeeded' | 'failed' | 'canceled';
  /** dispatch attempt: +1 each time the task goes back to the queue */
  attempt: number;
  delegate_id: string | null;
  delegate_version: string | null;
  lease_expires_at: number | null;
  queued_at: number;
  /** FIFO order within the account: monotonically increasing */
  queue_seq: number;
  assigned_at: number | null;
  started_at: number | null;
  finished_at: number | null;
  timeout_ms: number | null;
  queue_timeout_ms: number;
  cancel_requested: number;
  cancel_reason: string | null;
  /** JSON TaskResult (without type) once finished */
  result: string | null;
  /** highest log sequence stored durably */
  last_seq: number;
  error_kind: string | null;
}

export interface LogChunksTable {
  task_id: string;
  seq: number;
  attempt: number;
  /** JSON [[stream, epochMs, text], …] */
  lines: string;
  line_count: number;
  created_at: number;
}

export interface PipelinesTable {
  account_id: string;
  name: string;
  version: number;
  /** JSON normalised definition */
  definition: string;
  /** the file as applied */
  source: string;
  created_at: number;
  created_by: string;
}

export interface ExecutionsTable {
  id: string;
  account_id: string;
  pipeline: string;
  pipeline_version: number;
  status: string;
  artifact: string | null;
  inputs: string;
  created_at: number;
  finished_at: number | null;
  created_by: string;
  /** JSON engine state document */
  state: string;
  updated_at: number;
  /** optimistic concurrency: bumped on every write */
  revision: number;
}

export interface TimersTable {
  id: string;
  execution_id: string;
  key: string;
  due_at: number;
  payload: string;
}

export interface DeploymentsTable {
  id: Generated<number>;
  account_id: string;
  service: string;
  environment: string;
  infrastructure: string;
  pipeline: string;
  artifact: string;
  execution_id: string;
  stage_id: string;
  status: 'succeeded' | 'failed' | 'rolledBack';
  at: number;
}

export interface InfrastructureMappingsTable {
  account_id: string;
  service: string;
  environment: string;
  environment_type: string;
  infrastructure: string;
  live_color: string | null;
  created_at: number;
}

export interface RingsTable {
  name: string;
  ord: number;
  version: string | null;
  previous_version: string | null;
  paused: number;
  /** JSON {"version","state","since",...} or null */
  rollout: string | null;
  updated_at: number;
}

export interface RingHistoryTable {
  id: Generated<number>;
  ring: string;
  at: number;
  from_version: string | null;
  to_version: string | null;
  by: string;
  reason: string;
  evidence: string | null;
}

export interface ReleasesTable {
  version: string;
  sha256: string;
  protocol: number;
  manifest: string;
  path: string;
  size: number;
  published_at: number;
  published_by: string;
}

/** a release's bundle, so that every server can serve it (migration 0006) */
export interface ReleaseBundlesTable {
  version: string;
  data: Buffer;
}

export interface SequencesTable {
  name: string;
  value: number;
}

export interface DB {
  accounts: AccountsTable;
  tokens: TokensTable;
  secrets: SecretsTable;
  delegates: DelegatesTable;
  tasks: TasksTable;
  log_chunks: LogChunksTable;
  pipelines: PipelinesTable;
  executions: ExecutionsTable;
  timers: TimersTable;
  deployments: DeploymentsTable;
  infrastructure_mappings: InfrastructureMappingsTable;
  rings: RingsTable;
  ring_history: RingHistoryTable;
  releases: ReleasesTable;
  release_bundles: ReleaseBundlesTable;
  sequences: SequencesTable;
}

export type Json = ColumnType<string, string, string>;
