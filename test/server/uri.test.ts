import test from 'ava';
import { InvalidUriError } from '../../proto/errors.js';
import { formatUri, parseUri, type ParseUriOptions } from '../../proto/uri.js';

/** Expect `input` to be refused with an InvalidUriError whose message matches `message`. */
function rejects(t: import('ava').ExecutionContext, input: unknown, message: RegExp, options?: ParseUriOptions): void {
  const err = t.throws(() => parseUri(input, options), { instanceOf: InvalidUriError }, JSON.stringify(input)?.slice(0, 60));
  t.regex(err?.message ?? '', message, JSON.stringify(input)?.slice(0, 60));
  t.is(err?.code, 'ERR_SOCKGATE_INVALID_URI');
}

test('tcp and udp with host names', (t) => {
  t.deepEqual(parseUri('tcp://example.com:443'), {
    scheme: 'tcp', protocol: 'tcp', family: 0, host: 'example.com', port: 443, hostIsIp: 0,
  });
  t.deepEqual(parseUri('udp://dns.internal:53'), {
    scheme: 'udp', protocol: 'udp', family: 0, host: 'dns.internal', port: 53, hostIsIp: 0,
  });
  t.is(parseUri('tcp://localhost:1').host, 'localhost');
  t.is(parseUri('tcp://my_host-1.svc:65535').port, 65535);
});

test('host names are lowercased and lose a trailing dot; the scheme is case-insensitive', (t) => {
  const u = parseUri('TCP://Example.COM.:80');
  t.is(u.scheme, 'tcp');
  t.is(u.host, 'example.com');
});

test('IPv4 literals', (t) => {
  t.deepEqual(parseUri('tcp://127.0.0.1:8080'), {
    scheme: 'tcp', protocol: 'tcp', family: 0, host: '127.0.0.1', port: 8080, hostIsIp: 4,
  });
  t.deepEqual(parseUri('udp://8.8.8.8:53'), {
    scheme: 'udp', protocol: 'udp', family: 0, host: '8.8.8.8', port: 53, hostIsIp: 4,
  });
});

test('bracketed IPv6 literals, with tcp6/udp6 and with plain tcp/udp', (t) => {
  t.deepEqual(parseUri('tcp6://[::1]:80'), { scheme: 'tcp6', protocol: 'tcp', family: 6, host: '::1', port: 80, hostIsIp: 6 });
  t.deepEqual(parseUri('udp6://[2001:db8::53]:53'), {
    scheme: 'udp6', protocol: 'udp', family: 6, host: '2001:db8::53', port: 53, hostIsIp: 6,
  });
  t.deepEqual(parseUri('tcp://[::1]:80'), { scheme: 'tcp', protocol: 'tcp', family: 0, host: '::1', port: 80, hostIsIp: 6 });
  t.is(parseUri('tcp6://[::ffff:127.0.0.1]:80').hostIsIp, 6);
  t.is(parseUri('udp6://[fe80::1%eth0]:5').host, 'fe80::1%eth0');
  // tcp6 with a host name asks for its IPv6 addresses.
  t.deepEqual(parseUri('tcp6://example.com:443'), {
    scheme: 'tcp6', protocol: 'tcp', family: 6, host: 'example.com', port: 443, hostIsIp: 0,
  });
});

test('port 0 only with allowPortZero', (t) => {
  rejects(t, 'tcp://example.com:0', /port 0/);
  rejects(t, 'udp://[::1]:0', /port 0/);
  t.is(parseUri('tcp://0.0.0.0:0', { allowPortZero: true }).port, 0);
  t.is(parseUri('udp6://[::]:0', { allowPortZero: true }).port, 0);
});

test('the protocol option restricts the scheme', (t) => {
  t.is(parseUri('udp6://[::1]:53', { protocol: 'udp' }).protocol, 'udp');
  rejects(t, 'tcp://example.com:53', /is tcp, but this call needs a udp URI/, { protocol: 'udp' });
  rejects(t, 'udp://example.com:53', /is udp, but this call needs a tcp URI/, { protocol: 'tcp' });
});

test('a missing port is refused', (t) => {
  rejects(t, 'tcp://example.com', /missing a port/);
  rejects(t, 'tcp://example.com:', /missing a port/);
  rejects(t, 'tcp6://[::1]', /missing a port/);
  rejects(t, 'tcp6://[::1]:', /missing a port/);
});

test('ports above 65535 are refused', (t) => {
  rejects(t, 'tcp://example.com:65536', /port 65536, above the maximum 65535/);
  rejects(t, 'udp://1.2.3.4:99999', /port 99999, above the maximum 65535/);
  rejects(t, 'tcp://example.com:123456', /not a number/);
});

test('non-numeric ports are refused', (t) => {
  for (const port of ['http', '8o', '+80', '-1', ' 80', '80 ', '0x50', '8.0', '1e3']) {
    rejects(t, `tcp://example.com:${port}`, /port that is not a number/);
  }
});

