/**
 * 10,000 idle sockets: a region with 10,000 slots, each ring pair opened and
 * touched (one byte each way, as after a short exchange), each pumped to an
 * fd. Gateway RSS per socket must stay under 64 KiB.
 */
import test from 'ava';
import { readFileSync } from 'node:fs';
import { dupFd, Eventfd, Pump, ShmRegion, socketpair, closeFd, type PumpLink } from '../../native/index.js';
import { sleep, until } from './helpers.js';

const SOCKETS = 10_000;
const BUDGET = 64 * 1024;

function rssBytes(): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
  return Number(m![1]) * 1024;
}

test.serial('10,000 idle ring pairs with pump links cost < 64 KiB of RSS each', async (t) => {
  const gwBell = new Eventfd();
  const clBell = new Eventfd();
  await sleep(50);
  const rss0 = rssBytes();
  const gw = ShmRegion.create({ slots: SOCKETS, maxRingSize: 256 * 1024 });
  gw.setDoorbells(gwBell, clBell);
  const cl = ShmRegion.attach(dupFd(gw.fd));
  cl.setDoorbells(clBell, gwBell);
  const one = Buffer.from([42]);
  const got = Buffer.alloc(1);
  for (let s = 0; s < SOCKETS; s++) {
    gw.openSlot(s, 4096);
    cl.write(s, one);
    gw.read(s, got);
    gw.write(s, one);
    cl.read(s, got);
  }
  cl.close(); // the client's mapping is not the gateway's memory: unmap it before measuring
  const rssOpen = rssBytes();
  const pump = new Pump();
  const [a, b] = socketpair();
  const links: PumpLink[] = [];
  for (let s = 0; s < SOCKETS; s++) links.push(pump.link(gw, s, dupFd(a)));
  await until(() => pump.activeLinks === SOCKETS, 10_000, 'links');
  await sleep(200);
  const rss1 = rssBytes();
  const perSocket = (rss1 - rss0) / SOCKETS;
  const ringsOnly = (rssOpen - rss0) / SOCKETS;
  t.log(`gateway RSS per idle socket: ${(perSocket / 1024).toFixed(2)} KiB (rings ${(ringsOnly / 1024).toFixed(2)} KiB, ` +
    `pump link + fd + JS object ${((rss1 - rssOpen) / SOCKETS / 1024).toFixed(2)} KiB); region virtual size ${(gw.size / 2 ** 30).toFixed(1)} GiB`);
  t.true(perSocket < BUDGET, `${perSocket} bytes per socket`);
  t.true(perSocket > 0);
  const ends = await Promise.all(links.map((l) => l.close()));
  t.true(ends.every((e) => e.reason === 'aborted'));
  for (let s = 0; s < SOCKETS; s++) gw.closeSlot(s);
  t.is(gw.grantedBytes, 0);
  gw.close();
  pump.close();
  gwBell.close();
  clBell.close();
  closeFd(a);
  closeFd(b);
});
