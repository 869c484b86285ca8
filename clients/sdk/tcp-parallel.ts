/**
 * Parallel open on the tcp plane: once a Gateway knows its data port (from an
 * earlier tcp attach), a stream Connect that offers tcp first also dials the
 * data port at once and sends a preamble carrying a fresh random nonce, which
 * the Connect's tcp offer carries too (TcpOffer.open_nonce). The gateway
 * issues the nonce as the attach token and links the waiting connection as
 * soon as both are there, so when the Connect returns the socket is linked and
 * no attach round trip follows. The payload never rides the control plane.
 * A gateway that issues another token (an older one, or a nonce it refused)
 * gets the ordinary attach; the early connection is dropped.
 */
import { randomBytes } from 'node:crypto';
import type { Duplex } from 'node:stream';
import { TransportKind, type Accepted, type TransportOffer } from '../../proto/gen/sockgate/v1/transport.js';
import { AttachFailedError } from '../../proto/errors.js';
import { startTcpAttach, type TcpAttach } from './attach-plane.js';
import type { SmcDial } from './smc-dial.js';

/** Nonce length: the gateway's attach token length (server/attach.ts ATTACH_TOKEN_BYTES). */
const NONCE_BYTES = 32;

/** A data connection started with a Connect, waiting to learn whether the gateway took its nonce. */
export interface EarlyAttach {
  readonly nonce: Buffer;
  readonly host: string;
  readonly port: number;
  readonly attach: TcpAttach;
}

export class ParallelOpen {
  #addr: { host: string; port: number } | undefined;

  constructor(
    private readonly enabled: boolean,
    /** GatewayOptions.smc: the early data connection is dialed the same way as the ordinary one. */
    private readonly smc: SmcDial = 'off',
  ) {}

  /** The data port seen in an accepted tcp offer (the next Connects may dial it at once). */
  learn(host: string, port: number): void {
    if (this.enabled && host && port > 0) this.#addr = { host, port };
  }

  /** `offers` with a nonce on a leading tcp offer, and its data connection started; unchanged when there is nothing to start. */
  begin(offers: TransportOffer[], signal?: AbortSignal): { offers: TransportOffer[]; early?: EarlyAttach } {
    const addr = this.#addr;
    if (!addr || offers[0]?.kind !== TransportKind.TRANSPORT_KIND_TCP) return { offers };
    const nonce = randomBytes(NONCE_BYTES);
    const attach = startTcpAttach(addr, nonce, 'stream', signal, this.smc);
    // Settled by take() or drop(); a failure before then must not be unhandled.
    attach.reply.catch(() => {});
    return { offers: [{ ...offers[0], params: { $case: 'tcp', tcp: { openNonce: nonce } } }, ...offers.slice(1)], early: { nonce, ...addr, attach } };
  }

  /**
   * The channel of `early` if the gateway took its nonce for `accepted`;
   * undefined (and the early connection dropped) if not.
   */
  take(early: EarlyAttach | undefined, accepted: Accepted | undefined): Promise<Duplex> | undefined {
    if (!early) return undefined;
    const p = accepted?.params;
    if (p?.$case === 'tcp' && p.tcp.host === early.host && p.tcp.port === early.port && Buffer.from(accepted!.attachToken).equals(early.nonce)) {
      return early.attach.reply.catch((err: Error) => {
        // The address may be stale (the gateway moved): learn it again from an ordinary attach.
        if (this.#addr?.host === early.host && this.#addr.port === early.port) this.#addr = undefined;
        throw err;
      });
    }
    this.drop(early);
    return undefined;
  }

  drop(early: EarlyAttach | undefined): void {
    early?.attach.abort(new AttachFailedError('parallel open not taken'));
  }
}