test('unknown schemes and missing schemes are refused', (t) => {
  rejects(t, 'http://example.com:80', /unknown scheme "http"/);
  rejects(t, 'sctp://example.com:80', /unknown scheme "sctp"/);
  rejects(t, 'tcp4://1.2.3.4:80', /unknown scheme "tcp4"/);
  rejects(t, '://example.com:80', /unknown scheme ""/);
  rejects(t, 'example.com:80', /has no scheme/);
  rejects(t, 'tcp:example.com:80', /has no scheme/);
  rejects(t, '1.2.3.4:80', /has no scheme/);
});

test('garbage is refused', (t) => {
  rejects(t, 'not a uri', /has no scheme/);
  rejects(t, 'tcp://exa mple.com:80', /invalid host name/);
  rejects(t, 'tcp://-bad.example:80', /invalid host name/);
  rejects(t, 'tcp://a..b:80', /invalid host name/);
  rejects(t, 'tcp://:80', /missing a host/);
  rejects(t, 'tcp://[::1]x:80', /unexpected text after the IPv6 literal/);
  rejects(t, 'tcp://[::1:80', /unterminated IPv6 literal/);
  rejects(t, 'tcp://[1.2.3.4]:80', /invalid IPv6 address "1.2.3.4"/);
  rejects(t, 'tcp://[zz::1]:80', /invalid IPv6 address/);
  rejects(t, 'tcp://\u0000:80', /invalid host name/);
  rejects(t, 42, /empty/);
  rejects(t, null, /empty/);
  rejects(t, undefined, /empty/);
});

test('malformed or legacy-form IPv4 addresses are not taken as host names', (t) => {
  // getaddrinfo would read these as addresses (2130706433 and 0x7f.1 are 127.0.0.1).
  for (const host of ['999.1.1.1', '1.2.3', '2130706433', '0x7f.1', '0x7f000001', '1.2.3.4.']) {
    rejects(t, `tcp://${host}:80`, /neither a valid IP address nor a host name/);
  }
  // Names that merely start with digits are fine.
  t.is(parseUri('tcp://3com.com:80').host, '3com.com');
  t.is(parseUri('tcp://0xdead.example:80').host, '0xdead.example');
  t.is(parseUri('tcp://123abc:80').host, '123abc');
});

test('unbracketed IPv6 is refused with a hint', (t) => {
  rejects(t, 'tcp://::1:80', /IPv6 addresses must be in brackets/);
  rejects(t, 'tcp6://2001:db8::1:443', /IPv6 addresses must be in brackets/);
});

test('tcp6/udp6 with an IPv4 address is refused', (t) => {
  rejects(t, 'tcp6://1.2.3.4:80', /is tcp6 but names an IPv4 address/);
  rejects(t, 'udp6://127.0.0.1:53', /is udp6 but names an IPv4 address/);
});

test('paths, queries, fragments and user info are refused', (t) => {
  rejects(t, 'tcp://example.com:80/path', /path, query or fragment/);
  rejects(t, 'tcp://example.com:80?x=1', /path, query or fragment/);
  rejects(t, 'tcp://example.com:80#frag', /path, query or fragment/);
  rejects(t, 'tcp://example.com/x:80', /path, query or fragment/);
  rejects(t, 'tcp://user@example.com:80', /user info/);
  rejects(t, 'tcp://user:pass@example.com:80', /user info/);
  // A lone trailing slash is tolerated.
  t.is(parseUri('tcp://example.com:80/').port, 80);
});

test('empty and over-long input is refused', (t) => {
  rejects(t, '', /URI is empty/);
  const long = `tcp://${'a.'.repeat(600)}com:80`;
  rejects(t, long, /longer than 1024 characters/);
  // The message does not carry the whole input.
  const err = t.throws(() => parseUri(`tcp://example.com:80/${'x'.repeat(900)}`), { instanceOf: InvalidUriError });
  t.true(err!.message.length < 300);
});

test('formatUri round-trips through parseUri', (t) => {
  for (const uri of ['tcp://example.com:443', 'udp://8.8.8.8:53', 'tcp6://[::1]:80', 'udp6://[2001:db8::1]:5353', 'tcp://localhost:1']) {
    const u = parseUri(uri);
    t.is(formatUri(u.protocol, u.host, u.port), uri);
    t.deepEqual(parseUri(formatUri(u.protocol, u.host, u.port)), u);
  }
  // A bracketed IPv6 literal under tcp:// comes back with the tcp6 scheme.
  t.is(formatUri('tcp', '::1', 80), 'tcp6://[::1]:80');
  t.is(formatUri('udp', '10.0.0.1', 9), 'udp://10.0.0.1:9');
  t.is(formatUri('tcp', 'example.com', 0), 'tcp://example.com:0');
});
