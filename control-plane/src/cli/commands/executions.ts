import type { Command } from 'commander';
import { clientOf, collect, pairs, UsageError } from '../context.js';
import { print, printJson, table } from '../output.js';
import { CliError, errorFrom, q, type Client } from '../client.js';

// The shapes of CONTRACT §6 this file reads (the server sends more).
interface StepDoc {
  id: string; type: string; status: string; attempt: number | null; try: number | null; phase: number | null;
  queuedAt: string | null; startedAt: string | null; finishedAt: string | null; exitCode: number | null; delegate: string | null;
  queue: { reason: string; position: number | null } | null; error: { kind: string; message: string } | null;
  rollback?: boolean; retryAt?: string | null; weight?: number | null;
  approvals?: Array<{ by: string; decision: string; comment: string | null; at: string | null; deferUntil: string | null }>;
  approval?: { minimumCount: number; deferUntil: string | null; timeoutAt: string | null };
  intervention?: { since: string | null; timeoutAt: string | null; onTimeout: string | null } | null;
  interventions?: Array<{ by: string; action: string; at: string | null }>;
  verification?: { verdict?: string; score?: number } | null;
}
interface AttemptDoc {
  attempt: number; status: string | null; operationStatus: string | null; startedAt: string | null; finishedAt: string | null;
  history?: Array<{ status: string; operationStatus: string; at: string | null; reason: string }>;
}

/** Pairs that wait for something outside the stage: the tree says what. */
const WAITING = ['Queued', 'QueuedForPipeline', 'Scheduled', 'Deferred', 'ManualInterventionPending'];
interface StageDoc {
  id: string; type: string; status: string; rollingBack: boolean; rolledBack: boolean; rollbackArtifact: string | null;
  failure: { kind: string; message: string; step: string | null } | null; paused: { phase: number; until: string | null } | null;
  service?: string; environment?: string; infrastructure?: string; liveColor?: string | null;
  attempts: AttemptDoc[]; steps: StepDoc[];
}
export interface ExecutionDoc {
  id: string; pipeline: string; pipelineVersion: number; status: string; artifact: string | null; inputs: Record<string, unknown>;
  createdAt: string; finishedAt: string | null; createdBy?: string; resumedFrom: { stage: string; at: string; by: string } | null;
  supersededBy?: string | null; abortedBy?: string | null; stages: StageDoc[];
}

const OK = ['Succeeded', 'PartiallySucceeded'];
const TERMINAL = ['Succeeded', 'PartiallySucceeded', 'Failed', 'Aborted', 'Expired', 'Rejected', 'Superseded'];

const pair = (a: AttemptDoc | undefined): string => (a ? `<${a.status}, ${a.operationStatus}>` : '');

