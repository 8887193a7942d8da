/**
 * The pipeline file (CONTRACT §5) as a JSON schema. The schema and the type of the file as
 * written share one name, `PipelineFile` (TypeBox derives the type). The schema checks
 * shapes; `validate.ts` adds the checks a schema cannot express (unique ids, references,
 * expressions), and `normalise.ts` turns a valid file into a `PipelineDefinition`.
 * This document is public: GET /api/v1/schema/pipeline serves it.
 */
import { Type, type Static, type TSchema } from '@sinclair/typebox';
import { DURATION_PATTERN, NAME_PATTERN } from '@ferry/shared';

const Name = Type.String({ pattern: NAME_PATTERN, maxLength: 100, description: 'a name: [a-z0-9][a-z0-9-_]*' });
const Duration = Type.Union(
  [Type.String({ pattern: DURATION_PATTERN }), Type.Integer({ minimum: 0 })],
  { description: 'a duration: 500ms, 30s, 5m, 1h, 1d, or a number of milliseconds', $comment: 'duration' },
);
const Expression = Type.String({ minLength: 1, maxLength: 4096, description: 'an expression over var.*, artifact and out.STEP.KEY' });
const Selectors = Type.Array(Type.String({ minLength: 1, maxLength: 128 }), { maxItems: 64 });
const StrMap = Type.Record(Type.String({ maxLength: 256 }), Type.String({ maxLength: 65536 }));

export const ErrorKindName = Type.Union([
  Type.Literal('StepFailed'), Type.Literal('Timeout'), Type.Literal('DelegateLost'),
  Type.Literal('NoEligibleDelegate'), Type.Literal('Verification'), Type.Literal('AllErrors'),
]);

export const ActionType = Type.Union([
  Type.Literal('retry'), Type.Literal('ignore'), Type.Literal('abort'),
  Type.Literal('stageRollback'), Type.Literal('pipelineRollback'), Type.Literal('manualIntervention'),
]);

/** What a manual intervention does when nobody intervened in time. */
export const TimeoutAction = Type.Union([
  Type.Literal('retry'), Type.Literal('ignore'), Type.Literal('abort'),
  Type.Literal('stageRollback'), Type.Literal('pipelineRollback'),
]);

export const FailureStrategyFile = Type.Object({
  on: Type.Array(ErrorKindName, { minItems: 1, maxItems: 6 }),
  action: Type.Object({
    type: ActionType,
    /** retry: how many more tries */
    count: Type.Optional(Type.Integer({ minimum: 1, maximum: 100 })),
    /** retry: wait before each retry */
    interval: Type.Optional(Duration),
    /** retry: waits before the 1st, 2nd… retry (the last one repeats) */
    intervals: Type.Optional(Type.Array(Duration, { minItems: 1, maxItems: 100 })),
    /** manualIntervention: how long to wait for `ferry intervene` */
    timeout: Type.Optional(Duration),
    onTimeout: Type.Optional(TimeoutAction),
  }, { additionalProperties: false }),
}, { additionalProperties: false });
export type FailureStrategyFile = Static<typeof FailureStrategyFile>;

export const ApproversFile = Type.Object({
  minimumCount: Type.Optional(Type.Integer({ minimum: 1, maximum: 100 })),
  disallowExecutor: Type.Optional(Type.Boolean()),
  /** user token names allowed to decide; anyone with the right role when absent */
  users: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 256 }), { maxItems: 100 })),
}, { additionalProperties: false });
export type ApproversFile = Static<typeof ApproversFile>;

export const VerifyMetricFile = Type.Object({
  name: Name,
  query: Type.String({ minLength: 1, maxLength: 16384 }),
  direction: Type.Optional(Type.Union([Type.Literal('increase'), Type.Literal('decrease'), Type.Literal('either')])),
  critical: Type.Optional(Type.Boolean()),
  allowedIncrease: Type.Optional(Type.Number({ minimum: 0 })),
  allowedDecrease: Type.Optional(Type.Number({ minimum: 0 })),
  weight: Type.Optional(Type.Number({ minimum: 0 })),
}, { additionalProperties: false });

/**
 * Where a verification reads its metrics. `url` may name variables as ${FERRY_VAR_X} (as
 * an http step's url may); the bearer token, when given, is the named secret's value and
 * reaches only the delegate that runs the verify task.
 */
export const HealthSourceFile = Type.Object({
  type: Type.Literal('prometheus'),
  url: Type.String({ minLength: 1, maxLength: 8192 }),
  /** name of a secret holding a bearer token */
  bearerTokenSecret: Type.Optional(Type.String({ minLength: 1, maxLength: 256 })),
}, { additionalProperties: false });

