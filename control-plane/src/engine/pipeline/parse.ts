/**
 * Reading a pipeline file: YAML (or JSON, which YAML reads too) → schema check (ajv) →
 * checks a schema cannot express → a normalised `PipelineDefinition`. Every problem is
 * reported with the file's line, the field's path and what was expected, e.g.
 *
 *   line 14: stages[0].steps[0].timeout: expected a duration such as 30s, 5m or 1h (got "5 minutes")
 *
 * and the request fails with INVALID_PIPELINE carrying all of them in `details.errors`.
 */
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import addFormatsModule from 'ajv-formats';
import { LineCounter, parseDocument, isMap, isScalar, isPair, type Node } from 'yaml';
import { FerryError, parseDuration } from '@ferry/shared';
import { PipelineFile, type FailureStrategyFile, type StageFile, type StepFile, type ParallelFile, type VerifyFile, type ApproversFile } from './schema.js';
import { parseExpression, expressionRefs, ExpressionError } from '../expression.js';
import type {
  Approvers, CanaryPhase, DeployStrategy, EnvironmentDefinition, FailureStrategy, HealthSource, PipelineDefinition,
  Scalar, StageDefinition, StepDefinition, StepNode, VariableDefinition, VerifyConfig,
} from './types.js';

export interface PipelineProblem {
  /** 1-based line in the file; null when the body was not text or the place is unknown */
  line: number | null;
  column: number | null;
  /** e.g. stages[0].steps[1].timeout */
  path: string;
  message: string;
}

export interface ParseOptions {
  /** the name the file must carry (PUT /pipelines/:name); filled in when the file has none */
  expectedName?: string;
}

const addFormats = addFormatsModule as unknown as (ajv: Ajv) => Ajv;
let validator: ValidateFunction | null = null;
function getValidator(): ValidateFunction {
  if (!validator) {
    const ajv = new Ajv({ allErrors: true, strict: false, verbose: true });
    addFormats(ajv);
    validator = ajv.compile(PipelineFile);
  }
  return validator;
}

/** Parses a pipeline file's text (YAML or JSON). Throws FerryError INVALID_PIPELINE. */
export function parsePipeline(source: string, opts: ParseOptions = {}): PipelineDefinition {
  const lineCounter = new LineCounter();
  const doc = parseDocument(source, { lineCounter, prettyErrors: false, uniqueKeys: true });
  if (doc.errors.length > 0) {
    const problems = doc.errors.map((e): PipelineProblem => {
      const pos = lineCounter.linePos(e.pos[0]);
      return { line: pos.line, column: pos.col, path: '', message: `not valid YAML: ${e.message.split('\n')[0]}` };
    });
    throw invalid(problems);
  }
  const value = doc.toJS({ maxAliasCount: 100 }) as unknown;
  const locate = (path: Array<string | number>): { line: number; column: number } | null => {
    // the deepest node that exists along the path
    for (let n = path.length; n >= 0; n--) {
      const node = doc.getIn(path.slice(0, n), true) as Node | undefined;
      if (node && typeof node === 'object' && 'range' in node && node.range) {
        const pos = lineCounter.linePos(node.range[0]);
        return { line: pos.line, column: pos.col };
      }
      if (n === 0) {
        const c = doc.contents as Node | null;
        if (c?.range) { const pos = lineCounter.linePos(c.range[0]); return { line: pos.line, column: pos.col }; }
      }
    }
    return null;
  };
  const locateKey = (path: Array<string | number>, key: string): { line: number; column: number } | null => {
    const parent = path.length === 0 ? doc.contents : doc.getIn(path, true);
    if (isMap(parent)) {
      for (const item of parent.items) {
        if (isPair(item) && isScalar(item.key) && item.key.value === key && item.key.range) {
          const pos = lineCounter.linePos(item.key.range[0]);
          return { line: pos.line, column: pos.col };
        }
      }
    }
    return locate(path);
  };
  return parsePipelineValue(value, opts, { locate, locateKey });
}

