import fs from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { parse as parseYaml } from 'yaml';
import { clientOf, UsageError } from '../context.js';
import { print, printJson, table } from '../output.js';
import { q } from '../client.js';

interface PipelineSummary { name: string; version: number; updatedAt: string }
interface PipelineView extends PipelineSummary { definition: unknown; source: string; createdBy: string }

function readSource(file: string): string {
  try {
    return file === '-' ? fs.readFileSync(0, 'utf8') : fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new UsageError(`cannot read ${file}: ${(err as Error).message}`);
  }
}

/** The name the file gives itself (`pipeline:`), else the file's base name. */
function nameOf(source: string, file: string, flag?: string): string {
  if (flag) return flag;
  try {
    const v = parseYaml(source) as { pipeline?: unknown } | null;
    if (v && typeof v.pipeline === 'string' && v.pipeline) return v.pipeline;
  } catch {
    const m = /^pipeline:\s*["']?([a-z0-9][a-z0-9-_]*)/m.exec(source);
    if (m?.[1]) return m[1];
  }
  if (file === '-') throw new UsageError('the file names no pipeline: give --name');
  return path.basename(file).replace(/\.(ya?ml|json)$/i, '');
}

export function registerPipelineCommands(program: Command): void {
  const pipeline = program.command('pipeline').description('pipelines: apply, list, show');

  pipeline.command('apply').description('apply a pipeline file (YAML or JSON); every apply is a new version')
    .requiredOption('-f, --file <file>', 'the pipeline file (- for stdin)')
    .option('--name <name>', 'pipeline name (default: the file\'s `pipeline:`)')
    .option('--account <account>', 'account (admins of the default account only)')
    .option('--json', 'print JSON')
    .action(async (o: { file: string; name?: string; account?: string; json?: boolean }, cmd: Command) => {
      const source = readSource(o.file);
      const name = nameOf(source, o.file, o.name);
      const isJson = /\.json$/i.test(o.file) || /^\s*\{/.test(source);
      const r = await clientOf(cmd).put<PipelineSummary>(`/api/v1/pipelines/${encodeURIComponent(name)}${q({ account: o.account })}`, source, isJson ? 'application/json' : 'application/yaml');
      o.json ? printJson(r) : print(`pipeline ${r.name} version ${r.version} applied`);
    });

  pipeline.command('list').description('list pipelines (latest version of each)')
    .option('--account <account>').option('--json', 'print JSON')
    .action(async (o: { account?: string; json?: boolean }, cmd: Command) => {
      const r = await clientOf(cmd).get<PipelineSummary[]>(`/api/v1/pipelines${q({ account: o.account })}`);
      o.json ? printJson(r.map((p) => ({ name: p.name, version: p.version, updatedAt: p.updatedAt }))) : print(table(r as unknown as Array<Record<string, unknown>>, [['name', 'NAME'], ['version', 'VERSION'], ['updatedAt', 'UPDATED']]));
    });

  pipeline.command('show <name>').description('show a pipeline: its latest version (or --version N)')
    .option('--version <n>', 'a given version')
    .option('--account <account>').option('--json', 'print JSON')
    .action(async (name: string, o: { version?: string; account?: string; json?: boolean }, cmd: Command) => {
      if (o.version !== undefined && !/^\d+$/.test(o.version)) throw new UsageError('--version expects a number');
      const r = await clientOf(cmd).get<PipelineView>(`/api/v1/pipelines/${encodeURIComponent(name)}${q({ account: o.account, version: o.version })}`);
      if (o.json) {
        printJson({ name: r.name, version: r.version, definition: r.definition, updatedAt: r.updatedAt, createdBy: r.createdBy });
        return;
      }
      print(`# pipeline ${r.name}, version ${r.version}, applied ${r.updatedAt} by ${r.createdBy}`);
      print(r.source);
    });

  program.command('infrastructures').description('infrastructure mappings (service, environment, infrastructure) known from pipelines')
    .option('--account <account>').option('--json', 'print JSON')
    .action(async (o: { account?: string; json?: boolean }, cmd: Command) => {
      const r = await clientOf(cmd).get<Array<Record<string, unknown>>>(`/api/v1/infrastructures${q({ account: o.account })}`);
      o.json ? printJson(r) : print(table(r, [['service', 'SERVICE'], ['environment', 'ENVIRONMENT'], ['environmentType', 'TYPE'], ['infrastructure', 'INFRASTRUCTURE'], ['liveColor', 'LIVE']]));
    });
}
