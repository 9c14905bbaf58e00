#!/usr/bin/env node
// A command-line OpenID Connect relying party on openid-client v6 (panva; OpenID Certified), for pushauth's
// tests (issue 18): a third party's code, not ours, checks what the provider sends. Driven step by step by
// testkit/openid_client.py, with everything between the steps in a state file, as a web app keeps it in
// its session:
//
//   node rp.mjs start  --issuer URL --client-id ID [--client-secret S] [--auth basic|post|none]
//                      --redirect-uri URI --state-file F [--login-hint H] [--scope S] [--max-age N]
//                      [--extra k=v ...]
//     discovery, a PKCE S256 verifier, a random state and nonce; writes them to F and prints
//     {"authorization_url": "..."}
//   node rp.mjs ciba   --issuer URL --client-id ID --client-secret S --login-hint USER
//                      [--requested-expiry N] [--poll-timeout SECONDS] [--client-notification-token T]
//     OpenID CIBA: prints {"initiation": ...} at once, then the tokens as finish does. Poll mode, or ping
//     mode with --client-notification-token: then it reads the ping from stdin (one line of JSON, the body
//     the test's notification receiver got) before it asks the token endpoint
//   node rp.mjs finish --issuer URL --client-id ID [...same client options] --state-file F
//                      --callback-url URL [--skip-userinfo]
//     the code grant (PKCE verifier, expected state and nonce, an ID token required), which validates the
//     ID token itself (signature against the issuer's JWKS, alg, iss, aud, exp, iat, nonce, auth_time
//     against max_age; not at_hash, which OIDC Core 3.1.3.8 leaves optional in the code flow and
//     openid-client does not check there), then userinfo with the access token, its sub checked against
//     the ID token's; prints {"claims": {...}, "userinfo": {...}, "token": {...}}. The signature check is
//     one openid-client skips by default in the code flow: it is switched on here (see configure()).
//
// Either step prints exactly ONE line of JSON on stdout. On any error: {"error": "<class>", "message":
// "...", "code": ..., "oauth_error": ...} and exit status 1 (2 for a usage error). Plain http is allowed
// only for an issuer on a loopback address (the tests' own servers); anything else must be https, as
// openid-client requires. A test CA for an https issuer: NODE_EXTRA_CA_CERTS.
import { readFile, writeFile, rename } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import * as client from 'openid-client';

class UsageError extends Error {}

const USAGE = 'usage: rp.mjs start|finish|ciba --issuer URL --client-id ID [--client-secret S] '
  + '[--auth basic|post|none] [--id-token-alg ALG] [--http-timeout SECONDS] '
  + '(start: --state-file F --redirect-uri URI [--login-hint H] [--scope S] [--max-age N] [--extra k=v ...]; '
  + 'finish: --state-file F --callback-url URL [--skip-userinfo]; '
  + 'ciba: --login-hint H [--scope S] [--requested-expiry N] [--poll-timeout SECONDS] '
  + '[--client-notification-token T])';

// Options that take a value; --extra may repeat. Flags take none.
const VALUED = new Set(['issuer', 'client-id', 'client-secret', 'auth', 'redirect-uri', 'state-file',
  'login-hint', 'scope', 'max-age', 'extra', 'callback-url', 'id-token-alg', 'http-timeout',
  'requested-expiry', 'poll-timeout', 'client-notification-token']);
const FLAGS = new Set(['skip-userinfo']);

function parseArgs(argv) {
  const [command, ...rest] = argv;
  if (command !== 'start' && command !== 'finish' && command !== 'ciba') throw new UsageError(USAGE);
  const options = { extra: [] };
  for (let i = 0; i < rest.length; i++) {
    const arg = rest[i];
    if (!arg.startsWith('--')) throw new UsageError(`unexpected argument ${JSON.stringify(arg)}; ${USAGE}`);
    const name = arg.slice(2);
    if (FLAGS.has(name)) {
      options[name] = true;
    } else if (VALUED.has(name)) {
      if (i + 1 >= rest.length) throw new UsageError(`--${name} needs a value`);
      const value = rest[++i];
      if (name === 'extra') options.extra.push(value);
      else options[name] = value;
    } else {
      throw new UsageError(`unknown option --${name}; ${USAGE}`);
    }
  }
  const required = command === 'ciba' ? ['issuer', 'client-id', 'login-hint']
    : ['issuer', 'client-id', 'state-file', ...(command === 'start' ? ['redirect-uri'] : ['callback-url'])];
  for (const name of required) {
    if (options[name] === undefined) throw new UsageError(`--${name} is required; ${USAGE}`);
  }
  return { command, options };
}

