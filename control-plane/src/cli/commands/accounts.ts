import type { Command } from 'commander';
import { clientOf, collect, pairs } from '../context.js';
import { print, printJson, table, ago } from '../output.js';
import { q } from '../client.js';

export function registerAccountCommands(program: Command): void {
  const account = program.command('account').description('accounts');
  account.command('create <name>').description('create an account').option('--ring <ring>', 'ring', 'ring0').option('--json', 'print JSON')
    .action(async (name: string, o: { ring: string; json?: boolean }, cmd: Command) => {
      const r = await clientOf(cmd).post('/api/v1/accounts', { name, ring: o.ring });
      o.json ? printJson(r) : print(`account ${name} created in ${o.ring}`);
    });
  account.command('list').description('list accounts').option('--json', 'print JSON')
    .action(async (o: { json?: boolean }, cmd: Command) => {
      const r = await clientOf(cmd).get<Array<{ name: string; ring: string }>>('/api/v1/accounts');
      o.json ? printJson(r) : print(table(r, [['name', 'NAME'], ['ring', 'RING']]));
    });
  account.command('set-ring <account> <ring>').description('move an account to a ring').option('--json', 'print JSON')
    .action(async (name: string, ring: string, o: { json?: boolean }, cmd: Command) => {
      const r = await clientOf(cmd).put(`/api/v1/accounts/${encodeURIComponent(name)}/ring`, { ring });
      o.json ? printJson(r) : print(`account ${name} is now in ${ring}`);
    });

  const token = program.command('token').description('API and delegate tokens');
  token.command('create').description('create a token (its secret is shown once)')
    .requiredOption('--kind <kind>', 'delegate | user')
    .option('--name <name>', 'name (the identity recorded for approvals)')
    .option('--role <role>', 'admin | deployer | viewer (user tokens)')
    .option('--scope <KEY=VALUE>', 'scope, e.g. service=loans-api or environmentType=preproduction (repeatable)', collect, [])
    .option('--account <account>', 'account (admins of the default account only)')
    .option('--json', 'print JSON')
    .action(async (o: { kind: string; name?: string; role?: string; scope: string[]; account?: string; json?: boolean }, cmd: Command) => {
      const scopes = pairs(o.scope, '--scope');
      const body: Record<string, unknown> = { kind: o.kind };
      if (o.name) body.name = o.name;
      if (o.role) body.role = o.role;
      if (Object.keys(scopes).length) body.scopes = scopes;
      if (o.account) body.account = o.account;
      const r = await clientOf(cmd).post<Record<string, unknown>>('/api/v1/tokens', body);
      if (o.json) {
        printJson({ id: r.id, kind: r.kind, name: r.name, account: r.account, role: r.role, scopes: r.scopes, token: r.token });
      } else {
        print(`${r.kind} token ${r.name} (${r.id}) for account ${r.account}${r.role ? `, role ${r.role}` : ''}\n${r.token}\n(the token is shown only now)`);
      }
    });
  token.command('list').description('list tokens').option('--account <account>').option('--json', 'print JSON')
    .action(async (o: { account?: string; json?: boolean }, cmd: Command) => {
      const r = await clientOf(cmd).get<Array<Record<string, unknown>>>(`/api/v1/tokens${q({ account: o.account })}`);
      o.json ? printJson(r) : print(table(r, [['id', 'ID'], ['kind', 'KIND'], ['name', 'NAME'], ['account', 'ACCOUNT'], ['role', 'ROLE'], ['revoked', 'REVOKED']]));
    });
  token.command('revoke <id>').description('revoke a token; its delegates are disconnected at once').option('--json', 'print JSON')
    .action(async (id: string, o: { json?: boolean }, cmd: Command) => {
      const r = await clientOf(cmd).delete(`/api/v1/tokens/${encodeURIComponent(id)}`);
      o.json ? printJson(r) : print(`token ${id} revoked`);
    });

  program.command('secret').description('secrets').command('set <name>').description('set a secret; the value is read from stdin')
    .option('--account <account>').option('--json', 'print JSON')
    .action(async (name: string, o: { account?: string; json?: boolean }, cmd: Command) => {
      const chunks: Buffer[] = [];
      for await (const c of process.stdin) chunks.push(c as Buffer);
      const value = Buffer.concat(chunks).toString('utf8').replace(/\r?\n$/, '');
      const r = await clientOf(cmd).put(`/api/v1/secrets/${encodeURIComponent(name)}${q({ account: o.account })}`, { value });
      o.json ? printJson(r) : print(`secret ${name} set`);
    });

  program.command('delegates').description('list delegates').option('--json', 'print JSON').option('--watch', 'refresh every 2s').option('--account <account>')
    .action(async (o: { json?: boolean; watch?: boolean; account?: string }, cmd: Command) => {
      const c = clientOf(cmd);
      const show = async () => {
        const r = await c.get<Array<Record<string, unknown>>>(`/api/v1/delegates${q({ account: o.account })}`);
        if (o.json) return printJson(r);
        const rows = r.map((d) => ({ ...d, state: d.connected ? 'connected' : 'disconnected', seen: ago(d.lastSeenAt as string), load: `${d.running}/${d.capacity}`, up: d.upgrade ? `${(d.upgrade as { version: string }).version} ${(d.upgrade as { state: string }).state}` : '' }));
        print(table(rows, [['name', 'NAME'], ['id', 'ID'], ['account', 'ACCOUNT'], ['version', 'VERSION'], ['ring', 'RING'], ['state', 'STATE'], ['load', 'RUNNING'], ['tags', 'TAGS'], ['seen', 'LAST SEEN'], ['up', 'UPGRADE']]));
      };
      if (!o.watch) return show();
      for (;;) {
        if (!o.json) process.stdout.write('\x1b[2J\x1b[H');
        await show();
        await new Promise((r) => setTimeout(r, 2000));
      }
    });
}
