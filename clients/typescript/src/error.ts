/**
 * What every failed call throws: an error answer of the API (`status` is the HTTP status,
 * `code` its `error` field: "unauthorized", "forbidden", "not_found", "bad_request",
 * "payload_too_large", "too_many_backends", "timeout", "failed", "unavailable"), an error answer
 * that is not the API's JSON (code `http_<status>`, e.g. from a proxy in front of it), or a
 * status stream that kept dropping (status 0, code "disconnected", the last failure as `cause`).
 * Network failures and aborts are thrown as `fetch` throws them.
 */
export class SpawnerError extends Error {
  override readonly name = "SpawnerError";

  constructor(
    /** HTTP status of the answer; 0 when there was none. */
    readonly status: number,
    /** Stable, machine-readable code: branch on this, not on the message. */
    readonly code: string,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }

  /** Builds the error for a non-2xx answer, reading its body. */
  static async fromResponse(response: Response): Promise<SpawnerError> {
    const text = await response.text().catch(() => "");
    try {
      const body: unknown = JSON.parse(text);
      if (typeof body === "object" && body !== null && "error" in body) {
        const { error, message } = body as { error: unknown; message?: unknown };
        if (typeof error === "string" && error !== "") {
          const detail = typeof message === "string" && message !== "" ? message : error;
          return new SpawnerError(response.status, error, detail);
        }
      }
    } catch {
      // Not JSON: fall through to the generic error.
    }
    const detail = text.trim().slice(0, 500) || `HTTP ${response.status} ${response.statusText}`.trim();
    return new SpawnerError(response.status, `http_${response.status}`, detail);
  }
}
