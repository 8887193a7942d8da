/**
 * The delegate protocol (CONTRACT §7): every frame is one msgpack map with a `type`.
 * Each frame's JSON schema and its TypeScript type share one name (TypeBox derives the
 * type from the schema, so they cannot drift). Validators are compiled once in codec.ts.
 */
import { Type, type Static, type TSchema } from '@sinclair/typebox';

const Id = Type.String({ minLength: 1, maxLength: 128 });
const Count = Type.Integer({ minimum: 0 });
const Attempt = Type.Integer({ minimum: 1 });
const Seq = Type.Integer({ minimum: 1 });
const Str = (max = 4096) => Type.String({ maxLength: max });
const StrMap = Type.Record(Type.String({ maxLength: 256 }), Type.String({ maxLength: 1 << 20 }));

export const TaskErrorKindSchema = Type.Union([
  Type.Literal('StepFailed'), Type.Literal('Timeout'), Type.Literal('DelegateLost'),
  Type.Literal('NoEligibleDelegate'), Type.Literal('Verification'), Type.Literal('Canceled'),
]);

export const TaskFailureSchema = Type.Object({
  kind: TaskErrorKindSchema,
  message: Str(8192),
  retryable: Type.Boolean(),
});

// ---- task specs, one per kind -------------------------------------------------------

export const ShellSpec = Type.Object({
  kind: Type.Literal('shell'),
  script: Str(1 << 20),
  shell: Type.Optional(Str(256)),
});
export type ShellSpec = Static<typeof ShellSpec>;

export const HttpSpec = Type.Object({
  kind: Type.Literal('http'),
  url: Str(8192),
  method: Type.Optional(Str(16)),
  headers: Type.Optional(StrMap),
  body: Type.Optional(Str(1 << 20)),
  /** accepted statuses; default 200-299 */
  expectStatus: Type.Optional(Type.Array(Type.Integer({ minimum: 100, maximum: 599 }), { maxItems: 64 })),
  /** a regular expression the response body must match */
  expectBody: Type.Optional(Str(4096)),
});
export type HttpSpec = Static<typeof HttpSpec>;

export const NoopSpec = Type.Object({
  kind: Type.Literal('noop'),
  sleepMs: Type.Optional(Count),
  lines: Type.Optional(Count),
  fail: Type.Optional(Type.Boolean()),
});
export type NoopSpec = Static<typeof NoopSpec>;

export const VerifyMetricQuery = Type.Object({
  name: Str(256),
  /** PromQL with `$role` substituted by the delegate for each role */
  query: Str(16384),
});

export const VerifySpec = Type.Object({
  kind: Type.Literal('verify'),
  source: Type.Object({
    type: Type.Literal('prometheus'),
    url: Str(8192),
    bearerToken: Type.Optional(Str(8192)),
    /** name of a secret in the assignment's `secrets` holding the bearer token */
    bearerTokenSecret: Type.Optional(Str(256)),
  }),
  metrics: Type.Array(VerifyMetricQuery, { maxItems: 200 }),
  roles: Type.Array(Str(64), { maxItems: 8 }),
  durationMs: Count,
  intervalMs: Type.Integer({ minimum: 1 }),
});
export type VerifySpec = Static<typeof VerifySpec>;

export const TaskSpec = Type.Union([ShellSpec, HttpSpec, NoopSpec, VerifySpec]);
export type TaskSpec = Static<typeof TaskSpec>;

// ---- delegate → server -------------------------------------------------------------

export const RunningTask = Type.Object({
  taskId: Id,
  attempt: Attempt,
  /** highest sequence the server acknowledged, as the delegate knows it */
  lastAckedSeq: Count,
  /** highest sequence the delegate has written to its spool */
  lastSeq: Count,
  finished: Type.Boolean(),
});
export type RunningTask = Static<typeof RunningTask>;

export const Hello = Type.Object({
  type: Type.Literal('hello'),
  protocol: Type.Integer({ minimum: 0 }),
  delegateId: Id,
  name: Str(256),
  version: Str(64),
  tags: Type.Array(Str(128), { maxItems: 64 }),
  capabilities: Type.Array(Str(128), { maxItems: 64 }),
  capacity: Type.Integer({ minimum: 0, maximum: 10_000 }),
  running: Type.Array(RunningTask, { maxItems: 10_000 }),
  /** true while a supervisor holds this worker on probation */
  probation: Type.Optional(Type.Boolean()),
  /** versions this delegate refused or failed, so the server does not re-offer them */
  failedVersions: Type.Optional(Type.Array(Str(64), { maxItems: 16 })),
});
export type Hello = Static<typeof Hello>;

export const DelegateHeartbeat = Type.Object({
  type: Type.Literal('heartbeat'),
  at: Count,
  running: Type.Array(Id, { maxItems: 10_000 }),
  load: Type.Number({ minimum: 0 }),
});
export type DelegateHeartbeat = Static<typeof DelegateHeartbeat>;

export const TaskAccept = Type.Object({
  type: Type.Literal('task.accept'),
  taskId: Id,
  attempt: Attempt,
});
export type TaskAccept = Static<typeof TaskAccept>;

export const TaskReject = Type.Object({
  type: Type.Literal('task.reject'),
  taskId: Id,
  attempt: Attempt,
  reason: Type.Union([Type.Literal('capacity'), Type.Literal('capability'), Type.Literal('draining'), Type.Literal('duplicate'), Type.Literal('invalid')]),
  message: Str(4096),
});
export type TaskReject = Static<typeof TaskReject>;

export const LogLine = Type.Object({
  /** stream: 0 stdout, 1 stderr, 2 delegate (notes written by the delegate itself) */
  s: Type.Union([Type.Literal(0), Type.Literal(1), Type.Literal(2)]),
  /** epoch milliseconds when the line was read */
  t: Count,
  l: Type.String({ maxLength: 1 << 20 }),
});
export type LogLine = Static<typeof LogLine>;

