import { SpawnerError } from "./error.js";
import { parseEventStream, textChunks, type ServerSentEvent } from "./sse.js";
import type {
  Backend,
  BackendState,
  ConnectOptions,
  CreateOptions,
  RequestOptions,
  SpawnerOptions,
  StateEvent,
  StatusOptions,
} from "./types.js";

const TERMINAL: ReadonlySet<BackendState> = new Set(["Failed", "Deleted"]);

/**
 * Client of Spawner's HTTP API for one namespace. Use it on your server: it sends the API key
 * with every request, and the browser only needs a backend's `url`.
 *
 * @example
 * const spawner = new Spawner({ baseUrl: "http://127.0.0.1:30080", apiKey });
 * const backend = await spawner.connect("room-42", { pool: "drop-four", wait: 60 });
 */
export class Spawner {
  /** The namespace every call works in. */
  readonly namespace: string;
  readonly #baseUrl: string;
  readonly #apiKey: string;
  readonly #fetch: typeof fetch;

  constructor(options: SpawnerOptions) {
    this.#baseUrl = options.baseUrl.replace(/\/+$/, "");
    this.#apiKey = options.apiKey;
    this.namespace = options.namespace ?? "default";
    const custom = options.fetch;
    // Called as plain functions: a browser's fetch throws when called with another `this`.
    this.#fetch = custom
      ? (input, init) => custom(input, init)
      : (input, init) => globalThis.fetch(input, init);
  }

  /**
   * The backend for `key` (a room code, a document or user id), created from `pool` if there
   * is none yet. Concurrent calls with the same key get the same backend, so everyone who
   * knows the key meets in one place.
   */
  connect(key: string, options: ConnectOptions): Promise<Backend> {
    const { pool, values, wait, signal } = options;
    return this.#request("POST", `/connect${waitQuery(wait)}`, signal, { key, pool, values });
  }

  /** A new backend from `pool`, with a server-generated name. */
  create(options: CreateOptions): Promise<Backend> {
    const { pool, values, generateName, wait, signal } = options;
    return this.#request("POST", `/backends${waitQuery(wait)}`, signal, { pool, values, generateName });
  }

  /** One backend by name; throws a {@link SpawnerError} with code "not_found" if there is none. */
  get(name: string, options: RequestOptions = {}): Promise<Backend> {
    return this.#request("GET", `/backends/${encodeURIComponent(name)}`, options.signal);
  }

  /** Every backend of the namespace. */
  async list(options: RequestOptions = {}): Promise<Backend[]> {
    const { items } = await this.#request<{ items: Backend[] }>("GET", "/backends", options.signal);
    return items;
  }

  /** Deletes a backend (its pod, service and token go with it); answers it as last seen. */
  delete(name: string, options: RequestOptions = {}): Promise<Backend> {
    return this.#request("DELETE", `/backends/${encodeURIComponent(name)}`, options.signal);
  }

  /**
   * Follows a backend's state: first the states it went through so far, then each change,
   * ending after a terminal one (`Failed`, `Deleted`). Break out of the loop to stop earlier;
   * that closes the connection.
   *
   * A dropped connection is resumed where it stopped (`Last-Event-ID`), after a short backoff,
   * so no state is missed or repeated. Nothing is requested until iteration starts.
   */
  async *status(name: string, options: StatusOptions = {}): AsyncGenerator<StateEvent, void, undefined> {
    const { signal, maxReconnects = 5 } = options;
    const url = this.#url(`/backends/${encodeURIComponent(name)}/status`);
    let lastId: string | undefined;
    let failures = 0;
    for (;;) {
      const headers = this.#headers("text/event-stream");
      if (lastId !== undefined) headers["Last-Event-ID"] = lastId;
      let response: Response | undefined;
      let cause: unknown;
      try {
        response = await this.#fetch(url, { headers, signal: signal ?? null });
      } catch (err) {
        if (signal?.aborted) throw err;
        cause = err;
      }
      if (response && !response.ok) {
        const err = await SpawnerError.fromResponse(response);
        if (response.status < 500) throw err; // our mistake (auth, name): retrying cannot help
        cause = err;
        response = undefined;
      }

      if (response?.body) {
        const events = parseEventStream(textChunks(response.body));
        try {
          for (;;) {
            let next: IteratorResult<ServerSentEvent, void>;
            try {
              next = await events.next();
            } catch (err) {
              if (signal?.aborted) throw err;
              cause = err;
              break;
            }
            if (next.done) break;
            if (next.value.event !== "state") continue;
            const event = toStateEvent(next.value);
            if (next.value.id !== "") lastId = next.value.id;
            failures = 0;
            yield event;
            if (TERMINAL.has(event.state)) return;
          }
        } finally {
          await events.return();
        }
      }

      // The stream ended before a terminal state: the connection dropped.
      if (failures >= maxReconnects) {
        if (cause instanceof SpawnerError) throw cause;
        throw new SpawnerError(
          0,
          "disconnected",
          `status stream of ${name} ended before a terminal state, ${failures} reconnects without a new event`,
          { cause },
        );
      }
      failures += 1;
      await sleep(Math.min(250 * 2 ** (failures - 1), 4000), signal);
    }
  }

  async #request<T = Backend>(
    method: string,
    path: string,
    signal: AbortSignal | undefined,
    body?: object,
  ): Promise<T> {
    const headers = this.#headers("application/json");
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await this.#fetch(this.#url(path), {
      method,
      headers,
      body: body === undefined ? null : JSON.stringify(body),
      signal: signal ?? null,
    });
    if (!response.ok) throw await SpawnerError.fromResponse(response);
    return (await response.json()) as T;
  }

  #url(path: string): string {
    return `${this.#baseUrl}/api/v1/namespaces/${encodeURIComponent(this.namespace)}${path}`;
  }

  #headers(accept: string): Record<string, string> {
    return { Authorization: `Bearer ${this.#apiKey}`, Accept: accept };
  }
}

function waitQuery(wait: number | undefined): string {
  return wait === undefined ? "" : `?wait=${encodeURIComponent(wait)}`;
}

function toStateEvent(event: ServerSentEvent): StateEvent {
  const body = JSON.parse(event.data) as Omit<StateEvent, "id">;
  return { ...body, id: Number(event.id) };
}

/** Waits `ms`, or rejects as soon as `signal` aborts. */
function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
