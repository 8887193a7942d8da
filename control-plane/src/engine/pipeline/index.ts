export * from './types.js';
export { getPipelineJsonSchema, PipelineFile } from './schema.js';
export { parsePipeline, parsePipelineValue, formatProblem, definitionMappings, type PipelineProblem, type ParseOptions } from './parse.js';
