import type { FastifyPluginAsync } from 'fastify';
import { FerryError } from '@ferry/shared';
import { principal, type PluginOpts } from './app.js';
import { requireRole } from './auth.js';
import { listDelegates, type DelegateView } from '../store/delegates.js';
import { actingAccount, NameSchema } from './common.js';

const DelegateOut = {
  type: 'object',
  properties: {
    id: { type: 'string' }, name: { type: 'string' }, account: { type: 'string' }, version: { type: 'string' },
    ring: { type: 'string' }, tags: { type: 'array', items: { type: 'string' } }, capabilities: { type: 'array', items: { type: 'string' } },
    capacity: { type: 'integer' }, running: { type: 'integer' }, connected: { type: 'boolean' }, lastSeenAt: { type: 'string' },
    connectedAt: { type: ['string', 'null'] },
    upgrade: { anyOf: [{ type: 'null' }, { type: 'object', properties: { version: { type: 'string' }, state: { type: 'string' }, error: { type: ['string', 'null'] } } }] },
  },
} as const;

/** Live values of this server's own sessions win over the periodically flushed row. */
function overlay(ctx: PluginOpts['ctx'], list: DelegateView[]): DelegateView[] {
  for (const d of list) {
    const s = ctx.gateway.session(d.id);
    if (s && !s.closed) {
      d.lastSeenAt = new Date(s.lastSeen).toISOString();
      d.running = s.running;
      d.connected = true;
    }
  }
  return list;
}

export const delegateRoutes: FastifyPluginAsync<PluginOpts> = async (app, { ctx }) => {
  app.get<{ Querystring: { account?: string } }>('/delegates', {
    schema: { summary: 'List delegates, connected or not', querystring: { type: 'object', properties: { account: NameSchema } }, response: { 200: { type: 'array', items: DelegateOut } } },
  }, async (req) => {
    const p = principal(req);
    requireRole(p, 'viewer');
    if (p.system && !req.query.account) return overlay(ctx, await listDelegates(ctx.store.db));
    const acc = await actingAccount(ctx, p, req.query.account);
    return overlay(ctx, await listDelegates(ctx.store.db, acc.id));
  });

  app.get<{ Params: { id: string } }>('/delegates/:id', {
    schema: { summary: 'One delegate', params: { type: 'object', properties: { id: { type: 'string', maxLength: 128 } }, required: ['id'] }, response: { 200: DelegateOut } },
  }, async (req) => {
    const p = principal(req);
    requireRole(p, 'viewer');
    const [d] = await listDelegates(ctx.store.db, p.system ? undefined : p.accountId, req.params.id);
    if (!d) throw new FerryError('NOT_FOUND', `no delegate ${req.params.id}`);
    return overlay(ctx, [d])[0];
  });
};