interface Locator {
  locate(path: Array<string | number>): { line: number; column: number } | null;
  locateKey(path: Array<string | number>, key: string): { line: number; column: number } | null;
}

const noLocator: Locator = { locate: () => null, locateKey: () => null };

/** Validates an already-parsed body (a JSON request). Throws FerryError INVALID_PIPELINE. */
export function parsePipelineValue(value: unknown, opts: ParseOptions = {}, locator: Locator = noLocator): PipelineDefinition {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw invalid([{ line: locator.locate([])?.line ?? null, column: null, path: '', message: 'expected a mapping with pipeline, stages, …' }]);
  }
  const body = { ...(value as Record<string, unknown>) };
  if (opts.expectedName !== undefined) {
    if (body.pipeline === undefined) body.pipeline = opts.expectedName;
    else if (body.pipeline !== opts.expectedName) {
      const at = locator.locate(['pipeline']);
      throw invalid([{ line: at?.line ?? null, column: at?.column ?? null, path: 'pipeline', message: `the file names pipeline "${String(body.pipeline)}" but it is applied as "${opts.expectedName}"` }]);
    }
  }
  const validate = getValidator();
  if (!validate(body)) {
    throw invalid(schemaProblems(validate.errors ?? [], body, locator));
  }
  const checker = new Checker(body as unknown as PipelineFile, locator);
  const def = checker.run();
  if (checker.problems.length > 0) throw invalid(checker.problems);
  return def;
}

function invalid(problems: PipelineProblem[]): FerryError {
  const first = problems[0];
  const head = first ? formatProblem(first) : 'invalid pipeline';
  const more = problems.length > 1 ? ` (and ${problems.length - 1} more)` : '';
  return new FerryError('INVALID_PIPELINE', head + more, { errors: problems });
}

export function formatProblem(p: PipelineProblem): string {
  const where = p.line !== null ? `line ${p.line}: ` : '';
  return `${where}${p.path ? `${p.path}: ` : ''}${p.message}`;
}

// ---- schema errors → problems -----------------------------------------------------

function pointerToPath(pointer: string): Array<string | number> {
  if (pointer === '') return [];
  return pointer.slice(1).split('/').map((s) => {
    const u = s.replace(/~1/g, '/').replace(/~0/g, '~');
    return /^\d+$/.test(u) ? Number(u) : u;
  });
}

export function displayPath(path: Array<string | number>): string {
  let s = '';
  for (const p of path) s += typeof p === 'number' ? `[${p}]` : s ? `.${p}` : p;
  return s;
}

function valueAt(root: unknown, path: Array<string | number>): unknown {
  let v: unknown = root;
  for (const p of path) {
    if (v === null || typeof v !== 'object') return undefined;
    v = (v as Record<string | number, unknown>)[p];
  }
  return v;
}

function got(v: unknown): string {
  if (v === undefined) return '';
  const s = JSON.stringify(v);
  return ` (got ${s && s.length > 60 ? `${s.slice(0, 57)}...` : s})`;
}

