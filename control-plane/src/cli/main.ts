/**
 * The `ferry` CLI: `ferry server` runs the control plane; every other command is a thin
 * client of the HTTP API. Exit 0 on success, 1 on a failed operation, 2 on usage errors;
 * errors print one line `error: <code>: <message>` on stderr.
 */
import { Command, CommanderError } from 'commander';
import { CliError } from './client.js';
import { UsageError } from './context.js';
import { registerAccountCommands } from './commands/accounts.js';
import { registerPipelineCommands } from './commands/pipelines.js';
import { registerExecutionCommands } from './commands/executions.js';
import { registerRingCommands } from './commands/rings.js';

export function buildProgram(): Command {
  const program = new Command('ferry')
    .description('Ferry: deployments through delegates in your own network')
    .option('--url <url>', 'control plane URL (FERRY_URL)')
    .option('--token <token>', 'API token (FERRY_TOKEN; default $FERRY_DATA_DIR/admin-token)')
    .showHelpAfterError()
    .exitOverride();
  program.command('server').description('run the control plane').action(async () => {
    const { runServerCommand } = await import('../server.js');
    await runServerCommand();
  });
  registerAccountCommands(program);
  registerPipelineCommands(program);
  registerExecutionCommands(program);
  registerRingCommands(program);
  for (const c of program.commands) applyExitOverride(c);
  return program;
}

function applyExitOverride(c: Command): void {
  c.exitOverride();
  for (const s of c.commands) applyExitOverride(s);
}

export async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.help' || err.code === 'commander.version') process.exit(0);
      process.exit(2);
    }
    if (err instanceof UsageError) {
      process.stderr.write(`error: USAGE: ${err.message}\n`);
      process.exit(2);
    }
    if (err instanceof CliError) {
      process.stderr.write(`error: ${err.code}: ${err.message}\n`);
      if (err.details && typeof err.details === 'object' && process.env.FERRY_CLI_DETAILS !== '0') {
        const d = err.details as { errors?: Array<{ line?: number; path?: string; message?: string }> };
        for (const e of d.errors ?? []) {
          if (e && typeof e === 'object' && 'message' in e) process.stderr.write(`  ${e.line ? `line ${e.line}: ` : ''}${e.path ? `${e.path}: ` : ''}${e.message}\n`);
        }
      }
      process.exit(err.exitCode);
    }
    process.stderr.write(`error: INTERNAL: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  }
}
