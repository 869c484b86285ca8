/**
 * The one slot-session book (server/slot-session.ts) with shm-like rules, as
 * a unit: slot numbering past a control slot, overflow into a further
 * session, the ring charge and its release, the tie of a reservation to the
 * socket at issue and the one claim after a token is redeemed (only the
 * socket the reservation was issued to claims it), socketRemoved, refusal
 * memory, and pre-issued slots (bound, take by the owner once, charged on
 * take, given back). rdma's rules are covered in transport-rdma.test.ts.
 */
import test from 'ava';
import { Socket } from 'node:net';
import { DeclineReason } from '../../proto/gen/sockgate/v1/transport.js';
import type { Identity } from '../../server/policy.js';
import type { GatewaySocket } from '../../server/socket-table.js';
import { StreamSocket } from '../../server/stream-socket.js';
import { SessionSlot, SlotBook, SlotSession } from '../../server/slot-session.js';

class Slot extends SessionSlot<Session> {}
class Session extends SlotSession<Slot> {
  charged = 0;
}

function identity(name: string): Identity {
  return { name, admin: false, maxSockets: 100, source: 'token', transports: new Set(['shm']) } as Identity;
}

/** A book like shm's: slot 0 kept for control, 3 socket slots, 10 bytes a reservation out of `budget`. */
function book(budget = 1000, events: string[] = []) {
  let left = budget;
  return new SlotBook<Session, Slot>({
    label: 'shm',
    firstSlot: 1,
    slots: 3,
    slotsKey: 'transports.shm.slots_per_session',
    maxSessions: Number.POSITIVE_INFINITY,
    maxSessionsPerIdentity: Number.POSITIVE_INFINITY,
    reservationMs: 60_000,
    newSession: (id, who) => new Session(id, who),
    newSlot: (s, no) => new Slot(s, no),
    charge: (_who, s) => {
      if (left < 10) return `cap reached: ${left} bytes left`;
      left -= 10;
      s.charged += 10;
      return '';
    },
    slotFreed: (slot) => {
      events.push(`freed ${slot.session.id}/${slot.no}`);
      left += 10;
      slot.session.charged -= 10;
    },
    sessionReleased: (s) => void events.push(`released ${s.id}`),
  });
}

function stream(id: string, who: Identity): StreamSocket {
  return new StreamSocket(id, who, new Socket());
}

test('reserve: slots after the control slot, then overflow into a fresh session; the charge declines RESOURCE_LIMIT', (t) => {
  const alice = identity('alice');
  const b = book(50);
  const got = Array.from({ length: 5 }, () => b.reserve(alice, 'alice-session-1'));
  const ok = got.map((r) => (r.ok ? `${r.session.id === 'alice-session-1' ? 'named' : 'overflow'}/${r.slot.no}` : 'declined'));
  t.deepEqual(ok, ['named/1', 'named/2', 'named/3', 'overflow/1', 'overflow/2']);
  t.true(got[3]!.ok && got[3]!.newSession, 'the overflow session is new');
  const over = b.reserve(alice, 'alice-session-1');
  t.false(over.ok);
  if (!over.ok) {
    t.is(over.reason, DeclineReason.DECLINE_REASON_RESOURCE_LIMIT);
    t.regex(over.detail, /cap reached/);
  }
  t.is(b.size, 2);
});

test('claim: only the socket a reservation was issued to claims it; a wrong claim frees the claimant\'s own reservation', (t) => {
  const alice = identity('alice');
  const events: string[] = [];
  const b = book(1000, events);
  const ra = b.reserve(alice, 'alice-session-1');
  const rb = b.reserve(alice, 'alice-session-1');
  if (!ra.ok || !rb.ok) return t.fail('declined');
  const a = stream('a', alice);
  const s2 = stream('b', alice);
  t.true(b.issued(a, ra.session.id, ra.slot.no));
  t.true(b.issued(s2, rb.session.id, rb.slot.no));
  // b's token presented for a's slot: refused, and b (its token spent) loses its own reservation; a's stays.
  const wrong = b.claim(s2, { session: ra.session, no: ra.slot.no });
  t.like(wrong, { ok: false, reason: 'no_session' });
  t.is(ra.session.slots.get(ra.slot.no), ra.slot, "a's reservation stays");
  t.false(rb.session.slots.has(rb.slot.no), "b's reservation is freed");
  t.deepEqual(events, [`freed alice-session-1/${rb.slot.no}`]);
  const right = b.claim(a, { session: ra.session, no: ra.slot.no });
  t.true(right.ok && right.slot === ra.slot && right.target === a);
  // Claimed once: the transport links it, and the same socket cannot claim again.
  ra.slot.state = 'open';
  t.like(b.claim(a, { session: ra.session, no: ra.slot.no }), { ok: false, reason: 'no_session' });
});