function stepDetail(s: StepDoc): string {
  const parts: string[] = [];
  if (s.try && s.try > 1) parts.push(`try ${s.try}`);
  if (s.delegate) parts.push(`on ${s.delegate}`);
  if (s.exitCode !== null && s.exitCode !== undefined) parts.push(`exit ${s.exitCode}`);
  if (s.queue) parts.push(`queued: ${s.queue.reason}${s.queue.position ? ` (#${s.queue.position})` : ''}`);
  if (s.retryAt) parts.push(`retry at ${s.retryAt}`);
  for (const a of s.approvals ?? []) parts.push(`${a.decision} by ${a.by}${a.comment ? ` ("${a.comment}")` : ''}${a.deferUntil ? `, deferred until ${a.deferUntil}` : ''}`);
  if (s.status === 'Running' && s.type === 'approval' && s.approval) {
    const got = (s.approvals ?? []).filter((a) => a.decision === 'approved').length;
    parts.push(`waits for approval (${got}/${s.approval.minimumCount})${s.approval.timeoutAt ? `, expires ${s.approval.timeoutAt}` : ''}`);
  }
  if (s.intervention) parts.push(`waits for ferry intervene${s.intervention.timeoutAt ? ` until ${s.intervention.timeoutAt} (then ${s.intervention.onTimeout ?? 'fail'})` : ''}`);
  for (const i of s.interventions ?? []) parts.push(`${i.action} by ${i.by}`);
  if (s.verification?.verdict) parts.push(`verification ${s.verification.verdict}${s.verification.score !== undefined ? ` (score ${s.verification.score})` : ''}`);
  if (s.error) parts.push(`${s.error.kind}: ${s.error.message}`);
  return parts.join('; ');
}

/** `ferry execution ID`: the status tree of §6 with attempt pairs, queue reasons and approvers. */
export function renderTree(d: ExecutionDoc): string {
  const out: string[] = [];
  out.push(`execution ${d.id}  ${d.pipeline} (pipeline version ${d.pipelineVersion})  ${d.status}`);
  out.push(`  artifact ${d.artifact ?? '-'}, started ${d.createdAt}${d.createdBy ? ` by ${d.createdBy}` : ''}${d.finishedAt ? `, ended ${d.finishedAt}` : ''}`);
  const inputs = Object.entries(d.inputs ?? {});
  if (inputs.length) out.push(`  inputs ${inputs.map(([k, v]) => `${k}=${String(v)}`).join(' ')}`);
  if (d.resumedFrom) out.push(`  resumed from ${d.resumedFrom.stage} by ${d.resumedFrom.by} at ${d.resumedFrom.at}`);
  if (d.supersededBy) out.push(`  superseded by ${d.supersededBy}`);
  if (d.abortedBy) out.push(`  aborted by ${d.abortedBy}`);
  const w = Math.max(...d.stages.map((s) => s.id.length), 5);
  const sw = Math.max(...d.stages.flatMap((s) => s.steps.map((x) => x.id.length + (x.phase !== null ? 4 : 0))), 4);
  for (const s of d.stages) {
    const a = s.attempts[s.attempts.length - 1];
    const flags: string[] = [];
    if (s.service) flags.push(`${s.service}/${s.environment}/${s.infrastructure}`);
    if (a && s.status !== 'NotStarted' && s.status !== 'Skipped') {
      const why = a.operationStatus && WAITING.includes(a.operationStatus) ? a.history?.[a.history.length - 1]?.reason : undefined;
      flags.push(`attempt ${a.attempt} ${pair(a)}${why ? ` (${why})` : ''}`);
    }
    if (s.rollingBack) flags.push('rolling back');
    if (s.rolledBack) flags.push(`rolled back to ${s.rollbackArtifact ?? '(no earlier successful deployment)'}`);
    if (s.paused) flags.push(`phase ${s.paused.phase} paused${s.paused.until ? ` until ${s.paused.until}` : ': ferry promote'}`);
    if (s.liveColor) flags.push(`live ${s.liveColor}`);
    out.push(`  ${s.id.padEnd(w)}  ${s.status.padEnd(18)} ${flags.join('  ')}`.trimEnd());
    if (s.failure && (s.status === 'Failed' || s.status === 'InProgress')) out.push(`  ${' '.repeat(w)}  ${s.failure.step ? `${s.failure.step}: ` : ''}${s.failure.kind}: ${s.failure.message}`);
    // with --history the steps of every attempt are listed: a line heads each attempt
    const spans = new Set(s.steps.map((x) => x.attempt).filter((x) => x !== null)).size > 1;
    let shownAttempt: number | null = null;
    for (const st of s.steps) {
      if (spans && st.attempt !== null && st.attempt !== shownAttempt) {
        shownAttempt = st.attempt;
        out.push(`    attempt ${st.attempt} ${pair(s.attempts.find((x) => x.attempt === st.attempt))}`);
      }
      const name = `${st.id}${st.phase !== null ? ` @${st.phase}` : ''}`;
      const detail = stepDetail(st);
      out.push(`    ${name.padEnd(sw)}  ${(st.status + (st.rollback ? ' (rollback)' : '')).padEnd(16)} ${detail}`.trimEnd());
    }
  }
  return `${out.join('\n')}\n`;
}

/** Reads a text/event-stream response, calling `on(event, data)` for each message. */
async function readEvents(res: Response, on: (event: string, data: unknown) => void): Promise<void> {
  if (!res.body) return;
  const reader = res.body.getReader();
  const dec = new TextDecoder();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += dec.decode(value, { stream: true });
    let i: number;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      let event = 'message';
      const data: string[] = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) event = line.slice(6).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).trimStart());
      }
      if (data.length) on(event, JSON.parse(data.join('\n')) as unknown);
    }
  }
}

interface LogEvent { stage: string; step: string; attempt: number; try: number; phase: number | null; stream: number; line: string }

/**
 * Streams an execution until it ends: log lines (prefixed with stage/step unless `raw`)
 * and, with `progress`, every stage and step status change. Reconnects when the stream
 * breaks, without printing a line twice. Returns the final document.
 */