function schemaProblems(errors: ErrorObject[], root: unknown, locator: Locator): PipelineProblem[] {
  const out: PipelineProblem[] = [];
  const seen = new Set<string>();
  // if/then and anyOf wrappers repeat what their branches say; keep the precise ones
  // A union (anyOf) reports one error per branch. When the value is a mapping and some
  // branch expects a mapping, that branch's errors are the precise ones; otherwise the
  // union speaks once ("expected one of …", "expected a duration …").
  const unions = errors.filter((e) => e.keyword === 'anyOf');
  const drop = new Set<ErrorObject>();
  for (const u of unions) {
    const branches = errors.filter((e) => e !== u && e.schemaPath.startsWith(`${u.schemaPath}/`));
    const value = valueAt(root, pointerToPath(u.instancePath));
    const structural = branches.filter((e) => e.keyword !== 'type' && e.keyword !== 'const' && e.keyword !== 'pattern');
    if (value !== null && typeof value === 'object' && structural.length > 0) {
      drop.add(u);
      for (const b of branches) if (!structural.includes(b)) drop.add(b);
    } else {
      for (const b of branches) drop.add(b);
    }
  }
  const useful = errors.filter((e) => e.keyword !== 'if' && !drop.has(e));
  for (const e of useful) {
    const path = pointerToPath(e.instancePath);
    const value = valueAt(root, path);
    let message: string;
    let at = locator.locate(path);
    let shownPath = path;
    const isDuration = e.parentSchema && (e.parentSchema as { $comment?: string }).$comment === 'duration'
      || /Duration|duration/.test(String((e.parentSchema as { description?: string } | undefined)?.description ?? ''));
    switch (e.keyword) {
      case 'required': {
        const missing = (e.params as { missingProperty: string }).missingProperty;
        message = `missing required field "${missing}"${requiredBecause(value)}`;
        shownPath = [...path, missing];
        break;
      }
      case 'additionalProperties': {
        const extra = (e.params as { additionalProperty: string }).additionalProperty;
        message = `unknown field "${extra}"`;
        shownPath = [...path, extra];
        at = locator.locateKey(path, extra);
        break;
      }
      case 'enum':
        message = `expected one of ${((e.params as { allowedValues: unknown[] }).allowedValues).map((v) => JSON.stringify(v)).join(', ')}${got(value)}`;
        break;
      case 'const':
        message = `expected ${JSON.stringify((e.params as { allowedValue: unknown }).allowedValue)}${got(value)}`;
        break;
      case 'pattern':
        if (isDuration) message = `expected a duration such as 500ms, 30s, 5m, 1h or 1d${got(value)}`;
        else if ((e.params as { pattern: string }).pattern.startsWith('^[a-z0-9]')) message = `expected a name matching [a-z0-9][a-z0-9-_]*${got(value)}`;
        else message = `expected text matching ${(e.params as { pattern: string }).pattern}${got(value)}`;
        break;
      case 'anyOf':
        message = isDuration ? `expected a duration such as 500ms, 30s, 5m, 1h or 1d${got(value)}` : `expected ${describeUnion(e.schema)}${got(value)}`;
        break;
      case 'type':
        message = `expected ${article((e.params as { type: string }).type)}${got(value)}`;
        break;
      case 'format':
        message = `expected ${(e.params as { format: string }).format === 'date-time' ? 'a time in ISO 8601 (2026-12-01T02:00:00Z)' : `a ${(e.params as { format: string }).format}`}${got(value)}`;
        break;
      case 'minItems':
        message = `expected at least ${(e.params as { limit: number }).limit} item(s)`;
        break;
      case 'maxItems':
        message = `expected at most ${(e.params as { limit: number }).limit} items`;
        break;
      case 'minProperties': case 'maxProperties':
        message = shownPath[shownPath.length - 1] === 'strategy' ? 'expected exactly one of rolling, canary, blueGreen' : (e.message ?? 'invalid');
        break;
      case 'minimum': case 'maximum': case 'exclusiveMinimum': case 'exclusiveMaximum':
        message = `expected a number ${e.message ?? ''}${got(value)}`;
        break;
      default:
        message = `${e.message ?? 'invalid'}${got(value)}`;
    }
    // a failing duration pattern also fails its integer branch: say it once
    const key = `${displayPath(shownPath)}|${message.replace(/ \(got.*$/, '')}`;
    if (seen.has(key)) continue;
    if (e.keyword === 'type' && seen.has(`${displayPath(shownPath)}|duration`)) continue;
    seen.add(key);
    if (message.startsWith('expected a duration')) seen.add(`${displayPath(shownPath)}|duration`);
    out.push({ line: at?.line ?? null, column: at?.column ?? null, path: displayPath(shownPath), message });
  }
  // drop "expected integer" when the same field already says "expected a duration"
  return out.filter((p) => !(p.message.startsWith('expected an integer') && out.some((o) => o.path === p.path && o.message.startsWith('expected a duration'))))
    .sort((a, b) => (a.line ?? 0) - (b.line ?? 0));
}

