import type { FastifyPluginAsync } from 'fastify';
import { FerryError } from '@ferry/shared';
import { principal, type PluginOpts } from './app.js';
import { requireRole } from './auth.js';
import { actingAccount, NameSchema } from './common.js';
import { engineOf, getPipelineJsonSchema } from '../engine/index.js';

const AccountQuery = { type: 'object', properties: { account: NameSchema } } as const;
const PipelineSummaryOut = {
  type: 'object',
  properties: { name: { type: 'string' }, version: { type: 'integer' }, updatedAt: { type: 'string' } },
} as const;
/** Execution documents are open-ended (CONTRACT §6: "at least"): serialised whole. */
const ExecutionOut = {
  type: 'object', additionalProperties: true,
  properties: { id: { type: 'string' }, pipeline: { type: 'string' }, pipelineVersion: { type: 'integer' }, status: { type: 'string' } },
} as const;

export const pipelineRoutes: FastifyPluginAsync<PluginOpts> = async (app, { ctx }) => {
  const engine = () => engineOf(ctx);

  app.get('/schema/pipeline', {
    schema: { summary: 'The JSON schema of pipeline files', response: { 200: { type: 'object', additionalProperties: true } } },
  }, async (req) => {
    requireRole(principal(req), 'viewer');
    return getPipelineJsonSchema();
  });

  app.put<{ Params: { name: string }; Querystring: { account?: string }; Body: unknown }>('/pipelines/:name', {
    schema: {
      summary: 'Apply a pipeline file (YAML or JSON body); every apply is a new version',
      params: { type: 'object', properties: { name: NameSchema }, required: ['name'] },
      querystring: AccountQuery,
      response: { 200: PipelineSummaryOut },
    },
  }, async (req) => {
    const p = principal(req);
    const acc = await actingAccount(ctx, p, req.query.account);
    const body = req.body;
    if (body === undefined || body === null || (typeof body === 'string' && body.trim() === '')) {
      throw new FerryError('INVALID_PIPELINE', 'the body is empty: send the pipeline file (YAML or JSON)');
    }
    if (Buffer.isBuffer(body)) return engine().applyPipeline(p, acc.id, req.params.name, body.toString('utf8'));
    return engine().applyPipeline(p, acc.id, req.params.name, body);
  });

  app.get<{ Querystring: { account?: string } }>('/pipelines', {
    schema: { summary: 'Pipelines, latest version of each', querystring: AccountQuery, response: { 200: { type: 'array', items: PipelineSummaryOut } } },
  }, async (req) => {
    const p = principal(req);
    const acc = await actingAccount(ctx, p, req.query.account);
    return engine().listPipelines(p, acc.id);
  });

  app.get<{ Params: { name: string }; Querystring: { account?: string; version?: number } }>('/pipelines/:name', {
    schema: {
      summary: 'One pipeline: its latest (or a given) version and normalised definition',
      params: { type: 'object', properties: { name: NameSchema }, required: ['name'] },
      querystring: { type: 'object', properties: { account: NameSchema, version: { type: 'integer', minimum: 1 } } },
      response: { 200: { type: 'object', additionalProperties: true, properties: { name: { type: 'string' }, version: { type: 'integer' }, updatedAt: { type: 'string' } } } },
    },
  }, async (req) => {
    const p = principal(req);
    const acc = await actingAccount(ctx, p, req.query.account);
    const v = await engine().getPipeline(p, acc.id, req.params.name, req.query.version);
    return { name: v.name, version: v.version, updatedAt: v.updatedAt, createdBy: v.createdBy, definition: v.definition, source: v.source };
  });

  app.post<{ Params: { name: string }; Querystring: { account?: string }; Body: { inputs?: Record<string, unknown>; artifact?: string | null } }>('/pipelines/:name/executions', {
    schema: {
      summary: "Run the pipeline's latest version",
      params: { type: 'object', properties: { name: NameSchema }, required: ['name'] },
      querystring: AccountQuery,
      body: {
        type: 'object', additionalProperties: false,
        properties: {
          inputs: { type: 'object', additionalProperties: { anyOf: [{ type: 'string' }, { type: 'number' }, { type: 'boolean' }] } },
          artifact: { type: ['string', 'null'], maxLength: 256 },
        },
      },
      response: { 201: ExecutionOut },
    },
  }, async (req, reply) => {
    const p = principal(req);
    const acc = await actingAccount(ctx, p, req.query.account);
    const doc = await engine().run(p, acc.id, req.params.name, req.body ?? {});
    return reply.code(201).send(doc);
  });

  app.get<{ Querystring: { account?: string } }>('/infrastructures', {
    schema: {
      summary: 'Infrastructure mappings (service, environment, infrastructure), created on first use by pipelines',
      querystring: AccountQuery,
      response: { 200: { type: 'array', items: { type: 'object', additionalProperties: true } } },
    },
  }, async (req) => {
    const p = principal(req);
    const acc = await actingAccount(ctx, p, req.query.account);
    return engine().listMappings(p, acc.id);
  });
};
