// Tests against a running Spawner API (no mocks). They need:
//   SPAWNER_API_URL        e.g. http://127.0.0.1:30080
//   SPAWNER_API_KEY        an API key allowed in the namespace and pool below
//   SPAWNER_API_NAMESPACE  e.g. default
//   SPAWNER_API_POOL       a pool whose backends become Ready
import { test } from "node:test";
import assert from "node:assert/strict";
import { Spawner, SpawnerError } from "../dist/index.js";

const VARIABLES = ["SPAWNER_API_URL", "SPAWNER_API_KEY", "SPAWNER_API_NAMESPACE", "SPAWNER_API_POOL"];
const missing = VARIABLES.filter((name) => !process.env[name]);

/** Seconds the server may hold a create or connect until Ready. */
const WAIT = 120;
/** Bound on a call that waits for Ready. */
const READY_MS = (WAIT + 30) * 1000;
/** Bound on any other call or stream. */
const CALL_MS = 60_000;
const TEST = { timeout: READY_MS + 2 * CALL_MS };

if (missing.length > 0) {
  test("Spawner API environment", () => {
    assert.fail(
      `missing environment: ${missing.join(", ")}. These tests run against a real Spawner API: ` +
        `set ${VARIABLES.join(", ")} (e.g. SPAWNER_API_URL=http://127.0.0.1:30080 SPAWNER_API_NAMESPACE=default).`,
    );
  });
} else {
  apiTests({
    baseUrl: process.env.SPAWNER_API_URL,
    apiKey: process.env.SPAWNER_API_KEY,
    namespace: process.env.SPAWNER_API_NAMESPACE,
    pool: process.env.SPAWNER_API_POOL,
  });
}

