/**
 * Ring routes (CONTRACT §4): status and history for every user token; changes (set,
 * rollout, rollback, pause, resume) for admins of the default account only.
 */
import type { FastifyPluginAsync } from 'fastify';
import { DURATION_PATTERN, FerryError, parseDuration } from '@ferry/shared';
import { principal, type PluginOpts } from './app.js';
import { requireRole, requireSystem } from './auth.js';
import { NameSchema } from './common.js';
import { ringsOf } from '../rings/index.js';
import { ROLLOUT_STATES } from '../rings/types.js';
import { VERSION_PATTERN } from '../rings/releases.js';

const NullableString = { type: 'string', nullable: true } as const;
const Counts = {
  type: 'object',
  properties: { total: { type: 'integer' }, onTarget: { type: 'integer' }, other: { type: 'integer' }, upgrading: { type: 'integer' }, failed: { type: 'integer' } },
  required: ['total', 'onTarget', 'other', 'upgrading', 'failed'],
} as const;
const RolloutOut = {
  type: 'object',
  nullable: true,
  properties: {
    version: { type: 'string' },
    state: { type: 'string', enum: [...ROLLOUT_STATES] },
    since: { type: 'string', format: 'date-time' },
    startedAt: { type: 'string', format: 'date-time' },
    soak: { type: 'integer', description: 'soak time in ms' },
    soakEndsAt: { type: 'string', format: 'date-time' },
    by: { type: 'string' },
    reason: NullableString,
  },
  required: ['version', 'state', 'since'],
} as const;
const RingOut = {
  type: 'object',
  properties: {
    name: { type: 'string' },
    order: { type: 'integer' },
    version: NullableString,
    previousVersion: NullableString,
    paused: { type: 'boolean' },
    accounts: { type: 'array', items: { type: 'string' } },
    delegates: Counts,
    rollout: RolloutOut,
  },
  required: ['name', 'order', 'version', 'previousVersion', 'accounts', 'delegates', 'rollout'],
} as const;
const RingList = { type: 'array', items: RingOut } as const;
const HistoryOut = {
  type: 'array',
  items: {
    type: 'object',
    properties: {
      at: { type: 'string', format: 'date-time' },
      from: NullableString,
      to: NullableString,
      by: { type: 'string' },
      reason: { type: 'string' },
      evidence: {},
    },
    required: ['at', 'from', 'to', 'by', 'reason', 'evidence'],
  },
} as const;
const RingParams = { type: 'object', properties: { ring: NameSchema }, required: ['ring'] } as const;
const Version = { type: 'string', pattern: VERSION_PATTERN } as const;

export const ringRoutes: FastifyPluginAsync<PluginOpts> = async (app, { ctx }) => {
  const rings = () => ringsOf(ctx);

  app.get('/rings', { schema: { summary: 'List rings with their target, delegates and rollout', tags: ['rings'], response: { 200: RingList } } }, async (req) => {
    requireRole(principal(req), 'viewer');
    return rings().list();
  });

  app.post<{ Body: { version: string; soak?: string | number } }>('/rings/rollout', {
    schema: {
      summary: 'Roll a version out ring by ring, with a soak time between rings',
      tags: ['rings'],
      body: {
        type: 'object', additionalProperties: false, required: ['version'],
        properties: { version: Version, soak: { anyOf: [{ type: 'string', pattern: DURATION_PATTERN }, { type: 'integer', minimum: 0 }] } },
      },
      response: { 200: RingList },
    },
  }, async (req) => {
    const p = principal(req);
    requireSystem(p);
    const soak = req.body.soak === undefined ? ctx.config.ringSoakMs : parseDuration(req.body.soak);
    if (soak === undefined) throw new FerryError('VALIDATION_FAILED', `body/soak: not a duration: ${JSON.stringify(req.body.soak)} (use 500ms, 30s, 5m, 1h, 1d)`, { field: 'body/soak' });
    return rings().rollout(req.body.version, soak, p.name);
  });

  app.post('/rings/rollback-all', { schema: { summary: 'Roll every ring back to its previous version', tags: ['rings'], response: { 200: RingList } } }, async (req) => {
    const p = principal(req);
    requireSystem(p);
    return rings().rollbackAll(p.name);
  });

  app.get<{ Params: { ring: string } }>('/rings/:ring', {
    schema: { summary: 'One ring', tags: ['rings'], params: RingParams, response: { 200: RingOut } },
  }, async (req) => {
    requireRole(principal(req), 'viewer');
    return rings().get(req.params.ring);
  });

  app.get<{ Params: { ring: string } }>('/rings/:ring/history', {
    schema: { summary: "A ring's version changes, newest first", tags: ['rings'], params: RingParams, response: { 200: HistoryOut } },
  }, async (req) => {
    requireRole(principal(req), 'viewer');
    return rings().history(req.params.ring);
  });

  app.put<{ Params: { ring: string }; Body: { version: string } }>('/rings/:ring', {
    schema: {
      summary: "Set a ring's target version",
      tags: ['rings'],
      params: RingParams,
      body: { type: 'object', additionalProperties: false, required: ['version'], properties: { version: Version } },
      response: { 200: RingOut },
    },
  }, async (req) => {
    const p = principal(req);
    requireSystem(p);
    return rings().set(req.params.ring, req.body.version, p.name);
  });

  for (const action of ['rollback', 'pause', 'resume'] as const) {
    const summary = { rollback: 'Return a ring to its previous version', pause: "Pause a ring: a rollout does not advance past it", resume: 'Resume a paused ring' }[action];
    app.post<{ Params: { ring: string } }>(`/rings/:ring/${action}`, {
      schema: { summary, tags: ['rings'], params: RingParams, response: { 200: RingOut } },
    }, async (req) => {
      const p = principal(req);
      requireSystem(p);
      return rings()[action](req.params.ring, p.name);
    });
  }
};
