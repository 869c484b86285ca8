/**
 * `rdma link delete` during a transfer (issue 5's fallback test), in VM b of
 * the two-VM lab against the gateway in VM a (node-a.ts). The SDK runs in
 * child processes (sdk-child.ts): rxe cannot disassociate a verbs context and
 * librdmacm keeps the device's context open in any process that used rdma_cm,
 * so the kernel's delete finishes only once such a process exits. This worker
 * never touches rdma_cm itself.
 *
 * Checks: the socket streaming over rdma when rxe0 goes fails with an
 * ERR_SOCKGATE_RDMA_* error (not a clean end, not a hang); the same SDK's next
 * socket falls back to tcp with a reason and its bytes arrive intact; once the
 * device is gone a new SDK falls back with NO_RDMA_DEVICE; after `rdma link
 * add`, rdma carries sockets again. Runs after sdk.test.ts (files run in name
 * order, one at a time) and puts rxe0 back whatever happens.
 */
import test from 'ava';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { Child, WAIT_MS } from './child.js';

const IN_VM = process.env['SOCKGATE_IN_VM'] === '1' && process.env['SOCKGATE_VM_NAME'] === 'b';
const DEV = process.env['SOCKGATE_VM_RDMA_DEV'] || 'rxe0';

function rdmaTool(args: string[]): { status: number | null; out: string } {
  const r = spawnSync('rdma', args, { encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

function linkPresent(): boolean {
  return rdmaTool(['link', 'show']).out.includes(`${DEV}/`);
}

function linkAdd(): void {
  if (linkPresent()) return;
  const r = rdmaTool(['link', 'add', DEV, 'type', 'rxe', 'netdev', 'eth0']);
  if (r.status !== 0) throw new Error(`rdma link add ${DEV} failed: ${r.out}`);
}

if (!IN_VM) {
  test.skip('rdma link delete during a transfer: skipped, not inside VM b of the sockgate two-VM lab (suite.ts runs it there)', () => {});
} else {
  test.after.always(() => linkAdd());

  test.serial('rdma link delete during a transfer: that socket fails with ERR_SOCKGATE_RDMA_*, later sockets fall back to tcp, rdma returns after link add', async (t) => {
    t.timeout(10 * 60_000);
    t.true(linkPresent(), `${DEV} is there to begin with`);
    const streamer = new Child('stream');
    const children: Child[] = [streamer];
    let del: ChildProcess | undefined;
    try {
      t.like(await streamer.next((r) => r.event === 'connected' || r.event === 'crashed', WAIT_MS, 'the connect'), { event: 'connected', transport: 'rdma' });
      // Bytes are flowing: pull the device out from under them.
      await streamer.next((r) => r.event === 'progress' && Number(r['sent']) >= 8 << 20, WAIT_MS, '8 MiB sent');
      del = spawn('rdma', ['link', 'delete', DEV], { stdio: 'ignore' });
      const deleted = new Promise<number | null>((resolve) => del!.once('exit', resolve));
      const end = await streamer.next((r) => r.event === 'failed' || r.event === 'finished', WAIT_MS, 'the stream to end');
      t.log(`stream ended after ${(Number(end['sent']) / 2 ** 20).toFixed(1)} MiB: ${String(end['code'])} ${String(end['message'])}`);
      t.is(end.event, 'failed', 'the transfer did not complete as if nothing happened');
      t.regex(String(end['code']), /^ERR_SOCKGATE_RDMA_/, 'the socket failed with an rdma error');

      // The same SDK's next socket: rdma fails to attach, tcp carries it.
      const second = await streamer.next((r) => r.event === 'second', WAIT_MS, 'the second socket');
      t.log(`second socket: ${JSON.stringify(second)}`);
      t.is(second['transport'], 'tcp');
      const fb = (second['fallbacks'] as Array<{ transport: string; reason: string }>) ?? [];
      // rdma_cm no longer finds a device for the address: ADDR_ERROR with ENODEV.
      t.like(fb[0], { transport: 'rdma', reason: 'NO_RDMA_DEVICE' });
      t.true(second['shaMatch'] as boolean, 'echoed bytes intact');
      t.is(await streamer.exited, 0);

      // With the child gone the kernel finishes the delete.
      const code = await Promise.race([deleted, new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 60_000).unref())]);
      t.is(code, 0, 'rdma link delete finished once no process held the device');
      t.false(linkPresent(), `${DEV} is gone`);

      // A new SDK on a host without a device: NO_RDMA_DEVICE, tcp.
      const plain = new Child('echo');
      children.push(plain);
      const p = await plain.next((r) => r.event === 'second', WAIT_MS, 'the socket without a device');
      t.is(p['transport'], 'tcp');
      t.like((p['fallbacks'] as unknown[])[0], { transport: 'rdma', reason: 'NO_RDMA_DEVICE' });
      t.true(p['shaMatch'] as boolean);

      // The device back: rdma again.
      linkAdd();
      const again = new Child('echo');
      children.push(again);
      const a = await again.next((r) => r.event === 'second', WAIT_MS, 'the socket after link add');
      t.is(a['transport'], 'rdma', JSON.stringify(a));
      t.true(a['shaMatch'] as boolean);
    } finally {
      for (const c of children) c.kill();
      if (del && del.exitCode === null) await new Promise((r) => setTimeout(r, 5_000));
    }
  });
}
