import type { FastifyPluginAsync } from 'fastify';
import type { PluginOpts } from './app.js';

export const healthRoutes: FastifyPluginAsync<PluginOpts> = async (app, { ctx }) => {
  app.get('/healthz', { schema: { hide: true } }, async () => ({ status: 'ok' }));
  app.get('/readyz', { schema: { hide: true } }, async (_req, reply) => {
    const db = await ctx.store.ping();
    const ready = db && !ctx.shuttingDown;
    return reply.code(ready ? 200 : 503).send({ status: ready ? 'ready' : 'not ready', database: db, shuttingDown: ctx.shuttingDown });
  });
  app.get('/metrics', { schema: { hide: true } }, async (_req, reply) => {
    reply.header('content-type', ctx.metrics.registry.contentType);
    return ctx.metrics.registry.metrics();
  });
};
