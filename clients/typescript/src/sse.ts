/** One event of a `text/event-stream`. */
export interface ServerSentEvent {
  /**
   * The last `id:` seen on the stream, "" if none yet. As in EventSource it carries over to
   * later events that have no `id:` of their own; it is what a reconnect resumes from.
   */
  id: string;
  /** The `event:` field; "message" when the event has none. */
  event: string;
  /** The `data:` lines joined with "\n". */
  data: string;
}

/**
 * Parses a `text/event-stream` given as text chunks cut anywhere (inside a line, between CR
 * and LF). Follows the WHATWG rules: lines end in CRLF, LF or CR; a blank line dispatches the
 * event; lines starting with ":" are comments; one space after the colon is dropped; an event
 * with no `data:` line is not dispatched; an unfinished event at the end of the stream is
 * dropped (the connection broke mid-event). `retry:` is ignored.
 */
export async function* parseEventStream(
  chunks: AsyncIterable<string> | Iterable<string>,
): AsyncGenerator<ServerSentEvent, void, undefined> {
  let buffer = "";
  let started = false;
  let id = "";
  let event = "";
  let data: string | undefined;
  const lineEnd = /\r\n|\r|\n/g;

  for await (const chunk of chunks) {
    buffer += chunk;
    if (!started && buffer.length > 0) {
      started = true;
      if (buffer.startsWith("\uFEFF")) buffer = buffer.slice(1);
    }
    let start = 0;
    lineEnd.lastIndex = 0;
    for (let m = lineEnd.exec(buffer); m !== null; m = lineEnd.exec(buffer)) {
      // A CR ending the chunk may be the first half of a CRLF: wait for the next chunk.
      if (m[0] === "\r" && m.index === buffer.length - 1) break;
      const line = buffer.slice(start, m.index);
      start = lineEnd.lastIndex;

      if (line === "") {
        if (data !== undefined) {
          const dispatched: ServerSentEvent = { id, event: event || "message", data };
          data = undefined;
          event = "";
          yield dispatched;
        } else {
          event = "";
        }
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon === -1 ? line : line.slice(0, colon);
      let value = colon === -1 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") data = data === undefined ? value : `${data}\n${value}`;
      else if (field === "event") event = value;
      else if (field === "id" && !value.includes("\0")) id = value;
    }
    buffer = buffer.slice(start);
  }
  // A stream ending in "...\r\r" did end its event: the held-back CR is a line end after all.
  if (buffer === "\r" && data !== undefined) {
    yield { id, event: event || "message", data };
  }
}

/** Decodes a response body to text chunks; stopping early cancels the body (closes the connection). */
export async function* textChunks(
  body: ReadableStream<Uint8Array>,
): AsyncGenerator<string, void, undefined> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let done = false;
  try {
    for (;;) {
      const next = await reader.read();
      if (next.done) break;
      const text = decoder.decode(next.value, { stream: true });
      if (text !== "") yield text;
    }
    done = true;
    const rest = decoder.decode();
    if (rest !== "") yield rest;
  } finally {
    if (!done) reader.cancel().catch(() => {});
  }
}
