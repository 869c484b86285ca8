/**
 * EndConfirmer (clients/sdk/end-confirm.ts): confirmations asked in one turn
 * of the event loop share one ConfirmEnds call; only HALF_CLOSED and CLOSED
 * confirm; a failed call fails each of its confirmations with
 * GatewayUnavailableError; calls in flight are bounded and the rest wait.
 */
import test from 'ava';
import { SocketState } from '../../../proto/gen/sockgate/v1/sockgate.js';
import { EndConfirmer } from '../../../clients/sdk/end-confirm.js';

test('one call per turn for many ends; states decide; a failed call fails its ends', async (t) => {
  const calls: string[][] = [];
  const states: Record<string, SocketState> = { a: SocketState.SOCKET_STATE_HALF_CLOSED, b: SocketState.SOCKET_STATE_CLOSED, c: SocketState.SOCKET_STATE_OPEN, d: SocketState.SOCKET_STATE_UNSPECIFIED };
  const ec = new EndConfirmer(async (ids) => {
    calls.push(ids);
    if (ids.includes('boom')) throw new Error('connection dropped');
    return ids.map((id) => states[id] ?? SocketState.SOCKET_STATE_UNSPECIFIED);
  }, 'test-target');
  const results = await Promise.allSettled(['a', 'b', 'c', 'd'].map((id) => ec.confirm(id)));
  t.deepEqual(calls, [['a', 'b', 'c', 'd']], 'one call for the four');
  t.deepEqual(results.map((r) => r.status), ['fulfilled', 'fulfilled', 'rejected', 'rejected']);
  for (const r of results.slice(2)) t.is(((r as PromiseRejectedResult).reason as { code: string }).code, 'ERR_SOCKGATE_GATEWAY_UNAVAILABLE');
  const failed = await Promise.allSettled([ec.confirm('boom'), ec.confirm('a')]);
  t.deepEqual(failed.map((r) => r.status), ['rejected', 'rejected'], 'a failed call fails each end it carried');
  t.regex(String((failed[1] as PromiseRejectedResult).reason), /could not confirm the end of stream of a/);
});

test('at most 4 calls in flight; the ends that wait ride the next one', async (t) => {
  let inFlight = 0;
  let most = 0;
  const calls: string[][] = [];
  const ec = new EndConfirmer(async (ids) => {
    calls.push(ids);
    most = Math.max(most, ++inFlight);
    await new Promise((r) => setTimeout(r, 20));
    inFlight--;
    return ids.map(() => SocketState.SOCKET_STATE_CLOSED);
  }, 'test-target');
  const all: Promise<void>[] = [];
  for (let turn = 0; turn < 10; turn++) {
    all.push(ec.confirm(`s${turn}-0`), ec.confirm(`s${turn}-1`));
    await new Promise((r) => setImmediate(r));
  }
  await Promise.all(all);
  t.true(most <= 4, `${most} calls in flight`);
  t.is(calls.flat().length, 20, 'every end confirmed once');
  t.true(calls.length < 10, `${calls.length} calls for 10 turns of ends`);
});
