/**
 * Where a backend is in its life. `Failed` and `Deleted` are terminal: a status stream
 * ends after either.
 */
export type BackendState =
  | "Pending"
  | "Scheduled"
  | "Running"
  | "Ready"
  | "Failed"
  | "Terminating"
  | "Deleted";

/** One session-lived backend: one pod for one user, document or room. */
export interface Backend {
  name: string;
  namespace: string;
  /** The pool it was made from, if any. */
  pool: string | null;
  /** The key `connect` found or created it by (a room code, a user id), if any. */
  key: string | null;
  /** Usually a {@link BackendState}; typed loosely so a newer server's phases still parse. */
  phase: string;
  /** True once the reverse proxy can route to it. */
  ready: boolean;
  /**
   * What a browser opens: the proxy address `/p/<namespace>/<name>/` with the token as
   * `?token=`. Hand it to the visitor, not the API key.
   */
  url: string | null;
  /** The backend's access token (already included in `url`). */
  token: string | null;
  /** Machine-readable cause of the current phase, e.g. why it failed. */
  reason: string | null;
  /** Human-readable detail on the current phase. */
  message: string | null;
  /** Creation time, RFC 3339. */
  created: string | null;
}

/** Free-form string values a pool's template can use. */
export type Values = Record<string, string>;

/** Options every request accepts. */
export interface RequestOptions {
  /** Aborts the request (e.g. `AbortSignal.timeout(ms)`). */
  signal?: AbortSignal;
}

/** Options of {@link Spawner.connect}. */
export interface ConnectOptions extends RequestOptions {
  /** The pool to create the backend from if none has this key yet. */
  pool: string;
  values?: Values;
  /**
   * Seconds the server holds the answer until the backend is Ready. Without it the
   * answer comes at once and the backend may still be starting (follow `status`).
   */
  wait?: number;
}

/** Options of {@link Spawner.create}. */
export interface CreateOptions extends RequestOptions {
  pool: string;
  values?: Values;
  /** Prefix for the server-generated name. */
  generateName?: string;
  /** Seconds the server holds the answer until the backend is Ready. */
  wait?: number;
}

/** Options of {@link Spawner.status}. */
export interface StatusOptions extends RequestOptions {
  /**
   * How many times in a row to reconnect a dropped stream without receiving a new event
   * before giving up (default 5; `Infinity` never gives up). Receiving an event resets the count.
   */
  maxReconnects?: number;
}

/** One state change of a backend, as sent on its status stream. */
export interface StateEvent {
  /** The event id: increasing integers, resumed from on reconnect. */
  id: number;
  state: BackendState;
  message: string;
  reason?: string;
  /** Present once the backend can be opened. */
  url?: string;
}

/** Options of the {@link Spawner} constructor. */
export interface SpawnerOptions {
  /** Where the API is served, e.g. `http://127.0.0.1:30080`. */
  baseUrl: string;
  /** Sent as `Authorization: Bearer <apiKey>`. Keep it on your server. */
  apiKey: string;
  /** Namespace of the backends (default `"default"`). */
  namespace?: string;
  /** A `fetch` to use instead of the global one (for tests, proxies, instrumentation). */
  fetch?: typeof fetch;
}
