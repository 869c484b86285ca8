/**
 * HTTP/2 flow-control windows for the gateway's gRPC server. Node's defaults
 * (64 KiB per stream and per connection, 16 KiB frames) let one 64 KiB write
 * on the `grpc` data plane stall for a WINDOW_UPDATE round trip; wider windows
 * keep the pipe full (the frame size stays Node's: nghttp2 sends 16 KiB DATA
 * frames whatever the peer allows). grpc-js (1.14) has no server option for them, so the
 * settings are set on the server it creates (private shape, checked: a
 * grpc-js without it keeps Node's defaults and `widenGrpcWindows` says so).
 *
 * Memory bound: a peer can have at most GRPC_CONNECTION_WINDOW_BYTES unread
 * per control connection in flight (and GRPC_STREAM_WINDOW_BYTES per stream);
 * the channel pauses its call at its high watermark, which stops the window.
 */
import type { Http2Server, Http2Session } from 'node:http2';
import type { Server as GrpcServer } from '@grpc/grpc-js';

/** Per-stream receive window: four 256 KiB coalesced messages in flight. */
export const GRPC_STREAM_WINDOW_BYTES = 1 << 20;
/** Per-connection receive window: a few data streams at full speed, bounded per connection. */
export const GRPC_CONNECTION_WINDOW_BYTES = 2 << 20;

interface GrpcServerInternals {
  commonServerOptions?: { settings?: Record<string, unknown> };
  createHttp2Server?: (...args: unknown[]) => Http2Server;
}

/** Give sessions of `server` the wider windows; false if this grpc-js has no place for them. */
export function widenGrpcWindows(server: GrpcServer): boolean {
  const s = server as unknown as GrpcServerInternals;
  const create = s.createHttp2Server;
  if (!s.commonServerOptions || typeof create !== 'function') return false;
  s.commonServerOptions.settings = {
    ...s.commonServerOptions.settings,
    initialWindowSize: GRPC_STREAM_WINDOW_BYTES,
  };
  s.createHttp2Server = (...args: unknown[]) => {
    const h2 = create.apply(server, args);
    h2.on('session', (session: Http2Session) => {
      try {
        session.setLocalWindowSize(GRPC_CONNECTION_WINDOW_BYTES);
      } catch {
        // a session already closing: nothing to widen
      }
    });
    return h2;
  };
  return true;
}