function requiredBecause(v: unknown): string {
  if (v && typeof v === 'object' && 'type' in v) return ` (needed by type ${JSON.stringify((v as { type: unknown }).type)})`;
  return '';
}

function article(t: string): string {
  return ({ string: 'a string', number: 'a number', integer: 'an integer', boolean: 'true or false', object: 'a mapping', array: 'a list', null: 'null' } as Record<string, string>)[t] ?? t;
}

function describeUnion(schema: unknown): string {
  if (!Array.isArray(schema)) return 'another value';
  const parts = schema.map((s: { const?: unknown; type?: string }) => (s.const !== undefined ? JSON.stringify(s.const) : article(s.type ?? 'value')));
  return `one of ${parts.join(', ')}`;
}

// ---- checks beyond the schema, and normalisation ------------------------------------

const TYPE_FIELDS: Record<string, string[]> = {
  shell: ['script', 'shell'],
  http: ['url', 'method', 'headers', 'body', 'expectStatus', 'expectBody'],
  approval: ['approvers'],
  wait: ['duration'],
  verify: ['source', 'metrics', 'sensitivity', 'duration', 'interval', 'failOnNoData'],
  noop: ['sleep', 'lines', 'fail'],
};
const ALL_TYPE_FIELDS = new Set(Object.values(TYPE_FIELDS).flat());
const DELEGATE_FIELDS = ['delegateSelectors', 'secrets', 'env', 'queueTimeout'];
const RESERVED_VERIFY_STEP = 'verify';

class Checker {
  readonly problems: PipelineProblem[] = [];
  private variables: Record<string, VariableDefinition> = {};
  private allStepIds = new Set<string>();

  constructor(private readonly file: PipelineFile, private readonly loc: Locator) {}

  private problem(path: Array<string | number>, message: string, keyAt?: string): void {
    const at = keyAt ? this.loc.locateKey(path, keyAt) : this.loc.locate(path);
    this.problems.push({ line: at?.line ?? null, column: at?.column ?? null, path: displayPath(keyAt ? [...path, keyAt] : path), message });
  }

  private ms(path: Array<string | number>, v: unknown): number | null {
    if (v === undefined) return null;
    const d = parseDuration(v);
    if (d === undefined) { this.problem(path, `expected a duration such as 500ms, 30s, 5m, 1h or 1d${got(v)}`); return null; }
    return d;
  }

  run(): PipelineDefinition {
    const f = this.file;
    for (const [name, v] of Object.entries(f.variables ?? {})) this.variables[name] = this.variable(['variables', name], v);
    const environments: Record<string, EnvironmentDefinition> = {};
    for (const [name, e] of Object.entries(f.environments ?? {})) {
      environments[name] = {
        type: e.type ?? 'preproduction', concurrency: e.concurrency ?? 1, deployLatestOnly: e.deployLatestOnly ?? false,
        healthSource: e.healthSource ? { type: 'prometheus', url: e.healthSource.url, bearerTokenSecret: e.healthSource.bearerTokenSecret ?? null } : null,
      };
    }
    // step ids anywhere, for out.STEP.KEY references
    for (const s of f.stages) for (const list of [s.steps, s.rollbackSteps, s.swapSteps]) {
      for (const n of list ?? []) for (const st of 'parallel' in n ? n.parallel : [n]) this.allStepIds.add(st.id);
    }
    const stageIds = new Set<string>();
    const stages: StageDefinition[] = [];
    f.stages.forEach((s, i) => {
      const path = ['stages', i];
      if (stageIds.has(s.id)) this.problem([...path, 'id'], `duplicate stage id "${s.id}"`);
      stageIds.add(s.id);
      const st = this.stage(path, s, environments);
      if (st) stages.push(st);
    });
    return {
      pipeline: f.pipeline,
      description: f.description ?? null,
      variables: this.variables,
      environments,
      stages,
    };
  }

