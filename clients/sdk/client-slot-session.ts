/**
 * The one slot-session protocol, SDK side (the gateway's is
 * server/slot-session.ts): what every session transport (shm, rdma) shares
 * once a session exists — the BINDs of later sockets waiting for the
 * gateway's BOUND (or refusal), answered by slot, with a deadline and an
 * AbortSignal; the process-wide pump every session of the transport shares,
 * made on first use, holding the process only while something needs it, and
 * closed after its last session; and the slots the gateway pre-issued to a
 * session, which a later Connect names (PreissuedSlots). The transports
 * supply the messages (control slot, verbs) and their pump.
 */
import { whenReleased } from '../../native/when-released.js';
import { AbortedError, AttachFailedError, GatewayUnavailableError, SlotRefusedError, SockgateError } from '../../proto/errors.js';

/** Slots a session keeps pre-issued by default (the gateway bounds them too: transports.{shm,rdma}.max_preissued_slots). */
export const PREISSUE_SLOTS = 16;

interface Waiter {
  resolve(): void;
  reject(err: Error): void;
}

/** BINDs waiting for the gateway's answer, by slot. */
export class SlotBinds {
  readonly #waiting = new Map<number, Waiter>();

  /** Whether a BIND of `slot` waits for its answer. */
  has(slot: number): boolean {
    return this.#waiting.has(slot);
  }

  /** Wait for the answer to a BIND of `slot` (sent by the caller); a rejection nobody awaits is not reported. */
  expect(slot: number): Promise<void> {
    const answer = new Promise<void>((resolve, reject) => this.#waiting.set(slot, { resolve, reject }));
    answer.catch(() => {});
    return answer;
  }

  /** The gateway answered for `slot`: bound (no `err`) or refused. False if no BIND of it waited. */
  settle(slot: number, err?: Error): boolean {
    const w = this.#waiting.get(slot);
    if (!w) return false;
    this.#waiting.delete(slot);
    if (err) w.reject(err);
    else w.resolve();
    return true;
  }

  /** The attach gave up on `slot`: a late answer is ignored. */
  forget(slot: number): void {
    this.#waiting.delete(slot);
  }

  /** The session ended: every waiting BIND fails with `err(slot)`. */
  failAll(err: (slot: number) => Error): void {
    const all = [...this.#waiting];
    this.#waiting.clear();
    for (const [slot, w] of all) w.reject(err(slot));
  }
}

/** `p` with a deadline (AttachFailedError `message`) and an AbortSignal (AbortedError); `onGiveUp` runs if either wins. */
export function within<T>(p: Promise<T>, ms: number, signal: AbortSignal | undefined, message: string, onGiveUp?: () => void): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => giveUp(new AttachFailedError(message)), ms);
    const onAbort = () => giveUp(new AbortedError('attach aborted'));
    const done = (err?: Error, v?: T) => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      if (err) reject(err);
      else resolve(v as T);
    };
    const giveUp = (err: Error) => {
      onGiveUp?.();
      done(err);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => done(undefined, v),
      (err: Error) => done(err),
    );
  });
}

/** A pump every session of this process shares: made on first acquire, closed when the last session released it. */
export class SharedPump<T> {
  #value: T | undefined;
  #users = 0;
  constructor(
    private readonly closePump: (v: T) => void,
    /** EBUSY: the I/O thread has not let go yet (closing is retried, bounded: native/when-released.ts). */
    private readonly isBusy: (err: unknown) => boolean,
  ) {}

  /** The pump while some session holds it. */
  get current(): T | undefined {
    return this.#value;
  }

  acquire(make: () => T): T {
    this.#value ??= make();
    this.#users++;
    return this.#value;
  }