function apiTests({ baseUrl, apiKey, namespace, pool }) {
  const spawner = new Spawner({ baseUrl, apiKey, namespace });
  const run = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 6)}`;
  const timeout = (ms = CALL_MS) => AbortSignal.timeout(ms);

  /** Deletes a backend; one already gone is fine. */
  async function remove(name) {
    try {
      await spawner.delete(name, { signal: timeout() });
    } catch (err) {
      if (!(err instanceof SpawnerError && err.status === 404)) throw err;
    }
  }

  /** Deletes the backends named, and any other the list shows connected with `key`. */
  async function removeAll(key, names) {
    const listed = await spawner.list({ signal: timeout() });
    const all = new Set([...names, ...listed.filter((b) => b.key === key).map((b) => b.name)]);
    await Promise.all([...all].map(remove));
  }

  /** An assertion for assert.rejects: a SpawnerError with this status and code. */
  function spawnerError(status, code) {
    return (err) => {
      assert.ok(err instanceof SpawnerError, `expected a SpawnerError, got ${err}`);
      assert.equal(err.status, status, err.message);
      assert.equal(err.code, code, err.message);
      assert.ok(err.message.length > 0);
      return true;
    };
  }

  function assertIncreasing(events) {
    for (let i = 1; i < events.length; i++) {
      assert.ok(events[i].id > events[i - 1].id, `ids not increasing: ${events.map((e) => e.id)}`);
    }
  }

  test("create waits for Ready; get, list and status agree; delete ends the status in Deleted", TEST, async () => {
    const backend = await spawner.create({ pool, wait: WAIT, signal: timeout(READY_MS) });
    let deleted = false;
    try {
      assert.equal(backend.ready, true, `not ready: ${backend.phase} ${backend.reason}: ${backend.message}`);
      assert.equal(backend.namespace, namespace);
      assert.equal(backend.pool, pool);
      assert.ok(backend.token, "no token");
      assert.ok(backend.url, "no url");
      const url = new URL(backend.url, baseUrl);
      assert.equal(url.searchParams.get("token"), backend.token, backend.url);
      assert.ok(url.pathname.endsWith(`/p/${namespace}/${backend.name}/`), backend.url);

      const got = await spawner.get(backend.name, { signal: timeout() });
      assert.equal(got.name, backend.name);
      assert.equal(got.ready, true);

      const list = await spawner.list({ signal: timeout() });
      assert.ok(
        list.some((b) => b.name === backend.name),
        `${backend.name} not in ${list.map((b) => b.name)}`,
      );

      // One stream: its replay up to Ready, then (opened before the delete, so the backend
      // still exists when it starts) the deletion, after which it ends by itself.
      const stream = spawner.status(backend.name, { signal: timeout() });
      const replay = [];
      for (;;) {
        const next = await stream.next();
        assert.ok(!next.done, `the stream ended before Ready: ${JSON.stringify(replay)}`);
        replay.push(next.value);
        if (next.value.state === "Ready") break;
      }
      assert.ok(
        replay.slice(0, -1).every((e) => ["Pending", "Scheduled", "Running"].includes(e.state)),
        JSON.stringify(replay),
      );
      assertIncreasing(replay);

      const gone = await spawner.delete(backend.name, { signal: timeout() });
      deleted = true;
      assert.equal(gone.name, backend.name);

      const end = [...replay];
      for await (const event of { [Symbol.asyncIterator]: () => stream }) end.push(event);
      assert.equal(end.at(-1)?.state, "Deleted", JSON.stringify(end));
      assertIncreasing(end);
    } finally {
      if (!deleted) await remove(backend.name);
    }
  });

  test("connect twice with one key reaches one backend", TEST, async () => {
    const key = `ts-client-${run}-twice`;
    const names = [];
    try {
      const first = await spawner.connect(key, { pool, signal: timeout() });
      names.push(first.name);
      assert.equal(first.key, key);
      const second = await spawner.connect(key, { pool, wait: WAIT, signal: timeout(READY_MS) });
      names.push(second.name);
      assert.equal(second.name, first.name);
      assert.equal(second.ready, true, `not ready: ${second.phase} ${second.reason}: ${second.message}`);
    } finally {
      await removeAll(key, names);
    }
  });

  test("five concurrent connects with one key reach one backend", TEST, async () => {
    const key = `ts-client-${run}-concurrent`;
    // allSettled: every call is over before the cleanup, so none can make a backend after it.
    const results = await Promise.allSettled(
      Array.from({ length: 5 }, () => spawner.connect(key, { pool, wait: WAIT, signal: timeout(READY_MS) })),
    );
    const backends = results.filter((r) => r.status === "fulfilled").map((r) => r.value);
    try {
      for (const r of results) if (r.status === "rejected") throw r.reason;
      const names = new Set(backends.map((b) => b.name));
      assert.equal(names.size, 1, [...names].join(" "));
      assert.ok(backends.every((b) => b.key === key && b.ready));
    } finally {
      await removeAll(key, backends.map((b) => b.name));
    }
  });

  test("a wrong API key is unauthorized", TEST, async () => {
    const stranger = new Spawner({ baseUrl, apiKey: `spk_wrong_${run}`, namespace });
    await assert.rejects(stranger.list({ signal: timeout() }), spawnerError(401, "unauthorized"));
    await assert.rejects(stranger.get(`missing-${run}`, { signal: timeout() }), spawnerError(401, "unauthorized"));
  });

  test("an unknown pool is refused, naming the pool", TEST, async () => {
    const unknown = `no-such-pool-${run}`;
    const attempts = [
      () => spawner.create({ pool: unknown, signal: timeout() }),
      () => spawner.connect(`ts-client-${run}-unknown-pool`, { pool: unknown, signal: timeout() }),
    ];
    for (const attempt of attempts) {
      const err = await attempt().then(
        async (backend) => {
          await remove(backend.name);
          assert.fail(`made ${backend.name} from the unknown pool ${unknown}`);
        },
        (err) => err,
      );
      assert.ok(err instanceof SpawnerError, `expected a SpawnerError, got ${err}`);
      assert.ok(err.status >= 400 && err.status < 500, `status ${err.status}: ${err.message}`);
      assert.ok(err.message.includes(unknown), `message does not name the pool: ${err.message}`);
    }
  });

  test("get of a missing backend is not_found", TEST, async () => {
    await assert.rejects(spawner.get(`missing-${run}`, { signal: timeout() }), spawnerError(404, "not_found"));
  });
}