test('claim: a socket that does not wait for an attach is refused not_waiting; a socket that was never issued one holds none', (t) => {
  const alice = identity('alice');
  const b = book();
  const r = b.reserve(alice, 'alice-session-1');
  if (!r.ok) return t.fail('declined');
  const dgram = { id: 'd', identity: alice } as unknown as GatewaySocket;
  t.true(b.issued(dgram, r.session.id, r.slot.no));
  t.like(b.claim(dgram), { ok: false, reason: 'not_waiting' });
  t.is(b.size, 0, 'its reservation was freed, and the pending session with it');
  t.like(b.claim(stream('x', alice)), { ok: false, reason: 'no_session' });
});

test('socketRemoved frees a reservation at once; refuse() declines offers naming the session, then forgets it', async (t) => {
  const alice = identity('alice');
  const events: string[] = [];
  const b = book(1000, events);
  const r = b.reserve(alice, 'alice-session-1');
  const r2 = b.reserve(alice, 'alice-session-1');
  if (!r.ok || !r2.ok) return t.fail('declined');
  const sock = stream('s', alice);
  b.issued(sock, r.session.id, r.slot.no);
  b.socketRemoved(sock);
  t.false(r.session.slots.has(r.slot.no));
  t.is(b.reservationOf(sock), undefined);
  b.refuse(r.session, 'uid maps to another identity', 30);
  t.is(r.session.slots.size, 0);
  t.true(events.includes(`released ${r.session.id}`));
  const again = b.reserve(alice, 'alice-session-1');
  t.like(again, { ok: false, reason: DeclineReason.DECLINE_REASON_POLICY, detail: 'uid maps to another identity' });
  await new Promise((res) => setTimeout(res, 80));
  const fresh = b.reserve(alice, 'alice-session-1');
  t.true(fresh.ok && fresh.newSession && fresh.slot.no === 1, 'forgotten after its memory: the id starts over');
});

test('pre-issue: live sessions only, bounded, taking a slot number each; take by owner once, charged on take; giveBack and unissue', (t) => {
  const alice = identity('alice');
  const mallory = identity('mallory');
  const events: string[] = [];
  const b = book(35, events); // 10 bytes a charge: the reservation, the overflow's and one take fit
  const r = b.reserve(alice, 'alice-session-1');
  if (!r.ok) return t.fail('declined');
  t.deepEqual(b.preissue(r.session, 5, 5), [], 'a pending session gets none');
  r.session.state = 'live';
  t.deepEqual(b.preissue(r.session, 5, 1), [2], 'at most the bound unused');
  t.deepEqual(b.preissue(r.session, 5, 5), [3], 'at most the free slot numbers (3 socket slots)');
  t.is(r.session.preissued, 2);
  t.like(b.reserve(alice, 'alice-session-1'), { ok: true, newSession: true }, 'a full session (pre-issued slots count) overflows');
  const detail = (x: ReturnType<typeof b.take>) => (x.ok ? 'ok' : `${x.why}: ${x.detail}`);
  // Another identity (told nothing of the owner), a malformed id, a slot in use: refused.
  t.regex(detail(b.take(mallory, 'alice-session-1', 2)), /^refused: .*not pre-issued to identity "mallory"/);
  t.notRegex(detail(b.take(mallory, 'alice-session-1', 2)), /alice"/);
  t.regex(detail(b.take(alice, 'no', 2)), /^refused/);
  t.regex(detail(b.take(alice, 'alice-session-1', 1)), /^refused: .*in use/);
  const took = b.take(alice, 'alice-session-1', 2);
  if (!took.ok) return t.fail(detail(took));
  t.true(took.slot.state === 'reserved' && took.slot.preissued);
  t.regex(detail(b.take(alice, 'alice-session-1', 2)), /^refused: .*in use/, 'not twice');
  t.regex(detail(b.take(alice, 'alice-session-1', 3)), /^resource: cap reached/, 'the take is charged: over the cap');
  t.is(r.session.slots.get(3)?.state, 'issued', 'a take over the cap leaves the slot pre-issued');
  t.is(r.session.preissued, 1);
  b.giveBack(took.slot);
  t.is(took.slot.state, 'issued');
  t.is(r.session.preissued, 2);
  t.true(events.includes('freed alice-session-1/2'), 'giving back returns the charge');
  b.unissue(r.session, 3);
  t.false(r.session.slots.has(3));
  t.false(events.includes('freed alice-session-1/3'), 'an unused pre-issued slot was never charged');
  t.is(r.session.preissued, 1);
  b.remove(r.session);
  t.is(r.session.preissued, 0);
});