export const LogChunk = Type.Object({
  type: Type.Literal('log.chunk'),
  taskId: Id,
  attempt: Attempt,
  seq: Seq,
  lines: Type.Array(LogLine, { minItems: 1, maxItems: 10_000 }),
});
export type LogChunk = Static<typeof LogChunk>;

export const TaskResult = Type.Object({
  type: Type.Literal('task.result'),
  taskId: Id,
  attempt: Attempt,
  /** the result is the task's last sequence number: every chunk before it was sent */
  seq: Seq,
  status: Type.Union([Type.Literal('Succeeded'), Type.Literal('Failed'), Type.Literal('Canceled')]),
  exitCode: Type.Union([Type.Integer(), Type.Null()]),
  error: Type.Optional(TaskFailureSchema),
  outputs: StrMap,
  startedAt: Count,
  finishedAt: Count,
  /** kind-specific result data (verify: the series collected) */
  data: Type.Optional(Type.Unknown()),
});
export type TaskResult = Static<typeof TaskResult>;

export const UpgradeStatus = Type.Object({
  type: Type.Literal('upgrade.status'),
  version: Str(64),
  state: Type.Union([
    Type.Literal('downloading'), Type.Literal('verifying'), Type.Literal('draining'),
    Type.Literal('probation'), Type.Literal('succeeded'), Type.Literal('failed'), Type.Literal('rolledBack'),
  ]),
  error: Type.Optional(Str(8192)),
});
export type UpgradeStatus = Static<typeof UpgradeStatus>;

// ---- server → delegate -------------------------------------------------------------

export const Welcome = Type.Object({
  type: Type.Literal('welcome'),
  sessionId: Id,
  protocol: Type.Integer(),
  heartbeatMs: Type.Integer({ minimum: 1 }),
  limits: Type.Object({
    maxFrameBytes: Type.Integer({ minimum: 1 }),
    maxFramesPerSecond: Type.Integer({ minimum: 1 }),
    maxChunkLines: Type.Integer({ minimum: 1 }),
  }),
  serverTime: Count,
  /** per running task the server knows: the highest durable sequence */
  acks: Type.Array(Type.Object({ taskId: Id, attempt: Attempt, seq: Count }), { maxItems: 10_000 }),
  /** tasks the delegate reported that the server no longer wants (cancel them, drop their spool) */
  forget: Type.Array(Id, { maxItems: 10_000 }),
  account: Str(128),
  ring: Str(128),
});
export type Welcome = Static<typeof Welcome>;

export const ServerHeartbeat = Type.Object({
  type: Type.Literal('heartbeat'),
  at: Count,
});
export type ServerHeartbeat = Static<typeof ServerHeartbeat>;

export const TaskAssign = Type.Object({
  type: Type.Literal('task.assign'),
  taskId: Id,
  attempt: Attempt,
  leaseMs: Type.Integer({ minimum: 1 }),
  executionId: Type.Optional(Str(128)),
  spec: TaskSpec,
  env: StrMap,
  /** secret values by name; the delegate masks them in every line it sends */
  secrets: StrMap,
  timeoutMs: Type.Optional(Type.Integer({ minimum: 1 })),
  /** grace between SIGTERM and SIGKILL on cancel */
  killGraceMs: Type.Optional(Type.Integer({ minimum: 0 })),
});
export type TaskAssign = Static<typeof TaskAssign>;

export const TaskCancel = Type.Object({
  type: Type.Literal('task.cancel'),
  taskId: Id,
  attempt: Attempt,
  reason: Str(4096),
});
export type TaskCancel = Static<typeof TaskCancel>;

export const LogAck = Type.Object({
  type: Type.Literal('log.ack'),
  taskId: Id,
  attempt: Attempt,
  /** cumulative: every sequence up to and including seq is durable on the server */
  seq: Count,
  /** true once the result is stored: the delegate may forget the task */
  done: Type.Optional(Type.Boolean()),
});
export type LogAck = Static<typeof LogAck>;

export const Upgrade = Type.Object({
  type: Type.Literal('upgrade'),
  version: Str(64),
  sha256: Type.String({ pattern: '^[0-9a-f]{64}$' }),
  /** path on the control plane to download the bundle from, with the session's token */
  url: Str(4096),
});
export type Upgrade = Static<typeof Upgrade>;

// ---- catalogues --------------------------------------------------------------------

export const DelegateFrames = {
  hello: Hello,
  heartbeat: DelegateHeartbeat,
  'task.accept': TaskAccept,
  'task.reject': TaskReject,
  'log.chunk': LogChunk,
  'task.result': TaskResult,
  'upgrade.status': UpgradeStatus,
} as const satisfies Record<string, TSchema>;

export const ServerFrames = {
  welcome: Welcome,
  heartbeat: ServerHeartbeat,
  'task.assign': TaskAssign,
  'task.cancel': TaskCancel,
  'log.ack': LogAck,
  upgrade: Upgrade,
} as const satisfies Record<string, TSchema>;

export type DelegateFrameType = keyof typeof DelegateFrames;
export type ServerFrameType = keyof typeof ServerFrames;
export type DelegateFrame = { [K in DelegateFrameType]: Static<(typeof DelegateFrames)[K]> }[DelegateFrameType];
export type ServerFrame = { [K in ServerFrameType]: Static<(typeof ServerFrames)[K]> }[ServerFrameType];
export type DelegateFrameOf<K extends DelegateFrameType> = Static<(typeof DelegateFrames)[K]>;
export type ServerFrameOf<K extends ServerFrameType> = Static<(typeof ServerFrames)[K]>;
