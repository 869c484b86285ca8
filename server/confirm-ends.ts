/**
 * ConfirmEnds: many stream sockets' end-of-stream confirmations in one call
 * (the tcp plane's FIN looks the same whether the destination ended or the
 * gateway died, so the SDK asks). A native link forwards the host's FIN on the
 * I/O thread before JS records the half-close: a socket still OPEN is waited
 * for here, on its 'transition' event, instead of the client polling.
 */
import { InvalidArgumentError, LimitExceededError } from '../proto/errors.js';
import { SocketState } from '../proto/gen/sockgate/v1/sockgate.js';
import type { Identity } from './policy.js';
import type { SocketTable } from './socket-table.js';

/** How long an OPEN socket is waited for: the I/O thread's lead over JS is a few event-loop turns, far under this. */
const OPEN_WAIT_MS = 2_000;

/** The state of each of `ids` (in order), as ConfirmEndsResponse.states has it. */
export async function confirmEnds(table: SocketTable, identity: Identity, ids: readonly string[], maxBatch: number): Promise<SocketState[]> {
  if (ids.length > maxBatch) throw new LimitExceededError(`ConfirmEnds names ${ids.length} sockets, the limit is ${maxBatch} (limits.max_confirm_batch)`);
  if (ids.some((id) => typeof id !== 'string' || id === '')) throw new InvalidArgumentError('socket_ids must be non-empty strings');
  return Promise.all(ids.map((id) => stateOf(table, identity, id)));
}

async function stateOf(table: SocketTable, identity: Identity, id: string): Promise<SocketState> {
  let state: SocketState;
  try {
    state = table.info(id, identity).state;
  } catch {
    // Unknown here, or not the caller's: never confirmed.
    return SocketState.SOCKET_STATE_UNSPECIFIED;
  }
  if (state !== SocketState.SOCKET_STATE_OPEN) return state;
  const sock = table.get(id, identity, 'admin-read');
  return new Promise<SocketState>((resolve) => {
    const done = (to: SocketState) => {
      clearTimeout(timer);
      sock.off('transition', onTransition);
      resolve(to);
    };
    const onTransition = (to: SocketState) => {
      if (to !== SocketState.SOCKET_STATE_OPEN) done(to);
    };
    const timer = setTimeout(() => done(sock.state), OPEN_WAIT_MS);
    sock.on('transition', onTransition);
  });
}