  private variable(path: Array<string | number>, v: NonNullable<PipelineFile['variables']>[string]): VariableDefinition {
    if (typeof v !== 'object') {
      return { type: typeof v === 'number' ? 'number' : typeof v === 'boolean' ? 'boolean' : 'string', default: v, required: false, description: null, allowed: null };
    }
    const type = v.type ?? (typeof v.default === 'number' ? 'number' : typeof v.default === 'boolean' ? 'boolean' : 'string');
    const check = (x: Scalar, p: Array<string | number>) => {
      if (typeof x !== type) this.problem(p, `expected ${article(type)} (the variable's type)${got(x)}`);
    };
    if (v.default !== undefined) check(v.default, [...path, 'default']);
    (v.allowed ?? []).forEach((x, j) => check(x, [...path, 'allowed', j]));
    if (v.default !== undefined && v.allowed && !v.allowed.includes(v.default)) this.problem([...path, 'default'], 'the default is not one of the allowed values');
    return { type, default: v.default ?? null, required: v.required ?? false, description: v.description ?? null, allowed: v.allowed ?? null };
  }

  private when(path: Array<string | number>, src: string | undefined, visibleSteps: Set<string> | null): string | null {
    if (src === undefined) return null;
    try {
      const e = parseExpression(src);
      for (const r of expressionRefs(e)) {
        if (r.kind === 'var' && !(r.name in this.variables)) this.problem(path, `unknown variable "var.${r.name}" at column ${r.pos + 1}: declare it under variables`);
        if (r.kind === 'out' && !this.allStepIds.has(r.step)) this.problem(path, `unknown step "${r.step}" in out.${r.stage ? `${r.stage}.` : ''}${r.step}.${r.key} at column ${r.pos + 1}`);
        if (r.kind === 'out' && r.stage !== null && !this.file.stages.some((s) => s.id === r.stage)) this.problem(path, `unknown stage "${r.stage}" at column ${r.pos + 1}`);
        void visibleSteps;
      }
    } catch (err) {
      if (err instanceof ExpressionError) this.problem(path, `invalid expression: ${err.message}`);
      else throw err;
    }
    return src;
  }

  private strategies(path: Array<string | number>, list: FailureStrategyFile[] | undefined): FailureStrategy[] {
    return (list ?? []).map((s, i): FailureStrategy => {
      const p = [...path, i, 'action'];
      const a = s.action;
      const allowed: Record<string, string[]> = {
        retry: ['count', 'interval', 'intervals'],
        manualIntervention: ['timeout', 'onTimeout'],
      };
      for (const k of ['count', 'interval', 'intervals', 'timeout', 'onTimeout'] as const) {
        if (a[k] !== undefined && !(allowed[a.type] ?? []).includes(k)) this.problem(p, `"${k}" does not apply to action ${a.type}`, k);
      }
      if (a.interval !== undefined && a.intervals !== undefined) this.problem(p, 'give interval or intervals, not both', 'intervals');
      let intervalsMs = [0];
      if (a.intervals) intervalsMs = a.intervals.map((d, j) => this.ms([...p, 'intervals', j], d) ?? 0);
      else if (a.interval !== undefined) intervalsMs = [this.ms([...p, 'interval'], a.interval) ?? 0];
      return {
        on: s.on,
        action: a.type,
        count: a.type === 'retry' ? a.count ?? 1 : 0,
        intervalsMs,
        timeoutMs: a.type === 'manualIntervention' ? this.ms([...p, 'timeout'], a.timeout) : null,
        onTimeout: a.onTimeout ?? null,
      };
    });
  }