async function followExecution(client: Client, id: string, o: { query: Record<string, string | number | undefined>; raw: boolean; progress: boolean; logsToStderr?: boolean; skipStages?: string[] }): Promise<ExecutionDoc> {
  const skip = new Set(o.skipStages ?? []);
  const logOut = o.logsToStderr ? process.stderr : process.stdout;
  const printedPerRun = new Map<string, number>();
  const lastStage = new Map<string, string>();
  const lastStep = new Map<string, string>();
  let final: ExecutionDoc | null = null;
  let last: ExecutionDoc | null = null;
  const progress = (d: ExecutionDoc) => {
    last = d;
    if (!o.progress) return;
    for (const s of d.stages) {
      if (skip.has(s.id)) continue;
      const a = s.attempts[s.attempts.length - 1];
      const k = `${s.status} ${s.status === 'NotStarted' ? '' : pair(a)}${s.rollingBack ? ' rolling back' : ''}`;
      if (lastStage.get(s.id) !== k) {
        if (lastStage.has(s.id) || s.status !== 'NotStarted') process.stdout.write(`== ${s.id}: ${k.trim()}\n`);
        lastStage.set(s.id, k);
      }
      for (const st of s.steps) {
        if (st.try === null) continue; // not run yet
        const key = `${s.id}/${st.id}/${st.attempt}/${st.try}/${st.phase}/${st.rollback ? 'r' : ''}`;
        const detail = stepDetail(st);
        const v = `${st.status}${detail ? ` (${detail})` : ''}`;
        if (lastStep.get(key) !== v) {
          lastStep.set(key, v);
          process.stdout.write(`   ${s.id}/${st.id}${st.phase !== null ? ` @${st.phase}` : ''}${st.rollback ? ' (rollback)' : ''}: ${v}\n`);
        }
      }
    }
  };
  for (let reconnects = 0; reconnects < 1000; reconnects++) {
    const perRun = new Map<string, number>();
    let ended = false;
    try {
      const res = await client.raw('GET', `/api/v1/executions/${encodeURIComponent(id)}/logs${q({ ...o.query, follow: 'true' })}`, undefined, undefined, { accept: 'text/event-stream' });
      if (!res.ok) throw errorFrom(res.status, await res.text());
      await readEvents(res, (event, data) => {
        if (event === 'log') {
          const l = data as LogEvent;
          if (skip.has(l.stage)) return;
          const run = `${l.stage}/${l.step}/${l.attempt}/${l.try}/${l.phase}`;
          const n = (perRun.get(run) ?? 0) + 1;
          perRun.set(run, n);
          if (n <= (printedPerRun.get(run) ?? 0)) return; // seen before a reconnect
          printedPerRun.set(run, n);
          logOut.write(o.raw ? `${l.line}\n` : `[${l.stage}/${l.step}${l.try > 1 ? `#${l.try}` : ''}${l.phase !== null ? `@${l.phase}` : ''}] ${l.line}\n`);
        } else if (event === 'execution') {
          progress(data as ExecutionDoc);
        } else if (event === 'end') {
          ended = true;
        }
      });
    } catch (err) {
      if (err instanceof CliError && err.code !== 'UNREACHABLE') throw err;
    }
    if (ended) {
      final = await client.get<ExecutionDoc>(`/api/v1/executions/${encodeURIComponent(id)}`);
      break;
    }
    // the stream broke (server restart): check, wait, reconnect
    const d = await client.get<ExecutionDoc>(`/api/v1/executions/${encodeURIComponent(id)}`).catch(() => null);
    if (d && TERMINAL.includes(d.status) && reconnects > 0) { final = d; break; }
    await new Promise((r) => setTimeout(r, Math.min(5000, 250 * (reconnects + 1))));
  }
  return final ?? last ?? client.get<ExecutionDoc>(`/api/v1/executions/${encodeURIComponent(id)}`);
}

function endWith(d: ExecutionDoc): void {
  if (!OK.includes(d.status)) throw new CliError('EXECUTION_FAILED', `execution ${d.id} ended ${d.status}`);
}

function parseTime(v: string | undefined, flag: string): string | undefined {
  if (v === undefined) return undefined;
  const t = Date.parse(v);
  if (!Number.isFinite(t)) throw new UsageError(`${flag} expects an ISO 8601 time, got ${JSON.stringify(v)}`);
  return new Date(t).toISOString();
}

function intOpt(v: string | undefined, flag: string, min: number): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v) || Number(v) < min) throw new UsageError(`${flag} expects a number >= ${min}`);
  return Number(v);
}

