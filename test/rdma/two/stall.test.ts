/**
 * A client that stalls (a paused VM, a stopped process) in VM b of the two-VM
 * lab, against the gateway in VM a (node-a.ts, keepalive 2 s): the gateway
 * gives the silent session up (ERR_SOCKGATE_RDMA_TIMEOUT) while the SDK
 * cannot notice. When the SDK runs again, its next socket races the news of
 * the disconnect: the gateway already answers "new session" for the id the
 * SDK still holds as established. Every such socket must attach (a new
 * session), carry its bytes intact, and nothing may hang.
 *
 * The SDK is a child process (sdk-child.ts, mode `lines`) stopped with
 * SIGSTOP. Rounds differ in when the next socket is asked for: before the
 * process resumes (its request and the disconnect event arrive together), or
 * two seconds after (the SDK has seen the disconnect first).
 */
import test from 'ava';
import { Child, WAIT_MS } from './child.js';
import { metric, metrics } from './lab.js';

const IN_VM = process.env['SOCKGATE_IN_VM'] === '1' && process.env['SOCKGATE_VM_NAME'] === 'b';
const TIMEOUTS = (text: string) => metric(text, 'sockgate_rdma_connection_failures_total', 'ERR_SOCKGATE_RDMA_TIMEOUT');

if (!IN_VM) {
  test.skip('a stalled client: skipped, not inside VM b of the sockgate two-VM lab (suite.ts runs it there)', () => {});
} else {
  test.serial('a stalled client: the gateway times its session out; on resuming, the next socket attaches anew over rdma (both orders of the race)', async (t) => {
    t.timeout(10 * 60_000);
    const child = new Child('lines');
    try {
      const echoed = (n: number) => child.next((r) => r.event === 'second' && child.count((x) => x.event === 'second') >= n, WAIT_MS, `echo ${n}`).then(() => child.reports.filter((x) => x.event === 'second')[n - 1]!);
      child.say('echo');
      t.like(await echoed(1), { transport: 'rdma', shaMatch: true });
      const rounds: Array<'before-resume' | 'after-resume'> = ['before-resume', 'after-resume', 'before-resume'];
      for (const [i, order] of rounds.entries()) {
        const before = TIMEOUTS(await metrics());
        child.proc.kill('SIGSTOP');
        // The gateway hears nothing for 3 keepalive intervals (node-a: 2 s) and ends the session.
        const until = Date.now() + 60_000;
        while (TIMEOUTS(await metrics()) <= before && Date.now() < until) await new Promise((r) => setTimeout(r, 500));
        t.true(TIMEOUTS(await metrics()) > before, `round ${i + 1}: the gateway timed the stalled session out`);
        if (order === 'before-resume') child.say('echo');
        child.proc.kill('SIGCONT');
        if (order === 'after-resume') {
          await new Promise((r) => setTimeout(r, 2_000));
          child.say('echo');
        }
        const r = await echoed(i + 2);
        t.like(r, { transport: 'rdma', shaMatch: true, bytes: 1 << 20 }, `round ${i + 1} (${order}): ${JSON.stringify(r)}`);
      }
      child.proc.stdin!.end();
      t.is(await child.exited, 0);
    } finally {
      child.proc.kill('SIGCONT');
      child.kill();
    }
  });
}