function isLoopback(url) {
  // URL.hostname keeps the brackets of an IPv6 literal.
  return ['localhost', '::1', '[::1]'].includes(url.hostname) || /^127(\.\d{1,3}){3}$/.test(url.hostname);
}

function clientAuth(options) {
  const secret = options['client-secret'];
  const method = options.auth ?? (secret === undefined ? 'none' : 'basic');
  if (method !== 'none' && secret === undefined) throw new UsageError(`--auth ${method} needs --client-secret`);
  switch (method) {
    case 'basic': return client.ClientSecretBasic(secret);
    case 'post': return client.ClientSecretPost(secret);
    case 'none': return client.None();
    default: throw new UsageError(`--auth must be basic, post or none, not ${JSON.stringify(method)}`);
  }
}

async function configure(options) {
  const issuer = new URL(options.issuer);
  const metadata = {};
  if (options['client-secret'] !== undefined) metadata.client_secret = options['client-secret'];
  // Without it openid-client accepts what the provider's metadata lists (RS256 if it lists nothing).
  if (options['id-token-alg'] !== undefined) metadata.id_token_signed_response_alg = options['id-token-alg'];
  const discoveryOptions = {};
  // The tests' providers listen on plain http on 127.0.0.1; openid-client refuses http unless told, and
  // only a loopback issuer gets that exception here, so a typo cannot send a secret over the network.
  // openid-client does not check an ID token's signature when it came straight from the token endpoint
  // (OIDC Core 3.1.3.7 step 6 lets TLS stand in for it); enableNonRepudiationChecks makes it verify the
  // signature against the issuer's JWKS too, as the provider's keys and JWKS are what these tests are about.
  discoveryOptions.execute = [client.enableNonRepudiationChecks];
  if (issuer.protocol === 'http:' && isLoopback(issuer)) discoveryOptions.execute.push(client.allowInsecureRequests);
  if (options['http-timeout'] !== undefined) discoveryOptions.timeout = Number(options['http-timeout']);
  return client.discovery(issuer, options['client-id'], metadata, clientAuth(options), discoveryOptions);
}

async function start(options) {
  const config = await configure(options);
  const codeVerifier = client.randomPKCECodeVerifier();
  const state = client.randomState();
  const nonce = client.randomNonce();
  const parameters = {
    redirect_uri: options['redirect-uri'],
    scope: options.scope ?? 'openid',
    code_challenge: await client.calculatePKCECodeChallenge(codeVerifier),
    code_challenge_method: 'S256',
    state,
    nonce,
  };
  if (options['login-hint'] !== undefined) parameters.login_hint = options['login-hint'];
  if (options['max-age'] !== undefined) parameters.max_age = options['max-age'];
  // Last, so that a negative test can override any of the above (code_challenge_method=plain, ...); the
  // state file still holds what rp.mjs generated.
  for (const pair of options.extra) {
    const at = pair.indexOf('=');
    if (at <= 0) throw new UsageError(`--extra takes key=value, not ${JSON.stringify(pair)}`);
    parameters[pair.slice(0, at)] = pair.slice(at + 1);
  }
  const url = client.buildAuthorizationUrl(config, parameters);
  const saved = {
    code_verifier: codeVerifier,
    state,
    nonce,
    redirect_uri: options['redirect-uri'],
    max_age: options['max-age'] === undefined ? null : Number(options['max-age']),
  };
  // Written whole or not at all, readable by this user only: the verifier is a secret until it is used.
  const file = options['state-file'];
  await writeFile(`${file}.tmp`, JSON.stringify(saved), { mode: 0o600 });
  await rename(`${file}.tmp`, file);
  return { authorization_url: url.href };
}

async function finish(options) {
  const saved = JSON.parse(await readFile(options['state-file'], 'utf8'));
  const config = await configure(options);
  const checks = {
    pkceCodeVerifier: saved.code_verifier,
    expectedState: saved.state,
    expectedNonce: saved.nonce,
    idTokenExpected: true,
  };
  if (saved.max_age !== null && saved.max_age !== undefined) checks.maxAge = saved.max_age;
  // The redirect_uri sent to the token endpoint is the callback URL without its query, which must be the one
  // the authorization request named (openid-client takes it from the URL it is given).
  const tokens = await client.authorizationCodeGrant(config, new URL(options['callback-url']), checks);
  const claims = tokens.claims();
  let userinfo = null;
  if (!options['skip-userinfo']) userinfo = await client.fetchUserInfo(config, tokens.access_token, claims.sub);
  const header = JSON.parse(Buffer.from(tokens.id_token.split('.')[0], 'base64url').toString('utf8'));
  return {
    claims,
    userinfo,
    token: {
      token_type: tokens.token_type,
      expires_in: tokens.expiresIn() ?? null,
      scope: tokens.scope ?? null,
      refresh_token: tokens.refresh_token !== undefined,
      id_token_header: header,
    },
  };
}

