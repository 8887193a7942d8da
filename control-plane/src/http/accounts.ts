import type { FastifyPluginAsync } from 'fastify';
import { FerryError } from '@ferry/shared';
import { principal, type PluginOpts } from './app.js';
import { requireRole, requireSystem } from './auth.js';
import { createAccount, getAccountByName, listAccounts } from '../store/accounts.js';
import { NameSchema } from './common.js';

const AccountOut = { type: 'object', properties: { name: { type: 'string' }, ring: { type: 'string' } }, required: ['name', 'ring'] } as const;

export const accountRoutes: FastifyPluginAsync<PluginOpts> = async (app, { ctx }) => {
  app.post<{ Body: { name: string; ring?: string } }>('/accounts', {
    schema: {
      summary: 'Create an account',
      body: { type: 'object', additionalProperties: false, required: ['name'], properties: { name: NameSchema, ring: NameSchema } },
      response: { 201: AccountOut },
    },
  }, async (req, reply) => {
    requireSystem(principal(req));
    const acc = await createAccount(ctx.store.db, req.body.name, req.body.ring ?? 'ring0', ctx.clock.now());
    return reply.code(201).send({ name: acc.name, ring: acc.ring });
  });

  app.get('/accounts', { schema: { summary: 'List accounts', response: { 200: { type: 'array', items: AccountOut } } } }, async (req) => {
    const p = principal(req);
    requireRole(p, 'viewer');
    const all = await listAccounts(ctx.store.db);
    return (p.system ? all : all.filter((a) => a.id === p.accountId)).map((a) => ({ name: a.name, ring: a.ring }));
  });

  app.put<{ Params: { name: string }; Body: { ring: string } }>('/accounts/:name/ring', {
    schema: {
      summary: 'Move an account to a ring',
      params: { type: 'object', properties: { name: NameSchema }, required: ['name'] },
      body: { type: 'object', additionalProperties: false, required: ['ring'], properties: { ring: NameSchema } },
      response: { 200: AccountOut },
    },
  }, async (req) => {
    requireSystem(principal(req));
    const acc = await getAccountByName(ctx.store.db, req.params.name);
    if (!acc) throw new FerryError('NOT_FOUND', `no account ${req.params.name}`);
    const ring = await ctx.store.db.selectFrom('rings').select('name').where('name', '=', req.body.ring).executeTakeFirst();
    if (!ring) throw new FerryError('NOT_FOUND', `no ring ${req.body.ring}`, { field: 'ring' });
    await ctx.store.db.updateTable('accounts').set({ ring: req.body.ring }).where('id', '=', acc.id).execute();
    ctx.gateway.onAccountRingChanged(acc.id);
    return { name: acc.name, ring: req.body.ring };
  });
};
