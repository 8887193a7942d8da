import type { FastifyPluginAsync } from 'fastify';
import { FerryError } from '@ferry/shared';
import { principal, type PluginOpts } from './app.js';
import { requireRole } from './auth.js';
import { createToken, getToken, listTokens, revokeToken, type Role, type Scopes, type TokenInfo } from '../store/accounts.js';
import { actingAccount, NameSchema } from './common.js';

const TokenOut = {
  type: 'object',
  properties: {
    id: { type: 'string' }, kind: { type: 'string' }, name: { type: 'string' }, account: { type: 'string' },
    role: { type: ['string', 'null'] }, scopes: { type: 'object', additionalProperties: { type: 'string' } },
    revoked: { type: 'boolean' }, createdAt: { type: 'string' }, lastUsedAt: { type: ['string', 'null'] },
    token: { type: 'string' },
  },
} as const;

const shape = (t: TokenInfo) => ({
  id: t.id, kind: t.kind, name: t.name, account: t.account, role: t.role, scopes: t.scopes, revoked: t.revoked,
  createdAt: new Date(t.createdAt).toISOString(), lastUsedAt: t.lastUsedAt == null ? null : new Date(t.lastUsedAt).toISOString(),
});

interface CreateBody { kind: 'delegate' | 'user'; name?: string; role?: Role; scopes?: Scopes; account?: string }

export const tokenRoutes: FastifyPluginAsync<PluginOpts> = async (app, { ctx }) => {
  app.post<{ Body: CreateBody }>('/tokens', {
    schema: {
      summary: 'Create a token (the secret is returned once)',
      body: {
        type: 'object', additionalProperties: false, required: ['kind'],
        properties: {
          kind: { type: 'string', enum: ['delegate', 'user'] },
          name: { type: 'string', minLength: 1, maxLength: 100 },
          role: { type: 'string', enum: ['admin', 'deployer', 'viewer'] },
          scopes: {
            type: 'object', additionalProperties: false,
            properties: { service: NameSchema, environmentType: { type: 'string', enum: ['production', 'preproduction'] } },
          },
          account: NameSchema,
        },
      },
      response: { 201: TokenOut },
    },
  }, async (req, reply) => {
    const p = principal(req);
    requireRole(p, 'admin');
    const acc = await actingAccount(ctx, p, req.body.account);
    const b = req.body;
    if (b.kind === 'delegate' && (b.role || b.scopes)) throw new FerryError('VALIDATION_FAILED', 'a delegate token takes no role or scopes', { field: b.role ? 'role' : 'scopes' });
    const name = b.name ?? `${b.kind}-${Date.now().toString(36)}`;
    const { id, token } = await createToken(ctx.store.db, {
      accountId: acc.id, kind: b.kind, name, role: b.kind === 'user' ? b.role ?? 'viewer' : null, scopes: b.scopes ?? {}, now: ctx.clock.now(),
    });
    const info = await getToken(ctx.store.db, id);
    return reply.code(201).send({ ...shape(info!), token });
  });

  app.get<{ Querystring: { account?: string } }>('/tokens', {
    schema: { summary: 'List tokens (never their secrets)', querystring: { type: 'object', properties: { account: NameSchema } }, response: { 200: { type: 'array', items: TokenOut } } },
  }, async (req) => {
    const p = principal(req);
    requireRole(p, 'admin');
    if (p.system && !req.query.account) return (await listTokens(ctx.store.db)).map(shape);
    const acc = await actingAccount(ctx, p, req.query.account);
    return (await listTokens(ctx.store.db, acc.id)).map(shape);
  });

  app.delete<{ Params: { id: string } }>('/tokens/:id', {
    schema: { summary: 'Revoke a token; its delegate sockets are closed at once', params: { type: 'object', properties: { id: { type: 'string', maxLength: 100 } }, required: ['id'] }, response: { 200: TokenOut } },
  }, async (req) => {
    const p = principal(req);
    requireRole(p, 'admin');
    const t = await getToken(ctx.store.db, req.params.id);
    if (!t || (!p.system && t.accountId !== p.accountId)) throw new FerryError('NOT_FOUND', `no token ${req.params.id}`);
    await revokeToken(ctx.store.db, t.id, ctx.clock.now());
    ctx.bus.publish({ type: 'token.revoked', tokenId: t.id });
    return shape({ ...t, revoked: true });
  });
};
