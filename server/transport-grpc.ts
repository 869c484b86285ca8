/**
 * The `grpc` data plane: payload frames in the bidi `Data` call on the control
 * channel, for clients that can reach nothing but gRPC (HTTP/2 proxies).
 * The first client frame is the attach token; the gateway answers `attached`.
 */
import type { ServerDuplexStream } from '@grpc/grpc-js';
import type { Duplex } from 'node:stream';
import { TransportKind, type TransportOffer } from '../proto/gen/sockgate/v1/transport.js';
import type { DataRequest, DataResponse } from '../proto/gen/sockgate/v1/sockgate.js';
import { AttachTokenError, type AttachRegistry } from './attach.js';
import { AttachFailedError, ProtocolError, toStatus } from '../proto/errors.js';
import { DatagramSocket, StreamSocket, type GatewaySocket } from './socket-table.js';
import type { GatewayMetrics } from './telemetry.js';
import type { OfferContext, OfferOutcome, Transport } from './transport.js';
import { MessageChannel, payloadCodec, type FrameCodec } from '../proto/wire.js';

/** The first frame must arrive within this time. */
const ATTACH_FRAME_TIMEOUT_MS = 5_000;

/** Gateway-side frame mapping. */
export const GATEWAY_CODEC: FrameCodec<DataRequest, DataResponse> = payloadCodec<DataRequest, DataResponse>();

export interface GrpcTransportOptions {
  highWatermark: number;
  registry: AttachRegistry<GatewaySocket>;
  metrics: GatewayMetrics;
}

export class GrpcTransport implements Transport {
  readonly kind = TransportKind.TRANSPORT_KIND_GRPC;
  readonly version = 1;
  /** Calls waiting for their attach frame; failed on close(). */
  private readonly waiting = new Set<ServerDuplexStream<DataRequest, DataResponse>>();
  private closing = false;

  constructor(private readonly options: GrpcTransportOptions) {}

  async start(): Promise<void> {}

  accept(_offer: TransportOffer, _ctx: OfferContext): OfferOutcome {
    return { ok: true, accepted: { kind: this.kind, version: this.version, params: { $case: 'grpc', grpc: {} } } };
  }

  /**
   * Serve one `Data` call. `refuse`, if given, vets the socket a redeemed
   * token names (the service edge checks the caller owns it): an error ends
   * the call with it, the token spent.
   */
  handle(call: ServerDuplexStream<DataRequest, DataResponse>, refuse?: (target: GatewaySocket) => Error | undefined): void {
    const fail = (err: Error, result: 'wrong_token' | 'replayed' | 'expired' | 'error') => {
      this.options.metrics.recordAttach('grpc', result);
      call.emit('error', toStatus(err));
    };
    if (this.closing) return fail(new AttachFailedError('gateway is shutting down'), 'error');
    this.waiting.add(call);
    const timer = setTimeout(() => done(() => fail(new AttachFailedError('no attach frame in time'), 'error')), ATTACH_FRAME_TIMEOUT_MS);
    const done = (then: () => void) => {
      clearTimeout(timer);
      this.waiting.delete(call);
      call.removeListener('data', onFirst);
      call.removeListener('error', onError);
      call.removeListener('end', onEnd);
      then();
    };
    const onError = () => done(() => {});
    const onEnd = () => done(() => fail(new ProtocolError('data stream ended before the attach frame'), 'error'));
    const onFirst = (msg: DataRequest) => {
      call.pause();
      done(() => {
        if (msg.frame?.$case !== 'attachToken') return fail(new ProtocolError('the first frame on a data stream must be the attach token'), 'error');
        let target: GatewaySocket;
        try {
          target = this.options.registry.redeem(msg.frame.attachToken, TransportKind.TRANSPORT_KIND_GRPC);
        } catch (err) {
          const result = err instanceof AttachTokenError && err.failure !== 'wrong_transport' ? err.failure : 'error';
          return fail(err as Error, result);
        }
        const refused = refuse?.(target);
        if (refused) return fail(refused, 'error');
        this.options.metrics.recordAttach('grpc', 'ok');
        call.write({ frame: { $case: 'attached', attached: true } });
        const abort = (err: Error) => call.emit('error', toStatus(err));
        if (target instanceof StreamSocket) {
          target.attach({ transport: this.kind, mode: 'stream', stream: new MessageChannel(call as unknown as Duplex, GATEWAY_CODEC, 'stream', this.options.highWatermark, abort) });
        } else if (target instanceof DatagramSocket) {
          target.attach({ transport: this.kind, mode: 'datagram', stream: new MessageChannel(call as unknown as Duplex, GATEWAY_CODEC, 'datagram', this.options.highWatermark, abort) });
        }
        call.resume();
      });
    };
    call.on('data', onFirst);
    call.on('error', onError);
    call.on('end', onEnd);
  }

  async close(): Promise<void> {
    this.closing = true;
    for (const call of this.waiting) call.emit('error', toStatus(new AttachFailedError('gateway is shutting down')));
    this.waiting.clear();
  }
}