export const VerifyFile = Type.Object({
  /** optional when the stage's environment has a healthSource */
  source: Type.Optional(HealthSourceFile),
  metrics: Type.Array(VerifyMetricFile, { minItems: 1, maxItems: 200 }),
  sensitivity: Type.Optional(Type.Union([Type.Literal('high'), Type.Literal('medium'), Type.Literal('low')])),
  duration: Type.Optional(Duration),
  interval: Type.Optional(Duration),
  failOnNoData: Type.Optional(Type.Boolean()),
}, { additionalProperties: false });
export type VerifyFile = Static<typeof VerifyFile>;

export const StepType = Type.Union([
  Type.Literal('shell'), Type.Literal('http'), Type.Literal('approval'), Type.Literal('wait'),
  Type.Literal('verify'), Type.Literal('noop'),
]);

/** Fields each step type needs; the schema's if/then says so, so errors name the field. */
const requiredByType = (type: string, required: string[]) => ({
  if: { properties: { type: { const: type } }, required: ['type'] },
  then: { required },
});

export const StepFile = Type.Object({
  id: Name,
  name: Type.Optional(Type.String({ maxLength: 256 })),
  type: StepType,
  when: Type.Optional(Expression),
  timeout: Type.Optional(Duration),
  queueTimeout: Type.Optional(Duration),
  continueOnError: Type.Optional(Type.Boolean()),
  alwaysRun: Type.Optional(Type.Boolean()),
  failureStrategies: Type.Optional(Type.Array(FailureStrategyFile, { maxItems: 32 })),
  delegateSelectors: Type.Optional(Selectors),
  secrets: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 256 }), { maxItems: 64 })),
  env: Type.Optional(StrMap),
  // shell
  script: Type.Optional(Type.String({ minLength: 1, maxLength: 1 << 20 })),
  shell: Type.Optional(Type.String({ minLength: 1, maxLength: 256 })),
  // http
  url: Type.Optional(Type.String({ minLength: 1, maxLength: 8192 })),
  method: Type.Optional(Type.String({ pattern: '^[A-Za-z]+$', maxLength: 16 })),
  headers: Type.Optional(StrMap),
  body: Type.Optional(Type.String({ maxLength: 1 << 20 })),
  expectStatus: Type.Optional(Type.Array(Type.Integer({ minimum: 100, maximum: 599 }), { minItems: 1, maxItems: 64 })),
  expectBody: Type.Optional(Type.String({ maxLength: 4096 })),
  // approval
  approvers: Type.Optional(ApproversFile),
  // wait (and verify: how long to collect)
  duration: Type.Optional(Duration),
  // verify
  source: Type.Optional(HealthSourceFile),
  metrics: Type.Optional(VerifyFile.properties.metrics),
  sensitivity: Type.Optional(VerifyFile.properties.sensitivity),
  interval: Type.Optional(Duration),
  failOnNoData: Type.Optional(Type.Boolean()),
  // noop (tests, benchmarks)
  sleep: Type.Optional(Duration),
  lines: Type.Optional(Type.Integer({ minimum: 0, maximum: 1_000_000 })),
  fail: Type.Optional(Type.Boolean()),
}, {
  additionalProperties: false,
  allOf: [
    requiredByType('shell', ['script']),
    requiredByType('http', ['url']),
    requiredByType('wait', ['duration']),
    requiredByType('verify', ['metrics']),
  ],
});
export type StepFile = Static<typeof StepFile>;

export const ParallelFile = Type.Object({
  parallel: Type.Array(StepFile, { minItems: 1, maxItems: 64 }),
}, { additionalProperties: false });
export type ParallelFile = Static<typeof ParallelFile>;

/** A list item is a step, or `{parallel: [steps]}`; if/then keeps the errors precise. */
const StepNodeFile = Type.Unsafe<StepFile | ParallelFile>({
  type: 'object',
  if: { required: ['parallel'] },
  then: ParallelFile,
  else: StepFile,
});
const StepList = Type.Array(StepNodeFile, { maxItems: 256 });

export const CanaryPhaseFile = Type.Object({
  weight: Type.Number({ exclusiveMinimum: 0, maximum: 100 }),
  verify: Type.Optional(VerifyFile),
  pause: Type.Optional(Type.Object({ duration: Type.Optional(Duration) }, { additionalProperties: false })),
}, { additionalProperties: false });
export type CanaryPhaseFile = Static<typeof CanaryPhaseFile>;

