export * from './protocol.js';
export * from './frames.js';
export * from './codec.js';
export * from './errors.js';
export * from './status.js';
export * from './names.js';
export * from './duration.js';
export * from './mask.js';