  private approvers(a: ApproversFile | undefined): Approvers {
    return { minimumCount: a?.minimumCount ?? 1, disallowExecutor: a?.disallowExecutor ?? false, users: a?.users ?? null };
  }

  /** `fallback`: the stage environment's healthSource, used when the block names no source. */
  private verify(path: Array<string | number>, v: VerifyFile, fallback: HealthSource | null): VerifyConfig {
    if (!v.source && !fallback) {
      this.problem(path, 'missing required field "source": give the verification a source, or its stage\'s environment a healthSource');
    }
    const secret = v.source?.bearerTokenSecret;
    if (secret !== undefined && !/^[A-Za-z_][A-Za-z0-9_]*$/.test(secret)) this.problem([...path, 'source', 'bearerTokenSecret'], `expected a secret name${got(secret)}`);
    const names = new Set<string>();
    v.metrics.forEach((m, i) => {
      if (names.has(m.name)) this.problem([...path, 'metrics', i, 'name'], `duplicate metric "${m.name}"`);
      names.add(m.name);
    });
    const intervalMs = this.ms([...path, 'interval'], v.interval) ?? 15_000;
    if (intervalMs < 1) this.problem([...path, 'interval'], 'expected a duration above 0');
    return {
      source: v.source
        ? { type: 'prometheus', url: v.source.url, bearerTokenSecret: v.source.bearerTokenSecret ?? null }
        : fallback ?? { type: 'prometheus', url: '', bearerTokenSecret: null },
      metrics: v.metrics.map((m) => ({
        name: m.name, query: m.query, direction: m.direction ?? 'increase', critical: m.critical ?? false,
        allowedIncrease: m.allowedIncrease ?? null, allowedDecrease: m.allowedDecrease ?? null, weight: m.weight ?? 1,
      })),
      sensitivity: v.sensitivity ?? 'medium',
      durationMs: this.ms([...path, 'duration'], v.duration) ?? 300_000,
      intervalMs: Math.max(1, intervalMs),
      failOnNoData: v.failOnNoData ?? false,
    };
  }