  release(): void {
    const v = this.#value;
    if (v === undefined || --this.#users > 0) return;
    this.#value = undefined;
    // Never from inside the pump's own event callback (closing joins its thread): on the next turn.
    setImmediate(() => void whenReleased(() => this.closePump(v), this.isBusy).catch(() => {})).unref();
  }
}

/** What keeps the process alive on a pump (open channels, connections being opened): ref() on the first, unref() after the last. */
export class Holds {
  #n = 0;
  constructor(
    private readonly pump: { ref(): void; unref(): void },
    private readonly closed: () => boolean = () => false,
  ) {}

  add(): void {
    if (this.#n++ === 0 && !this.closed()) this.pump.ref();
  }

  drop(): void {
    if (--this.#n === 0 && !this.closed()) this.pump.unref();
  }
}

/**
 * Slots a gateway pre-issued to one of this client's sessions (shm:
 * ShmAttach.preissued_slots, native/SHM.md; rdma: RdmaAttach.preissued_slots,
 * native/RDMA.md): held until a Connect names one in its offer, which the
 * gateway answers with the socket already linked to it, so no BIND round trip
 * follows. A Connect that fails definitely (the gateway answered with an
 * error) gives its slot back to the pool; one whose outcome is unknown (the
 * call was cut or cancelled) gives it back to the gateway (shm: ABORT, rdma:
 * CLOSE: freed, or its socket reset if it was linked); one the gateway refused
 * (ERR_SOCKGATE_SLOT_REFUSED) drops it.
 */
export class PreissuedSlots {
  readonly #held = new Set<number>();
  /** Slot numbers `firstSlot` .. `slotCount - 1` (shm: slot 0 is the control slot; rdma: all). */
  constructor(
    private readonly slotCount: number,
    private readonly firstSlot = 0,
  ) {}

  get size(): number {
    return this.#held.size;
  }

  has(no: number): boolean {
    return this.#held.has(no);
  }

  /** Slots the gateway pre-issued; numbers outside the session's range are ignored. */
  add(slots: readonly number[]): void {
    for (const no of slots) if (Number.isInteger(no) && no >= this.firstSlot && no < this.slotCount) this.#held.add(no);
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

  /** The session ended: its slots went with it. */
  clear(): void {
    this.#held.clear();
  }
}

/** What a Connect's failure says about a slot it named: still ours ('keep'), refused ('drop'), or unknown ('abort'). */
export function slotAfterFailure(err: unknown): 'keep' | 'drop' | 'abort' {
  if (err instanceof SlotRefusedError) return 'drop';
  // No answer from the gateway's handler (cut, cancelled, timed out): it may have linked the slot.
  if (!(err instanceof SockgateError) || err.constructor === SockgateError || err instanceof GatewayUnavailableError || err instanceof AbortedError) return 'abort';
  return 'keep';
}

/** A pre-issued slot named in one Connect's offer, and how that Connect's outcome settles it. */
export interface NamedSlot<O> {
  readonly offer: O;
  /** The Connect answered (`answer`: its transport parameters, if that transport was accepted) or failed (`err`). */
  settle(answer: { sessionId: string; slot?: number | undefined } | undefined, err?: unknown): void;
}

/**
 * Name slot `no` of session `sessionId` (taken from `pool`) in `offer`. Settles
 * once (a Connect retried after its call was cut settles with the error, then
 * again with the retry's answer), and only while `alive()`: taken by the
 * answer, back to the pool when the answer or a definite failure left it
 * unused, or given back to the gateway by `abort` when the outcome is unknown.
 */
export function nameSlot<O extends object>(offer: O, sessionId: string, no: number, pool: PreissuedSlots, alive: () => boolean, abort: (no: number) => void): NamedSlot<O> {
  let settled = false;
  return {
    offer: { ...offer, sessionId, slot: no },
    settle: (answer, err) => {
      if (settled || !alive()) return;
      settled = true;
      if (err === undefined) {
        // Taken: the socket rides it (linked, or as its reservation to BIND); else it is still ours.
        if (answer?.sessionId !== sessionId || answer.slot !== no) pool.put(no);
        return;
      }
      const after = slotAfterFailure(err);
      if (after === 'keep') pool.put(no);
      else if (after === 'abort') abort(no);
    },
  };
}
