/**
 * The SDK's pool of pre-issued slots (clients/sdk/client-slot-session.ts),
 * the one copy shm and rdma share: which numbers it keeps (shm: never the
 * control slot 0; rdma: every slot of the connection), take/put, and what a
 * Connect's failure means for the slot it named.
 */
import test from 'ava';
import { PreissuedSlots, slotAfterFailure } from '../../../clients/sdk/client-slot-session.js';
import { AbortedError, ConnectRefusedError, GatewayUnavailableError, PolicyDeniedError, SlotRefusedError, SockgateError } from '../../../proto/errors.js';

test('shm numbering (first slot 1): the control slot and numbers past the region are never kept', (t) => {
  const pool = new PreissuedSlots(8, 1);
  pool.add([0, 1, 2, 7, 8, 100, -1, 2.5, 3]);
  t.deepEqual([1, 2, 3, 7].filter((n) => pool.has(n)), [1, 2, 3, 7]);
  t.is(pool.size, 4);
  t.false(pool.has(0));
  t.false(pool.has(8));
});

test('rdma numbering (first slot 0): slot 0 is a slot like the others; past `slots` is ignored', (t) => {
  const pool = new PreissuedSlots(4);
  pool.add([0, 3, 4]);
  t.true(pool.has(0));
  t.true(pool.has(3));
  t.false(pool.has(4));
  t.is(pool.size, 2);
});

test('take skips slots not usable yet, put gives one back, clear forgets all', (t) => {
  const pool = new PreissuedSlots(16);
  pool.add([2, 5, 9]);
  const got = pool.take((n) => n !== 2);
  t.is(got, 5);
  t.false(pool.has(5));
  t.is(pool.take(() => false), undefined);
  pool.put(5);
  t.true(pool.has(5));
  t.is(pool.size, 3);
  pool.clear();
  t.is(pool.size, 0);
  t.is(pool.take(() => true), undefined);
});

test('a failed Connect: refused drops the slot, an answered error keeps it, no answer gives it back to the gateway', (t) => {
  t.is(slotAfterFailure(new SlotRefusedError('not yours')), 'drop');
  t.is(slotAfterFailure(new ConnectRefusedError('host said no')), 'keep');
  t.is(slotAfterFailure(new PolicyDeniedError('denied')), 'keep');
  t.is(slotAfterFailure(new GatewayUnavailableError('cut')), 'abort');
  t.is(slotAfterFailure(new AbortedError('cancelled')), 'abort');
  t.is(slotAfterFailure(new SockgateError('unclassified')), 'abort');
  t.is(slotAfterFailure(new Error('not ours at all')), 'abort');
});