  private stage(path: Array<string | number>, s: StageFile, environments: Record<string, EnvironmentDefinition>): StageDefinition | null {
    const has = (k: keyof StageFile) => s[k] !== undefined;
    const notFor = (keys: Array<keyof StageFile>, what: string) => {
      for (const k of keys) if (has(k)) this.problem(path, `"${String(k)}" does not apply to ${what}`, String(k));
    };
    let deploy: StageDefinition['deploy'] = null;
    let strategy: DeployStrategy = { type: 'rolling' };
    if (s.type === 'deploy') {
      const env = s.environment!;
      if (!environments[env]) environments[env] = { type: 'preproduction', concurrency: 1, deployLatestOnly: false };
      deploy = {
        service: s.service!, environment: env, infrastructure: s.infrastructure!,
        environmentType: environments[env].type, rollbackScope: s.rollbackScope ?? 'pipeline',
      };
      if (s.strategy?.canary) {
        const phases: CanaryPhase[] = [];
        let last = 0;
        s.strategy.canary.phases.forEach((ph, j) => {
          const pp = [...path, 'strategy', 'canary', 'phases', j];
          if (ph.weight < last) this.problem([...pp, 'weight'], `weights must not decrease (${ph.weight} after ${last})`);
          last = ph.weight;
          if (ph.pause && j === s.strategy!.canary!.phases.length - 1) this.problem([...pp, 'pause'], 'the last phase cannot pause: nothing follows it');
          phases.push({
            weight: ph.weight,
            verify: ph.verify ? this.verify([...pp, 'verify'], ph.verify, environments[env]!.healthSource ?? null) : null,
            pause: ph.pause ? { durationMs: this.ms([...pp, 'pause', 'duration'], ph.pause.duration) } : null,
          });
        });
        strategy = { type: 'canary', phases };
      } else if (s.strategy?.blueGreen) {
        const bgVerify = s.strategy.blueGreen.verify;
        strategy = { type: 'blueGreen', verify: bgVerify ? this.verify([...path, 'strategy', 'blueGreen', 'verify'], bgVerify, environments[env]!.healthSource ?? null) : null };
        if (!s.swapSteps || s.swapSteps.length === 0) this.problem(path, 'a blueGreen stage needs swapSteps that move traffic to the new colour', 'swapSteps');
      }
      if (strategy.type !== 'blueGreen' && has('swapSteps')) this.problem(path, '"swapSteps" applies to blueGreen stages only', 'swapSteps');
      notFor(['approvers', 'timeout'], 'deploy stages');
    } else {
      notFor(['service', 'environment', 'infrastructure', 'rollbackScope', 'strategy', 'swapSteps'], `${s.type} stages`);
      if (s.type === 'approval') notFor(['steps', 'rollbackSteps', 'failureStrategies', 'delegateSelectors', 'queueTimeout'], 'approval stages');
      else notFor(['approvers', 'timeout'], 'custom stages');
    }
    const envSource = deploy ? environments[deploy.environment]?.healthSource ?? null : null;
    const reserved = strategy.type === 'canary' && strategy.phases.some((p) => p.verify) || strategy.type === 'blueGreen' && strategy.verify;
    const ids = new Set<string>();
    const list = (key: 'steps' | 'rollbackSteps' | 'swapSteps'): StepNode[] => {
      const seenHere = new Set<string>();
      return (s[key] ?? []).map((n, i) => this.node([...path, key, i], n, seenHere, key === 'steps' ? ids : null, envSource));
    };
    const steps = list('steps');
    const rollbackSteps = list('rollbackSteps');
    const swapSteps = list('swapSteps');
    if (reserved && ids.has(RESERVED_VERIFY_STEP)) this.problem([...path, 'steps'], `step id "${RESERVED_VERIFY_STEP}" is reserved for the stage's verification in a ${strategy.type} stage`);
    let scheduleAt: number | null = null;
    if (s.schedule) {
      scheduleAt = Date.parse(s.schedule.at);
      if (!Number.isFinite(scheduleAt)) { this.problem([...path, 'schedule', 'at'], `expected a time in ISO 8601${got(s.schedule.at)}`); scheduleAt = null; }
    }
    return {
      id: s.id,
      name: s.name ?? null,
      type: s.type,
      when: this.when([...path, 'when'], s.when, null),
      scheduleAt,
      delegateSelectors: s.delegateSelectors ?? [],
      failureStrategies: this.strategies([...path, 'failureStrategies'], s.failureStrategies),
      queueTimeoutMs: this.ms([...path, 'queueTimeout'], s.queueTimeout),
      deploy,
      strategy,
      steps,
      rollbackSteps,
      swapSteps,
      approvers: s.type === 'approval' ? this.approvers(s.approvers) : null,
      timeoutMs: s.type === 'approval' ? this.ms([...path, 'timeout'], s.timeout) : null,
    };
  }

  private node(path: Array<string | number>, n: StepFile | ParallelFile, seen: Set<string>, collect: Set<string> | null, envSource: HealthSource | null): StepNode {
    if ('parallel' in n) {
      return { parallel: true, steps: n.parallel.map((st, j) => this.step([...path, 'parallel', j], st, seen, collect, true, envSource)) };
    }
    return { parallel: false, steps: [this.step(path, n, seen, collect, false, envSource)] };
  }

