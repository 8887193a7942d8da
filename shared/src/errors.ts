/**
 * The one table of API error codes: each with its HTTP status and the sentence the
 * docs show. The API answers `{"error": {"code", "message", "details"}}`.
 */
export const ERROR_CODES = {
  VALIDATION_FAILED: { status: 400, doc: 'The request body, query or parameters do not match the schema.' },
  INVALID_PIPELINE: { status: 400, doc: 'The pipeline file is not valid; details name the line and field.' },
  INVALID_ARGUMENT: { status: 400, doc: 'An argument is well-formed but not acceptable.' },
  UNAUTHORIZED: { status: 401, doc: 'No token, or a token that is unknown or revoked.' },
  FORBIDDEN: { status: 403, doc: 'The token may not do this (role, kind or scope).' },
  NOT_FOUND: { status: 404, doc: 'No such resource in this account.' },
  ALREADY_EXISTS: { status: 409, doc: 'A resource with this name exists.' },
  WRONG_STATE: { status: 409, doc: 'The resource is not in a state that allows this action.' },
  AMBIGUOUS: { status: 409, doc: 'More than one stage or step waits; name one.' },
  PAYLOAD_TOO_LARGE: { status: 413, doc: 'The body is larger than the route accepts.' },
  UNSUPPORTED_MEDIA_TYPE: { status: 415, doc: 'The body has a content type the route does not read.' },
  RATE_LIMITED: { status: 429, doc: 'Too many requests; slow down.' },
  INTERNAL: { status: 500, doc: 'The server failed; the log has the details.' },
  UNAVAILABLE: { status: 503, doc: 'The server is starting or stopping.' },
} as const satisfies Record<string, { status: number; doc: string }>;

export type ErrorCode = keyof typeof ERROR_CODES;

export interface ErrorBody {
  error: { code: ErrorCode | string; message: string; details?: unknown };
}

/** An error meant for the caller: carries its code; the HTTP layer maps it to a status. */
export class FerryError extends Error {
  readonly code: ErrorCode;
  readonly details?: unknown;
  constructor(code: ErrorCode, message: string, details?: unknown) {
    super(message);
    this.name = 'FerryError';
    this.code = code;
    this.details = details;
  }
  get status(): number {
    return ERROR_CODES[this.code].status;
  }
  toBody(): ErrorBody {
    return { error: { code: this.code, message: this.message, ...(this.details === undefined ? {} : { details: this.details }) } };
  }
}

export const isFerryError = (e: unknown): e is FerryError => e instanceof FerryError;