export const StrategyFile = Type.Object({
  rolling: Type.Optional(Type.Object({}, { additionalProperties: false })),
  canary: Type.Optional(Type.Object({
    phases: Type.Array(CanaryPhaseFile, { minItems: 1, maxItems: 20 }),
  }, { additionalProperties: false })),
  blueGreen: Type.Optional(Type.Object({
    verify: Type.Optional(VerifyFile),
  }, { additionalProperties: false })),
}, { additionalProperties: false, minProperties: 1, maxProperties: 1 });
export type StrategyFile = Static<typeof StrategyFile>;

export const StageFile = Type.Object({
  id: Name,
  name: Type.Optional(Type.String({ maxLength: 256 })),
  description: Type.Optional(Type.String({ maxLength: 4096 })),
  type: Type.Union([Type.Literal('deploy'), Type.Literal('approval'), Type.Literal('custom')]),
  when: Type.Optional(Expression),
  schedule: Type.Optional(Type.Object({ at: Type.String({ format: 'date-time' }) }, { additionalProperties: false })),
  delegateSelectors: Type.Optional(Selectors),
  failureStrategies: Type.Optional(Type.Array(FailureStrategyFile, { maxItems: 32 })),
  queueTimeout: Type.Optional(Duration),
  // deploy
  service: Type.Optional(Name),
  environment: Type.Optional(Name),
  infrastructure: Type.Optional(Name),
  rollbackScope: Type.Optional(Type.Union([Type.Literal('pipeline'), Type.Literal('infrastructure')])),
  strategy: Type.Optional(StrategyFile),
  steps: Type.Optional(StepList),
  rollbackSteps: Type.Optional(StepList),
  swapSteps: Type.Optional(StepList),
  // approval
  approvers: Type.Optional(ApproversFile),
  timeout: Type.Optional(Duration),
}, {
  additionalProperties: false,
  allOf: [
    {
      if: { properties: { type: { const: 'deploy' } }, required: ['type'] },
      then: { required: ['service', 'environment', 'infrastructure', 'steps'] },
    },
    {
      if: { properties: { type: { const: 'custom' } }, required: ['type'] },
      then: { required: ['steps'] },
    },
  ],
});
export type StageFile = Static<typeof StageFile>;

export const VariableFile = Type.Object({
  type: Type.Optional(Type.Union([Type.Literal('string'), Type.Literal('number'), Type.Literal('boolean')])),
  default: Type.Optional(Type.Union([Type.String(), Type.Number(), Type.Boolean()])),
  required: Type.Optional(Type.Boolean()),
  description: Type.Optional(Type.String({ maxLength: 4096 })),
  allowed: Type.Optional(Type.Array(Type.Union([Type.String(), Type.Number(), Type.Boolean()]), { maxItems: 256 })),
}, { additionalProperties: false });
export type VariableFile = Static<typeof VariableFile>;

export const EnvironmentFile = Type.Object({
  type: Type.Optional(Type.Union([Type.Literal('production'), Type.Literal('preproduction')])),
  concurrency: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })),
  deployLatestOnly: Type.Optional(Type.Boolean()),
  /** the metrics source of verifications of stages deploying to this environment */
  healthSource: Type.Optional(HealthSourceFile),
}, { additionalProperties: false });
export type EnvironmentFile = Static<typeof EnvironmentFile>;

const NameKeyed = <T extends TSchema>(value: T) =>
  Type.Record(Type.String({ pattern: NAME_PATTERN, maxLength: 100 }), value, { additionalProperties: false });

export const PipelineFile = Type.Object({
  pipeline: Name,
  description: Type.Optional(Type.String({ maxLength: 4096 })),
  variables: Type.Optional(NameKeyed(
    // `replicas: 2` is short for `replicas: { default: 2 }`
    Type.Union([VariableFile, Type.String(), Type.Number(), Type.Boolean()]),
  )),
  environments: Type.Optional(NameKeyed(EnvironmentFile)),
  stages: Type.Array(StageFile, { minItems: 1, maxItems: 100 }),
}, {
  $id: 'https://ferry.dev/schema/pipeline.json',
  title: 'Ferry pipeline file',
  additionalProperties: false,
});
export type PipelineFile = Static<typeof PipelineFile>;

/** The published JSON schema (GET /api/v1/schema/pipeline). */
export function getPipelineJsonSchema(): Record<string, unknown> {
  return { $schema: 'http://json-schema.org/draft-07/schema#', ...(JSON.parse(JSON.stringify(PipelineFile)) as Record<string, unknown>) };
}
