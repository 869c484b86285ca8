/**
 * The Shutdown RPC on shm sockets: shutdown(2) of the gateway's host socket
 * in order with the rings. SHUT_WR: the target gets FIN after the bytes sent
 * before, and can still answer; SHUT_RD: the client's stream ends after what
 * the target had sent.
 */
import test from 'ava';
import { once } from 'node:events';
import type { Socket } from 'node:net';
import { readAll, startGateway, tcpServer, within, type TestGateway } from '../../helpers/harness.js';

let gw: TestGateway;
test.before(async () => {
  gw = await startGateway();
});
test.after.always(async () => {
  await gw?.stop();
});

async function pair(): Promise<{ sock: Awaited<ReturnType<TestGateway['sdk']['connect']>>; ts: Socket; close(): Promise<void> }> {
  const conns: Socket[] = [];
  const target = await tcpServer((c) => conns.push(c));
  const sock = await gw.sdk.connect(target.uri, { transports: ['shm'] });
  await within((async () => { while (!conns.length) await new Promise((r) => setTimeout(r, 5)); })(), 5000, 'target connection');
  return { sock, ts: conns[0]!, close: target.close };
}

test.serial('shm: Shutdown(write) sends FIN to the target after the bytes before it; the target still answers', async (t) => {
  const { sock, ts, close } = await pair();
  try {
    t.is(sock.transport, 'shm');
    const atTarget = readAll(ts);
    sock.write('before-shutdown');
    await within((async () => { while (ts.readableLength === 0 && ts.bytesRead < 15) await new Promise((r) => setTimeout(r, 5)); })(), 5000, 'bytes reach the target');
    await gw.sdk.shutdown(sock.socketId, 'write');
    t.is((await within(atTarget, 5000, 'target sees FIN')).toString(), 'before-shutdown');
    const atClient = readAll(sock);
    ts.end('answer');
    t.is((await within(atClient, 5000, 'client reads the answer')).toString(), 'answer');
    sock.end();
  } finally {
    sock.destroy();
    await close();
  }
});

test.serial('shm: Shutdown(read) ends the client stream after what the target had sent', async (t) => {
  const { sock, ts, close } = await pair();
  try {
    const atClient = readAll(sock);
    ts.write('early');
    await within((async () => { while (sock.bytesRead < 5) await new Promise((r) => setTimeout(r, 5)); })(), 5000, 'bytes reach the client');
    await gw.sdk.shutdown(sock.socketId, 'read');
    t.is((await within(atClient, 5000, 'client stream ends')).toString(), 'early');
    // The write direction still works.
    const atTarget = readAll(ts);
    sock.end('still-writing');
    t.is((await within(atTarget, 5000, 'target reads')).toString(), 'still-writing');
    ts.end();
    await once(ts, 'close').catch(() => {});
  } finally {
    sock.destroy();
    await close();
  }
});
