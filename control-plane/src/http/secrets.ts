import type { FastifyPluginAsync } from 'fastify';
import { FerryError } from '@ferry/shared';
import { principal, type PluginOpts } from './app.js';
import { requireRole } from './auth.js';
import { listSecretNames, setSecret } from '../store/secrets.js';
import { actingAccount, NameSchema } from './common.js';

const SECRET_NAME = { type: 'string', pattern: '^[A-Za-z_][A-Za-z0-9_]*$', maxLength: 100 } as const;

export const secretRoutes: FastifyPluginAsync<PluginOpts> = async (app, { ctx }) => {
  app.put<{ Params: { name: string }; Body: { value: string } | string; Querystring: { account?: string } }>('/secrets/:name', {
    schema: {
      summary: 'Set a secret (the value is never returned)',
      params: { type: 'object', properties: { name: SECRET_NAME }, required: ['name'] },
      querystring: { type: 'object', properties: { account: NameSchema } },
      response: { 200: { type: 'object', properties: { name: { type: 'string' }, account: { type: 'string' }, updatedAt: { type: 'string' } } } },
    },
  }, async (req) => {
    const p = principal(req);
    requireRole(p, 'admin');
    const acc = await actingAccount(ctx, p, req.query.account);
    const body = req.body as unknown;
    const value = typeof body === 'string' ? body : (body as { value?: unknown } | null)?.value;
    if (typeof value !== 'string' || value.length === 0) throw new FerryError('VALIDATION_FAILED', 'body must be {"value": "…"} or text/plain with the value', { field: 'value' });
    if (value.length > 64 * 1024) throw new FerryError('PAYLOAD_TOO_LARGE', 'a secret is at most 64 KiB');
    const now = ctx.clock.now();
    await setSecret(ctx.store.db, ctx.secretBox, acc.id, req.params.name, value, now);
    return { name: req.params.name, account: acc.name, updatedAt: new Date(now).toISOString() };
  });

  app.get<{ Querystring: { account?: string } }>('/secrets', {
    schema: { summary: 'List secret names', querystring: { type: 'object', properties: { account: NameSchema } } },
  }, async (req) => {
    const p = principal(req);
    requireRole(p, 'viewer');
    const acc = await actingAccount(ctx, p, req.query.account);
    return (await listSecretNames(ctx.store.db, acc.id)).map((s) => ({ name: s.name, updatedAt: new Date(s.updatedAt).toISOString() }));
  });
};
