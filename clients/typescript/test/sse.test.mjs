// Unit tests of the text/event-stream parser: a pure function over text chunks.
import { test } from "node:test";
import assert from "node:assert/strict";
import { parseEventStream } from "../dist/index.js";

async function parse(chunks) {
  const events = [];
  for await (const event of parseEventStream(chunks)) events.push(event);
  return events;
}

/** Every way to cut `text` in two, and one chunk per character. */
function cuts(text) {
  const ways = [[...text]];
  for (let i = 0; i <= text.length; i++) ways.push([text.slice(0, i), text.slice(i)]);
  return ways;
}

const STREAM =
  'id: 1\nevent: state\ndata: {"state":"Pending","message":"accepted"}\n\n' +
  ": keep-alive\n\n" +
  'id: 4\nevent: state\ndata: {"state":"Ready","message":"ready"}\n\n';

const EXPECTED = [
  { id: "1", event: "state", data: '{"state":"Pending","message":"accepted"}' },
  { id: "4", event: "state", data: '{"state":"Ready","message":"ready"}' },
];

test("parses id, event and data of each event", async () => {
  assert.deepEqual(await parse([STREAM]), EXPECTED);
});

test("gives the same events however the stream is cut into chunks", async () => {
  for (const chunks of cuts(STREAM)) assert.deepEqual(await parse(chunks), EXPECTED, JSON.stringify(chunks));
});

test("accepts CRLF and CR line ends, also with CR and LF in different chunks", async () => {
  for (const end of ["\r\n", "\r"]) {
    for (const chunks of cuts(STREAM.replaceAll("\n", end))) {
      assert.deepEqual(await parse(chunks), EXPECTED, JSON.stringify(chunks));
    }
  }
  // A stream that ends right after a CR still ends its last event.
  assert.deepEqual(await parse(["data: x\r", "\r"]), [{ id: "", event: "message", data: "x" }]);
});

test("ignores comments, also between the fields of an event", async () => {
  const events = await parse([":hello\n: keep-alive\nevent: state\n:inside\ndata: a\n\n:\n\n"]);
  assert.deepEqual(events, [{ id: "", event: "state", data: "a" }]);
});

test("joins multi-line data with \\n, keeping empty lines and further spaces", async () => {
  const events = await parse(["data: one\ndata:\ndata:  two\ndata:three\n\n"]);
  assert.deepEqual(events, [{ id: "", event: "message", data: "one\n\n two\nthree" }]);
});

test("takes a field without a colon as an empty value, and ignores unknown fields", async () => {
  const events = await parse(["data\nretry: 10\nfoo: bar\n\n"]);
  assert.deepEqual(events, [{ id: "", event: "message", data: "" }]);
});

test("dispatches no event without data, and resets the event type after each event", async () => {
  const events = await parse(["event: state\nid: 7\n\ndata: x\n\n"]);
  assert.deepEqual(events, [{ id: "7", event: "message", data: "x" }]);
});

test("keeps the last id for later events without one, as EventSource does", async () => {
  const events = await parse(["id: 3\ndata: a\n\ndata: b\n\nid\ndata: c\n\n"]);
  assert.deepEqual(
    events.map((e) => e.id),
    ["3", "3", ""],
  );
});

test("drops an event the stream ends in the middle of", async () => {
  assert.deepEqual(await parse(["id: 1\ndata: a\n\nid: 2\ndata: b\n"]), [{ id: "1", event: "message", data: "a" }]);
  assert.deepEqual(await parse(["data: a"]), []);
});

test("strips a leading byte order mark", async () => {
  assert.deepEqual(await parse(["\uFEFF", "data: a\n\n"]), [{ id: "", event: "message", data: "a" }]);
});

test("reads async iterables of chunks", async () => {
  async function* chunks() {
    yield "id: 1\nda";
    yield "ta: a\n";
    yield "\n";
  }
  assert.deepEqual(await parse(chunks()), [{ id: "1", event: "message", data: "a" }]);
});
