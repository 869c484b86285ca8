/**
 * Data-plane negotiation (SMC's CLC handshake, in spirit): walk the client's
 * offers in its order of preference, take the first transport that accepts,
 * and record a reason for each one passed over.
 */
import { DeclineReason, TransportKind, type Accepted, type Fallback, type NegotiationResult, type TransportOffer } from '../proto/gen/sockgate/v1/transport.js';
import type { AttachRegistry } from './attach.js';
import { SlotRefusedError } from '../proto/errors.js';
import { transportNameOfKind, type TransportName } from '../proto/transports.js';
import type { Policy } from './policy.js';
import { reasonName, transportName, type GatewaySocket } from './socket-table.js';
import type { GatewayMetrics } from './telemetry.js';
import type { OfferContext, Transport } from './transport.js';
import { tracer } from '../native/trace.js';

const trace = tracer('negotiate');

/** Offers considered per negotiation; more is a hostile or broken client. */
const MAX_OFFERS = 16;
/** What a client that offers nothing gets: the transports that work anywhere. */
const DEFAULT_OFFERS: readonly TransportOffer[] = [
  { kind: TransportKind.TRANSPORT_KIND_TCP, version: 1, params: undefined },
  { kind: TransportKind.TRANSPORT_KIND_GRPC, version: 1, params: undefined },
];

export interface Decision {
  /** The chosen transport's attach parameters, without token. */
  accepted: Omit<Accepted, 'attachToken' | 'tokenExpiresAtMs'> | undefined;
  fallbacks: Fallback[];
  /** tcp accepted with a parallel-open nonce in its offer: issued as the token (TcpOffer.open_nonce). */
  nonce?: Uint8Array;
}

export class Negotiator {
  constructor(
    /** Transports this gateway serves, by kind. */
    private readonly transports: ReadonlyMap<TransportKind, Transport>,
    /** Transports enabled in config (a kind can be built but disabled). */
    private readonly enabled: ReadonlySet<TransportName>,
    private readonly policy: Policy,
    private readonly registry: AttachRegistry<GatewaySocket>,
    private readonly metrics: GatewayMetrics,
    /** Why a transport kind is missing from `transports` (e.g. the native addon did not load), for the decline detail. */
    private readonly unavailable: (kind: TransportKind) => string | undefined = () => undefined,
  ) {}

  /** Decide a transport for `offers`; never throws for a bad offer. */
  async decide(offers: readonly TransportOffer[], ctx: OfferContext, prior: readonly Fallback[] = []): Promise<Decision> {
    const fallbacks: Fallback[] = [...prior];
    const seen = new Set<TransportKind>();
    const list = offers.length ? offers.slice(0, MAX_OFFERS) : DEFAULT_OFFERS;
    for (const offer of list) {
      if (seen.has(offer.kind)) continue;
      seen.add(offer.kind);
      const decline = (reason: DeclineReason, detail: string) => {
        fallbacks.push({ kind: offer.kind, reason, detail });
        this.metrics.recordFallback(transportName(offer.kind), reasonName(reason));
        trace(`${ctx.identity.name}: pass over ${transportName(offer.kind)}: ${reasonName(reason)} (${detail})`);
      };
      const name = transportNameOfKind(offer.kind);
      if (!name) {
        decline(DeclineReason.DECLINE_REASON_UNSUPPORTED, `unknown transport ${offer.kind}`);
        continue;
      }
      if (!this.enabled.has(name)) {
        decline(DeclineReason.DECLINE_REASON_UNSUPPORTED, `transport ${name} is disabled on this gateway (transports.enabled)`);
        continue;
      }
      if (!this.policy.allowsTransport(ctx.identity, name)) {
        decline(DeclineReason.DECLINE_REASON_POLICY, `identity "${ctx.identity.name}" may not use transport ${name}`);
        continue;
      }
      const transport = this.transports.get(offer.kind);
      if (!transport) {
        const why = this.unavailable(offer.kind);
        decline(DeclineReason.DECLINE_REASON_UNSUPPORTED, `transport ${name} is not available in this build${why ? `: ${why}` : ''}`);
        continue;
      }
      if (offer.version !== 0 && offer.version < 1) {
        decline(DeclineReason.DECLINE_REASON_VERSION_MISMATCH, `client speaks ${name} v${offer.version}, gateway needs v1..v${transport.version}`);
        continue;
      }
      let outcome;
      try {
        outcome = await transport.accept(offer, ctx);
      } catch (err) {
        // A Connect naming a pre-issued slot it may not use is refused, not passed over to the next offer.
        if (err instanceof SlotRefusedError) throw err;
        decline(DeclineReason.DECLINE_REASON_RESOURCE_LIMIT, `transport ${name} failed: ${(err as Error).message}`);
        continue;
      }
      if (!outcome.ok) {
        decline(outcome.reason, outcome.detail);
        continue;
      }
      const nonce = offer.kind === TransportKind.TRANSPORT_KIND_TCP && offer.params?.$case === 'tcp' ? offer.params.tcp.openNonce : undefined;
      return { accepted: outcome.accepted, fallbacks, ...(nonce?.length ? { nonce } : {}) };
    }
    return { accepted: undefined, fallbacks };
  }

  /** A decision whose socket never came to be (its host connect failed): the chosen transport releases what it reserved. */
  abandon(decision: Decision): void {
    if (decision.accepted) this.transports.get(decision.accepted.kind)?.abandoned?.(decision.accepted);
  }

  /**
   * Issue the attach token for a decided transport and record the result on the
   * socket. `notAfterMs` caps the token's expiry (a socket's pending time is
   * bounded from its creation, however often it renegotiates).
   */
  issue(socket: GatewaySocket, decision: Decision, onExpire: () => void, notAfterMs?: number): NegotiationResult {
    socket.setFallbacks(decision.fallbacks);
    if (!decision.accepted) return { accepted: undefined, fallbacks: socket.fallbacks };
    const { token, expiresAtMs } = this.registry.issue(socket, decision.accepted.kind, onExpire, notAfterMs, decision.nonce);
    // The transport may amend the answer (shm: a pre-issued slot it could not link after all).
    const accepted = this.transports.get(decision.accepted.kind)?.issued?.(socket, decision.accepted, token) ?? decision.accepted;
    return { accepted: { ...accepted, attachToken: token, tokenExpiresAtMs: expiresAtMs }, fallbacks: socket.fallbacks };
  }
}
