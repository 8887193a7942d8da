/** Version of the delegate wire protocol. A server accepts the versions in SUPPORTED_PROTOCOLS. */
export const PROTOCOL_VERSION = 1;
export const SUPPORTED_PROTOCOLS: readonly number[] = [1];

/**
 * WebSocket close codes used by the gateway and the delegate. 4000-4999 are
 * application codes; a delegate reads them to decide whether to reconnect.
 */
export const CloseCode = {
  Normal: 1000,
  GoingAway: 1001,
  /** ws standard: message too big */
  FrameTooLarge: 1009,
  ProtocolError: 4000,
  UnsupportedProtocol: 4001,
  FrameBeforeHello: 4002,
  InvalidFrame: 4003,
  UnknownType: 4004,
  OutOfOrder: 4005,
  RateLimited: 4008,
  Replaced: 4009,
  TokenRevoked: 4010,
  HeartbeatTimeout: 4011,
  HelloTimeout: 4012,
  ServerShutdown: 4013,
  DelegateMismatch: 4014,
  /** the server could not store a log chunk or result; reconnect and resend what is unacknowledged */
  StoreFailed: 4015,
} as const;
export type CloseCodeName = keyof typeof CloseCode;

/** Close codes after which a delegate must not reconnect without operator action. */
export const FATAL_CLOSE_CODES: readonly number[] = [
  CloseCode.UnsupportedProtocol,
  CloseCode.TokenRevoked,
];

export const closeCodeName = (code: number): string => {
  for (const [name, value] of Object.entries(CloseCode)) if (value === code) return name;
  return `Code${code}`;
};

/** Limits the server announces in `welcome`; the delegate keeps to them. */
export interface SessionLimits {
  /** largest frame the server reads, in bytes */
  maxFrameBytes: number;
  /** frames per second a session may send (token bucket; bursts allowed) */
  maxFramesPerSecond: number;
  /** lines per log.chunk */
  maxChunkLines: number;
}

export const DEFAULT_LIMITS: SessionLimits = {
  maxFrameBytes: 4 * 1024 * 1024,
  maxFramesPerSecond: 2000,
  maxChunkLines: 2000,
};