// OpenID CIBA: the backchannel authentication request, its answer printed as a line of its own at once
// ({"initiation": {...}}: auth_req_id, expires_in, interval and whatever else the provider sent), then the
// tokens, whose ID token is validated as in `finish`; that result is the last line.
//
// Poll mode: openid-client polls the token endpoint, honouring interval and slow_down. By default it gives
// up by itself once the request's expires_in has passed (an AbortSignal of that length, its own
// TimeoutError) without asking the provider again; --poll-timeout gives it longer, so that it hears the
// provider's verdict on an expired request (expired_token).
//
// Ping mode (CIBA Core 10.2), with --client-notification-token: the provider POSTs the auth_req_id to the
// client's notification endpoint, which is the test's receiver; the test hands the ping's body to this
// process on stdin, as a web app's notification handler hands it to its openid-client code. The ping must
// name this request; then the CIBA grant at the token endpoint, once (genericGrantRequest: openid-client
// has no ping-mode helper of its own, and validates the ID token of any grant's answer).
async function ciba(options) {
  const config = await configure(options);
  const parameters = { scope: options.scope ?? 'openid', login_hint: options['login-hint'] };
  if (options['requested-expiry'] !== undefined) parameters.requested_expiry = options['requested-expiry'];
  const pingToken = options['client-notification-token'];
  if (pingToken !== undefined) parameters.client_notification_token = pingToken;
  const response = await client.initiateBackchannelAuthentication(config, parameters);
  process.stdout.write(JSON.stringify({ initiation: response }) + '\n');
  let tokens;
  if (pingToken === undefined) {
    const pollOptions = {};
    if (options['poll-timeout'] !== undefined) {
      pollOptions.signal = AbortSignal.timeout(Number(options['poll-timeout']) * 1000);
    }
    tokens = await client.pollBackchannelAuthenticationGrant(config, response, undefined, pollOptions);
  } else {
    const ping = await readPing();
    if (ping?.auth_req_id !== response.auth_req_id) {
      throw new Error(`the ping names another request: ${JSON.stringify(ping)}`);
    }
    tokens = await client.genericGrantRequest(config, 'urn:openid:params:grant-type:ciba',
      { auth_req_id: response.auth_req_id });
    if (tokens.id_token === undefined) throw new Error('the CIBA grant answered without an ID token');
  }
  const header = JSON.parse(Buffer.from(tokens.id_token.split('.')[0], 'base64url').toString('utf8'));
  return { claims: tokens.claims(), userinfo: null,
    token: { token_type: tokens.token_type, expires_in: tokens.expiresIn() ?? null, scope: tokens.scope ?? null,
      refresh_token: tokens.refresh_token !== undefined, id_token_header: header } };
}

// The first line on stdin, as JSON; stdin closed first is an error.
async function readPing() {
  const lines = createInterface({ input: process.stdin });
  for await (const line of lines) {
    lines.close();
    return JSON.parse(line);
  }
  throw new Error('stdin closed before a ping came');
}

// The error's class, its message with every cause's after it (openid-client wraps the precise reason,
// e.g. 'unexpected JWT claim value encountered' around 'unexpected ID Token "nonce" claim value'), its
// code, and what an OAuth error response said (invalid_grant, ...).
function describe(err) {
  const messages = [];
  let code;
  for (let e = err, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    if (e.message && !messages.includes(e.message)) messages.push(e.message);
    code ??= typeof e.code === 'string' ? e.code : undefined;
  }
  const out = { error: err?.constructor?.name ?? 'Error', message: messages.join(': ') || String(err) };
  if (code !== undefined) out.code = code;
  if (err instanceof client.ResponseBodyError) {
    out.oauth_error = err.error;
    if (err.error_description !== undefined) out.oauth_error_description = err.error_description;
    out.status = err.status;
  } else if (err instanceof client.AuthorizationResponseError) {
    out.oauth_error = err.error;
    if (err.error_description !== undefined) out.oauth_error_description = err.error_description;
  } else if (err instanceof client.WWWAuthenticateChallengeError) {
    out.status = err.status;
  }
  return out;
}

async function main() {
  let result;
  let status = 0;
  try {
    const { command, options } = parseArgs(process.argv.slice(2));
    result = command === 'start' ? await start(options)
      : command === 'ciba' ? await ciba(options) : await finish(options);
  } catch (err) {
    result = describe(err);
    status = err instanceof UsageError ? 2 : 1;
  }
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exitCode = status;
}

await main();
