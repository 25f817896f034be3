export { Spawner } from "./client.js";
export { SpawnerError } from "./error.js";
export { parseEventStream, type ServerSentEvent } from "./sse.js";
export type {
  Backend,
  BackendState,
  ConnectOptions,
  CreateOptions,
  RequestOptions,
  SpawnerOptions,
  StateEvent,
  StatusOptions,
  Values,
} from "./types.js";