export function registerExecutionCommands(program: Command): void {
  program.command('run <pipeline>').description('run a pipeline (its latest version)')
    .option('--input <KEY=VALUE>', 'an input variable (repeatable)', collect, [])
    .option('--artifact <version>', 'the artifact to deploy (FERRY_ARTIFACT)')
    .option('--follow', 'stream progress and logs until it ends; exit 0 when it Succeeded or PartiallySucceeded')
    .option('--account <account>').option('--json', 'print the execution document')
    .action(async (pipeline: string, o: { input: string[]; artifact?: string; follow?: boolean; account?: string; json?: boolean }, cmd: Command) => {
      const client = clientOf(cmd);
      const body: Record<string, unknown> = { inputs: pairs(o.input, '--input') };
      if (o.artifact !== undefined) body.artifact = o.artifact;
      const doc = await client.post<ExecutionDoc>(`/api/v1/pipelines/${encodeURIComponent(pipeline)}/executions${q({ account: o.account })}`, body);
      if (!o.follow) {
        o.json ? printJson(doc) : print(`execution ${doc.id} of ${doc.pipeline} (pipeline version ${doc.pipelineVersion}): ${doc.status}`);
        return;
      }
      if (!o.json) print(`execution ${doc.id} of ${doc.pipeline} (pipeline version ${doc.pipelineVersion})${doc.artifact ? `, artifact ${doc.artifact}` : ''}`);
      const end = await followExecution(client, doc.id, { query: { account: o.account }, raw: false, progress: !o.json, logsToStderr: Boolean(o.json) });
      o.json ? printJson(end) : process.stdout.write(`\n${renderTree(end)}`);
      endWith(end);
    });

  program.command('executions').description('list executions, newest first')
    .option('--pipeline <pipeline>').option('--status <status>').option('--limit <n>')
    .option('--account <account>').option('--json', 'print JSON')
    .action(async (o: { pipeline?: string; status?: string; limit?: string; account?: string; json?: boolean }, cmd: Command) => {
      const limit = intOpt(o.limit, '--limit', 1);
      const r = await clientOf(cmd).get<Array<Record<string, unknown>>>(`/api/v1/executions${q({ pipeline: o.pipeline, status: o.status, limit, account: o.account })}`);
      if (o.json) {
        printJson(r.map((e) => ({ id: e.id, pipeline: e.pipeline, status: e.status, artifact: e.artifact, createdAt: e.createdAt, finishedAt: e.finishedAt, pipelineVersion: e.pipelineVersion, createdBy: e.createdBy })));
        return;
      }
      print(table(r, [['id', 'ID'], ['pipeline', 'PIPELINE'], ['pipelineVersion', 'V'], ['status', 'STATUS'], ['artifact', 'ARTIFACT'], ['createdAt', 'CREATED'], ['finishedAt', 'FINISHED']]));
    });

  program.command('execution <id>').description('the status tree of an execution: stages, attempt pairs, steps, queue reasons, approvers')
    .option('--history', 'the step runs of every attempt').option('--account <account>').option('--json', 'print the execution document')
    .action(async (id: string, o: { history?: boolean; account?: string; json?: boolean }, cmd: Command) => {
      const d = await clientOf(cmd).get<ExecutionDoc>(`/api/v1/executions/${encodeURIComponent(id)}${q({ history: o.history ? 'true' : undefined, account: o.account })}`);
      o.json ? printJson(d) : process.stdout.write(renderTree(d));
    });

  program.command('logs <id>').description("an execution's step logs (with --stage and --step: the step's exact output)")
    .option('--stage <stage>').option('--step <step>').option('--attempt <n>').option('--phase <n>')
    .option('--follow', 'stream until the execution ends; exit 0 when it Succeeded or PartiallySucceeded')
    .option('--account <account>')
    .action(async (id: string, o: { stage?: string; step?: string; attempt?: string; phase?: string; follow?: boolean; account?: string }, cmd: Command) => {
      if (o.step && !o.stage) throw new UsageError('--step needs --stage');
      const client = clientOf(cmd);
      const query = { stage: o.stage, step: o.step, attempt: intOpt(o.attempt, '--attempt', 1), phase: intOpt(o.phase, '--phase', 0), account: o.account };
      if (o.follow) {
        const end = await followExecution(client, id, { query, raw: Boolean(o.stage && o.step), progress: false });
        endWith(end);
        return;
      }
      const text = await client.get<string>(`/api/v1/executions/${encodeURIComponent(id)}/logs${q(query)}`);
      if (text) process.stdout.write(text);
    });

  const target = (c: Command) => c.option('--stage <stage>', 'the stage (when more than one waits)').option('--step <step>', 'the step (when more than one waits)');
  const done = (what: string) => (d: ExecutionDoc, json?: boolean) => (json ? printJson(d) : print(`${what}; execution ${d.id} is ${d.status}`));

  target(program.command('approve <id>').description('approve the waiting approval'))
    .option('--comment <text>').option('--defer-until <time>', 'approved, but the stage starts at this time (ISO 8601)')
    .option('--account <account>').option('--json', 'print the execution document')
    .action(async (id: string, o: { stage?: string; step?: string; comment?: string; deferUntil?: string; account?: string; json?: boolean }, cmd: Command) => {
      const body = { stage: o.stage, step: o.step, comment: o.comment, deferUntil: parseTime(o.deferUntil, '--defer-until') };
      done('approved')(await clientOf(cmd).post<ExecutionDoc>(`/api/v1/executions/${encodeURIComponent(id)}/approve${q({ account: o.account })}`, strip(body)), o.json);
    });
  target(program.command('reject <id>').description('reject the waiting approval'))
    .option('--comment <text>').option('--account <account>').option('--json', 'print the execution document')
    .action(async (id: string, o: { stage?: string; step?: string; comment?: string; account?: string; json?: boolean }, cmd: Command) => {
      done('rejected')(await clientOf(cmd).post<ExecutionDoc>(`/api/v1/executions/${encodeURIComponent(id)}/reject${q({ account: o.account })}`, strip({ stage: o.stage, step: o.step, comment: o.comment })), o.json);
    });
  target(program.command('intervene <id>').description('resolve a manual intervention: retry, ignore, abort or rollback (a stage rollback)'))
    .requiredOption('--action <action>', 'retry | ignore | abort | rollback')
    .option('--account <account>').option('--json', 'print the execution document')
    .action(async (id: string, o: { action: string; stage?: string; step?: string; account?: string; json?: boolean }, cmd: Command) => {
      if (!['retry', 'ignore', 'abort', 'rollback'].includes(o.action)) throw new UsageError('--action expects retry, ignore, abort or rollback');
      done(`intervened (${o.action})`)(await clientOf(cmd).post<ExecutionDoc>(`/api/v1/executions/${encodeURIComponent(id)}/intervene${q({ account: o.account })}`, strip({ action: o.action, stage: o.stage, step: o.step })), o.json);
    });
  program.command('promote <id>').description('a paused canary phase goes on to the next')
    .option('--stage <stage>').option('--account <account>').option('--json', 'print the execution document')
    .action(async (id: string, o: { stage?: string; account?: string; json?: boolean }, cmd: Command) => {
      done('promoted')(await clientOf(cmd).post<ExecutionDoc>(`/api/v1/executions/${encodeURIComponent(id)}/promote${q({ account: o.account })}`, strip({ stage: o.stage })), o.json);
    });
  program.command('abort <id>').description('abort: running steps are cancelled, alwaysRun steps still run, nothing is rolled back')
    .option('--account <account>').option('--json', 'print the execution document')
    .action(async (id: string, o: { account?: string; json?: boolean }, cmd: Command) => {
      done('abort requested')(await clientOf(cmd).post<ExecutionDoc>(`/api/v1/executions/${encodeURIComponent(id)}/abort${q({ account: o.account })}`, {}), o.json);
    });
  program.command('resume <id>').description('resume a Failed, Aborted, Expired or Rejected execution from a stage that ran')
    .requiredOption('--from-stage <stage>', 'the stage to start again from')
    .option('--follow', 'stream progress and logs until it ends')
    .option('--account <account>').option('--json', 'print the execution document')
    .action(async (id: string, o: { fromStage: string; follow?: boolean; account?: string; json?: boolean }, cmd: Command) => {
      const client = clientOf(cmd);
      const d = await client.post<ExecutionDoc>(`/api/v1/executions/${encodeURIComponent(id)}/resume${q({ account: o.account })}`, { fromStage: o.fromStage });
      if (!o.follow) { done(`resumed from ${o.fromStage}`)(d, o.json); return; }
      // the stages before the one resumed from keep their results: not shown again
      const from = d.stages.findIndex((s) => s.id === o.fromStage);
      const kept = from > 0 ? d.stages.slice(0, from).map((s) => s.id) : [];
      if (!o.json) print(`execution ${d.id} resumed from ${o.fromStage}${kept.length ? `; ${kept.join(', ')} keep their results` : ''}`);
      const end = await followExecution(client, id, { query: { account: o.account }, raw: false, progress: !o.json, logsToStderr: Boolean(o.json), skipStages: kept });
      o.json ? printJson(end) : process.stdout.write(`\n${renderTree(end)}`);
      endWith(end);
    });
}

function strip(o: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined));
}