  private step(path: Array<string | number>, s: StepFile, seen: Set<string>, collect: Set<string> | null, inParallel: boolean, envSource: HealthSource | null): StepDefinition {
    if (seen.has(s.id)) this.problem([...path, 'id'], `duplicate step id "${s.id}" in this list`);
    seen.add(s.id);
    collect?.add(s.id);
    for (const k of Object.keys(s)) {
      if (ALL_TYPE_FIELDS.has(k) && !(TYPE_FIELDS[s.type] ?? []).includes(k)) this.problem(path, `"${k}" does not apply to ${s.type} steps`, k);
    }
    const serverSide = s.type === 'approval' || s.type === 'wait';
    if (serverSide) {
      for (const k of DELEGATE_FIELDS) if (k in s) this.problem(path, `"${k}" does not apply to ${s.type} steps (they do not run on a delegate)`, k);
      if (s.type === 'approval' && inParallel) this.problem(path, 'an approval step cannot run in a parallel group');
    }
    for (const [i, name] of (s.secrets ?? []).entries()) {
      if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) this.problem([...path, 'secrets', i], `expected a secret name usable as an environment variable${got(name)}`);
    }
    for (const k of Object.keys(s.env ?? {})) {
      if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) this.problem([...path, 'env'], `expected environment variable names${got(k)}`);
      if (k.startsWith('FERRY_')) this.problem([...path, 'env'], `"${k}": FERRY_* variables are set by Ferry`);
    }
    const def: StepDefinition = {
      id: s.id,
      name: s.name ?? null,
      type: s.type,
      when: this.when([...path, 'when'], s.when, null),
      timeoutMs: this.ms([...path, 'timeout'], s.timeout),
      queueTimeoutMs: this.ms([...path, 'queueTimeout'], s.queueTimeout),
      continueOnError: s.continueOnError ?? false,
      alwaysRun: s.alwaysRun ?? false,
      failureStrategies: this.strategies([...path, 'failureStrategies'], s.failureStrategies),
      delegateSelectors: s.delegateSelectors ?? [],
      secrets: s.secrets ?? [],
      env: s.env ?? {},
    };
    if (def.timeoutMs === 0) this.problem([...path, 'timeout'], 'expected a duration above 0');
    switch (s.type) {
      case 'shell': def.shell = { script: s.script!, shell: s.shell ?? null }; break;
      case 'http':
        def.http = {
          url: s.url!, method: (s.method ?? 'GET').toUpperCase(), headers: s.headers ?? {}, body: s.body ?? null,
          expectStatus: s.expectStatus ?? null, expectBody: s.expectBody ?? null,
        };
        if (s.expectBody !== undefined) {
          try { new RegExp(s.expectBody); } catch { this.problem([...path, 'expectBody'], 'expected a regular expression'); }
        }
        break;
      case 'approval': def.approval = this.approvers(s.approvers); break;
      case 'wait': def.wait = { durationMs: this.ms([...path, 'duration'], s.duration) ?? 0 }; break;
      case 'verify':
        def.verify = this.verify(path, {
          source: s.source, metrics: s.metrics!, sensitivity: s.sensitivity, duration: s.duration,
          interval: s.interval, failOnNoData: s.failOnNoData,
        } as VerifyFile, envSource);
        break;
      case 'noop': def.noop = { sleepMs: this.ms([...path, 'sleep'], s.sleep) ?? 0, lines: s.lines ?? 0, fail: s.fail ?? false }; break;
    }
    return def;
  }
}

/** Every infrastructure mapping a definition deploys to. */
export function definitionMappings(def: PipelineDefinition): Array<{ service: string; environment: string; infrastructure: string; environmentType: string }> {
  const out = new Map<string, { service: string; environment: string; infrastructure: string; environmentType: string }>();
  for (const s of def.stages) {
    if (s.deploy) out.set(`${s.deploy.service}/${s.deploy.environment}/${s.deploy.infrastructure}`, {
      service: s.deploy.service, environment: s.deploy.environment, infrastructure: s.deploy.infrastructure, environmentType: s.deploy.environmentType,
    });
  }
  return [...out.values()];
}

