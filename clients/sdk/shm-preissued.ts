/**
 * Slots a gateway pre-issued to one of this client's shm sessions
 * (ShmAttach.preissued_slots, native/SHM.md): held until a Connect names one
 * in its offer (ShmOffer.slot), which the gateway answers with the socket
 * already linked to it, so no BIND round trip follows. A Connect that fails
 * definitely (the gateway answered with an error) gives its slot back to the
 * pool; one whose outcome is unknown (the call was cut or cancelled) gives it
 * back to the gateway (ABORT: freed, or its socket reset if it was linked);
 * one the gateway refused (ERR_SOCKGATE_SLOT_REFUSED) drops it.
 */
import { AbortedError, GatewayUnavailableError, SlotRefusedError, SockgateError } from '../../proto/errors.js';
import { CONTROL_SLOT } from '../../proto/shm-wire.js';

/** Slots a session keeps pre-issued by default (the gateway bounds them too: transports.shm.max_preissued_slots). */
export const PREISSUE_SLOTS = 16;

export class PreissuedSlots {
  readonly #held = new Set<number>();
  constructor(private readonly slotCount: number) {}

  get size(): number {
    return this.#held.size;
  }

  has(no: number): boolean {
    return this.#held.has(no);
  }

  /** Slots the gateway pre-issued; numbers outside the region (or the control slot) are ignored. */
  add(slots: readonly number[]): void {
    for (const no of slots) if (Number.isInteger(no) && no !== CONTROL_SLOT && no < this.slotCount) this.#held.add(no);
  }

  /** Take a slot that `usable` says may carry a new socket now (a slot whose last channel here is still closing may not), if any. */
  take(usable: (no: number) => boolean): number | undefined {
    for (const no of this.#held) {
      if (!usable(no)) continue;
      this.#held.delete(no);
      return no;
    }
    return undefined;
  }

  /** A slot taken for a Connect that did not use it. */
  put(no: number): void {
    this.#held.add(no);
  }
}

/** What a Connect's failure says about a slot it named: still ours ('keep'), refused ('drop'), or unknown ('abort'). */
export function slotAfterFailure(err: unknown): 'keep' | 'drop' | 'abort' {
  if (err instanceof SlotRefusedError) return 'drop';
  // No answer from the gateway's handler (cut, cancelled, timed out): it may have linked the slot.
  if (!(err instanceof SockgateError) || err.constructor === SockgateError || err instanceof GatewayUnavailableError || err instanceof AbortedError) return 'abort';
  return 'keep';
}
