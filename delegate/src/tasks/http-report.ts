/**
 * The status line the http handler logs for a response. Loaded lazily (dynamic import,
 * on the request path only, never by the self-check), like a dependency only one task
 * path needs. `bundle --fault missing-lazy-http-module` leaves this module out of the
 * bundle to reproduce issue 5's incident: self-checks pass, every http task fails.
 */
export function statusLine(status: number, statusText: string, ms: number): string {
  return `< ${status} ${statusText} (${ms}ms)`;
}
