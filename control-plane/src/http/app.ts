/**
 * buildServer(): the fastify app, apart from listen() so that route tests can use
 * app.inject(). One plugin per resource; errors in one shape (CONTRACT §4).
 */
import Fastify, { type FastifyError, type FastifyInstance, type FastifyRequest } from 'fastify';
import swagger from '@fastify/swagger';
import { FerryError, ERROR_CODES } from '@ferry/shared';
import type { AppContext } from '../context.js';
import { bearer, type Principal } from './auth.js';
import { healthRoutes } from './health.js';
import { accountRoutes } from './accounts.js';
import { tokenRoutes } from './tokens.js';
import { secretRoutes } from './secrets.js';
import { delegateRoutes } from './delegates.js';
import { pipelineRoutes } from './pipelines.js';
import { executionRoutes } from './executions.js';
import { ringRoutes } from './rings.js';
import { releaseRoutes } from './releases.js';
import { taskRoutes } from './tasks.js';

declare module 'fastify' {
  interface FastifyRequest {
    principal: Principal | null;
  }
  interface FastifyContextConfig {
    /** route accepts delegate tokens too */
    delegateAllowed?: boolean;
    /** route needs no token */
    public?: boolean;
  }
}

export function errorBody(code: string, message: string, details?: unknown) {
  return { error: { code, message, ...(details === undefined ? {} : { details }) } };
}

/** The authenticated principal of a request (routes run only after the auth hook). */
export function principal(req: FastifyRequest): Principal {
  if (!req.principal) throw new FerryError('UNAUTHORIZED', 'no token');
  return req.principal;
}

export async function buildServer(ctx: AppContext): Promise<FastifyInstance> {
  const app = Fastify({
    loggerInstance: ctx.logger.child({ mod: 'http' }),
    disableRequestLogging: true,
    bodyLimit: ctx.config.bodyLimit,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: 'array', allErrors: false } },
    return503OnClosing: true,
    forceCloseConnections: true,
  });

  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: { title: 'Ferry control plane API', version: '1' },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }],
    },
  });

  for (const type of ['application/yaml', 'application/x-yaml', 'text/yaml', 'text/x-yaml', 'text/plain']) {
    app.addContentTypeParser(type, { parseAs: 'string' }, (_req, body, done) => done(null, body));
  }
  app.addContentTypeParser(['application/octet-stream', 'application/gzip', 'application/x-gzip', 'application/x-tar'],
    { parseAs: 'buffer', bodyLimit: ctx.config.bundleLimit }, (_req, body, done) => done(null, body));

  app.decorateRequest('principal', null);
  app.addHook('onRequest', async (req, reply) => {
    if (!req.url.startsWith('/api/v1/')) return;
    if (req.routeOptions.config?.public) return;
    const secret = bearer(req.headers.authorization);
    if (!secret) {
      reply.code(401).send(errorBody('UNAUTHORIZED', 'missing Authorization: Bearer TOKEN'));
      return reply;
    }
    const p = await ctx.tokens.lookup(secret, ctx.clock.now());
    if (!p) {
      reply.code(401).send(errorBody('UNAUTHORIZED', 'unknown or revoked token'));
      return reply;
    }
    if (p.kind === 'delegate' && !req.routeOptions.config?.delegateAllowed) {
      reply.code(403).send(errorBody('FORBIDDEN', 'a delegate token can only connect a delegate and download releases'));
      return reply;
    }
    req.principal = p;
  });

  app.setErrorHandler((err: FastifyError | FerryError, req, reply) => {
    if (err instanceof FerryError) return reply.code(err.status).send(err.toBody());
    const fe = err as FastifyError;
    if (fe.validation) {
      const first = fe.validation[0];
      const field = `${fe.validationContext ?? 'body'}${first?.instancePath ?? ''}`;
      return reply.code(400).send(errorBody('VALIDATION_FAILED', `${field} ${first?.message ?? 'is invalid'}`, { field, errors: fe.validation }));
    }
    if (fe.code === 'FST_ERR_CTP_BODY_TOO_LARGE') return reply.code(413).send(errorBody('PAYLOAD_TOO_LARGE', fe.message));
    if (fe.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') return reply.code(415).send(errorBody('UNSUPPORTED_MEDIA_TYPE', fe.message));
    if (fe.statusCode && fe.statusCode >= 400 && fe.statusCode < 500) {
      const code = fe.statusCode === 413 ? 'PAYLOAD_TOO_LARGE' : fe.statusCode === 404 ? 'NOT_FOUND' : fe.statusCode === 429 ? 'RATE_LIMITED' : 'VALIDATION_FAILED';
      return reply.code(fe.statusCode).send(errorBody(code, fe.message));
    }
    req.log.error({ err }, 'request failed');
    return reply.code(500).send(errorBody('INTERNAL', 'internal error; see the server log'));
  });
  app.setNotFoundHandler((req, reply) => {
    reply.code(404).send(errorBody('NOT_FOUND', `no route ${req.method} ${req.url.split('?')[0]}`));
  });

  const opts = { ctx };
  await app.register(healthRoutes, opts);
  await app.register(async (api) => {
    await api.register(accountRoutes, opts);
    await api.register(tokenRoutes, opts);
    await api.register(secretRoutes, opts);
    await api.register(delegateRoutes, opts);
    await api.register(pipelineRoutes, opts);
    await api.register(executionRoutes, opts);
    await api.register(ringRoutes, opts);
    await api.register(releaseRoutes, opts);
    await api.register(taskRoutes, opts);
  }, { prefix: '/api/v1' });

  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
  void ERROR_CODES;
  return app as unknown as FastifyInstance;
}

export interface PluginOpts {
  ctx: AppContext;
}
