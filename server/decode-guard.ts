/**
 * Requests that are not a valid protobuf message are the caller's fault, so
 * they come back INVALID_ARGUMENT (ERR_SOCKGATE_INVALID_ARGUMENT), not the
 * INTERNAL grpc-js sends when a deserializer throws (it hard-codes that status
 * before any handler runs). Each method's request deserializer is wrapped so it
 * never throws but yields a marker, and each handler is wrapped so a marked
 * request ends the call with the right status before the handler sees it.
 */
import type { Server, ServiceDefinition, UntypedServiceImplementation, ServerDuplexStream, ServerUnaryCall, sendUnaryData } from '@grpc/grpc-js';
import { InvalidArgumentError, toStatus } from '../proto/errors.js';

/** Marks a request that failed to decode; carries the decoder's message. */
const UNDECODABLE = Symbol('sockgate.undecodable');

interface Undecodable {
  [UNDECODABLE]: string;
}

function undecodable(msg: unknown): string | undefined {
  return typeof msg === 'object' && msg !== null && UNDECODABLE in msg ? (msg as Undecodable)[UNDECODABLE] : undefined;
}

function refusal(reason: string): ReturnType<typeof toStatus> {
  return toStatus(new InvalidArgumentError(`request is not a valid protobuf message: ${reason.slice(0, 200)}`));
}

type AnyHandler = (call: unknown, callback?: unknown) => void;

/** Add `impl` for `def` to `server`, with undecodable requests answered INVALID_ARGUMENT. */
export function addGuardedService(server: Server, def: ServiceDefinition, impl: UntypedServiceImplementation): void {
  const guardedDef: Record<string, unknown> = {};
  const guardedImpl: Record<string, unknown> = {};
  for (const [name, method] of Object.entries(def)) {
    const decode = method.requestDeserialize;
    guardedDef[name] = {
      ...method,
      requestDeserialize: (buf: Buffer) => {
        try {
          return decode(buf);
        } catch (err) {
          return { [UNDECODABLE]: (err as Error)?.message ?? String(err) } satisfies Undecodable;
        }
      },
    };
    // grpc-js matches implementations by the lower-camel or the original name; keep whichever was given.
    const key = impl[name] !== undefined ? name : (method.originalName ?? name);
    const h = impl[key] as AnyHandler | undefined;
    if (!h) continue;
    guardedImpl[key] = wrap(h, method.requestStream, method.responseStream);
  }
  server.addService(guardedDef as ServiceDefinition, guardedImpl as UntypedServiceImplementation);
}

function wrap(h: AnyHandler, requestStream: boolean, responseStream: boolean): AnyHandler {
  if (!requestStream && !responseStream) {
    return (call, callback) => {
      const bad = undecodable((call as ServerUnaryCall<unknown, unknown>).request);
      if (bad !== undefined) return (callback as sendUnaryData<unknown>)(refusal(bad));
      h(call, callback);
    };
  }
  if (!requestStream) {
    return (call) => {
      const bad = undecodable((call as { request: unknown }).request);
      if (bad !== undefined) return void (call as NodeJS.EventEmitter).emit('error', refusal(bad));
      h(call);
    };
  }
  // Streaming requests: grpc-js pushes each decoded message into the call; stop at the first bad one.
  return (call) => {
    const stream = call as ServerDuplexStream<unknown, unknown>;
    const push = stream.push.bind(stream);
    stream.push = (chunk: unknown, encoding?: BufferEncoding) => {
      const bad = chunk === null ? undefined : undecodable(chunk);
      if (bad === undefined) return push(chunk, encoding);
      stream.emit('error', refusal(bad));
      return false;
    };
    h(call);
  };
}
