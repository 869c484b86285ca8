/**
 * End-of-stream confirmations of one Gateway, batched: the tcp plane's FIN
 * looks the same whether the destination ended or the gateway died, so each
 * is confirmed over the control plane, and the ones that come in the same
 * turn of the event loop (or while MAX_IN_FLIGHT calls are out) share one
 * ConfirmEnds call. The gateway waits for a socket its JS side still has OPEN
 * (its native link forwarded the FIN first), so nothing here polls.
 */
import { GatewayUnavailableError } from '../../proto/errors.js';
import { SocketState } from '../../proto/gen/sockgate/v1/sockgate.js';

/** Calls out at once; more confirmations wait and ride the next one. */
const MAX_IN_FLIGHT = 4;
/** Ids per call: the gateway's default limits.max_confirm_batch. */
const MAX_BATCH = 1024;

/** One ConfirmEnds call: the states of `ids`, in order. */
export type ConfirmEndsCall = (ids: string[]) => Promise<SocketState[]>;

export class EndConfirmer {
  #queue: { id: string; resolve: () => void; reject: (err: Error) => void }[] = [];
  #inFlight = 0;
  #scheduled = false;

  constructor(
    private readonly call: ConfirmEndsCall,
    private readonly target: string,
  ) {}

  /** Resolves once the gateway says `id` is half-closed or closed; rejects otherwise. */
  confirm(id: string): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#queue.push({ id, resolve, reject });
      this.#schedule();
    });
  }

  #schedule(): void {
    if (this.#scheduled || this.#inFlight >= MAX_IN_FLIGHT || this.#queue.length === 0) return;
    this.#scheduled = true;
    // Ends read in the same poll phase go together.
    setImmediate(() => {
      this.#scheduled = false;
      this.#flush();
    });
  }

  #flush(): void {
    while (this.#queue.length && this.#inFlight < MAX_IN_FLIGHT) {
      const batch = this.#queue.splice(0, MAX_BATCH);
      this.#inFlight++;
      this.call(batch.map((b) => b.id)).then(
        (states) => {
          batch.forEach((b, i) => {
            const st = states[i];
            if (st === SocketState.SOCKET_STATE_HALF_CLOSED || st === SocketState.SOCKET_STATE_CLOSED) b.resolve();
            else b.reject(new GatewayUnavailableError(`the data stream of ${b.id} ended but the gateway reports it ${st === undefined || st === SocketState.SOCKET_STATE_UNSPECIFIED ? 'unknown' : `in state ${st}`}`));
          });
        },
        (err: unknown) => {
          for (const b of batch) b.reject(new GatewayUnavailableError(`gateway ${this.target} could not confirm the end of stream of ${b.id}: ${(err as Error).message}`, { cause: err }));
        },
      ).finally(() => {
        this.#inFlight--;
        this.#schedule();
      });
    }
  }
}
