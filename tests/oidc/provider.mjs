// A real OpenID Connect provider for tests/test_oidc.py: panva/oidc-provider, configured from a JSON file.
//
//   node provider.mjs CONFIG.json
//
// CONFIG: {"issuer": "http://127.0.0.1:PORT", "port": PORT, "jwks": {"keys": [private JWK, ...]},
//          "accounts": {"alice": {"preferred_username": "alice", "name": "...", "groups": [...],
//                                 "userinfo_only": ["groups"]}, ...}}
// The signing keys come from the test (it can sign look-alike tokens with other keys). Clients register
// themselves (dynamic client registration, POST /reg). Sign-in is a one-step form: GET /interaction/:uid
// shows it, POST /interaction/:uid with login=<account> signs that account in and grants every requested
// scope, so an HTTP client can sign in without a browser. Prints "ready <issuer>" once it listens.
import { readFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const accounts = config.accounts || {};

function claimsOf(id, use) {
  const { userinfo_only: userinfoOnly = [], ...claims } = accounts[id];
  if (use === 'id_token') for (const name of userinfoOnly) delete claims[name];
  return { ...claims, sub: id };
}

const provider = new Provider(config.issuer, {
  jwks: config.jwks,
  cookies: { keys: ['sprechstunde-test-provider-cookie-key'] },
  claims: { openid: ['sub'], profile: ['name', 'preferred_username'], groups: ['groups'] },
  scopes: ['openid', 'profile', 'groups'],
  conformIdTokenClaims: false, // scope claims in the ID token too (some accounts hold some back: userinfo_only)
  features: {
    devInteractions: { enabled: false },
    registration: { enabled: true },
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  async findAccount(ctx, id) {
    if (!Object.hasOwn(accounts, id)) return undefined;
    return { accountId: id, claims: async (use) => claimsOf(id, use) };
  },
});

async function formBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

provider.use(async (ctx, next) => {
  const match = /^\/interaction\/([\w-]+)$/.exec(ctx.path);
  if (!match) return next();
  ctx.set('Cache-Control', 'no-store');
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  if (ctx.method === 'GET') {
    ctx.type = 'html';
    ctx.body = `<!doctype html><title>Sign in</title><form method="post" action="/interaction/${escape(details.uid)}">
<label>Account <input name="login" autocomplete="username"></label><button type="submit">Sign in</button></form>`;
    return undefined;
  }
  if (ctx.method !== 'POST') return ctx.throw(405);
  const login = (await formBody(ctx.req)).get('login') || '';
  if (!Object.hasOwn(accounts, login)) {
    ctx.status = 400;
    ctx.body = 'unknown account';
    return undefined;
  }
  const grant = new provider.Grant({ accountId: login, clientId: details.params.client_id });
  grant.addOIDCScope(details.params.scope);
  const grantId = await grant.save();
  const returnTo = await provider.interactionResult(ctx.req, ctx.res, {
    login: { accountId: login },
    consent: { grantId },
  }, { mergeWithLastSubmission: false });
  ctx.status = 303;
  ctx.redirect(returnTo);
  return undefined;
});

const server = provider.listen(config.port, '127.0.0.1', () => {
  process.stdout.write(`ready ${config.issuer}\n`);
});
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => server.close(() => process.exit(0)));
