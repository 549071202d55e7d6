// The app's API server for the e2e suite: the endpoints that a Zero sync server
// calls for named queries (ZERO_QUERY_URL = http://127.0.0.1:<port>/query) and
// custom mutators (ZERO_MUTATE_URL = http://127.0.0.1:<port>/mutate).
//
// Environment:
//   ZC_E2E_PG_URL    upstream Postgres URL (the database the sync server replicates)  [required]
//   ZC_E2E_API_PORT  port to listen on, on 127.0.0.1 (default 0 = any free port)
//   ZC_E2E_API_LOG   optional file: one JSON line per request (path, headers, body, status, response)
//
// Prints `READY <port>` on stdout once listening.
//
// Auth: the sync server forwards the client's token as `Authorization: Bearer <token>`.
// A token of the form `tok:<userID>` is accepted (and pins the user to <userID>);
// anything else, including no token at all, is answered with HTTP 401.
import fs from 'node:fs';
import http from 'node:http';
import {mustGetMutator, mustGetQuery} from '@rocicorp/zero';
import {zeroPostgresJS} from '@rocicorp/zero/pg';
import {handleMutateRequest, handleQueryRequest} from '@rocicorp/zero/server';
import {mutators, queries, schema} from './schema.mjs';

const pgURL = process.env.ZC_E2E_PG_URL;
if (!pgURL) {
  console.error('api-server: ZC_E2E_PG_URL is required');
  process.exit(2);
}
const port = Number(process.env.ZC_E2E_API_PORT ?? 0);
const logFile = process.env.ZC_E2E_API_LOG;

const db = zeroPostgresJS(schema, pgURL);

/** @returns {string | undefined} the user of a valid token, undefined otherwise */
function authenticate(headers) {
  const header = headers['authorization'];
  if (typeof header !== 'string') {
    return undefined;
  }
  const m = /^Bearer (.*)$/.exec(header);
  if (!m) {
    return undefined;
  }
  const t = /^tok:([A-Za-z0-9_-]+)$/.exec(m[1]);
  return t ? t[1] : undefined;
}

function log(entry) {
  if (logFile) {
    fs.appendFileSync(logFile, JSON.stringify({t: new Date().toISOString(), ...entry}) + '\n');
  }
}

async function readBody(req) {
  const chunks = [];
  for await (const c of req) {
    chunks.push(c);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function reply(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {'content-type': 'application/json', 'content-length': Buffer.byteLength(text)});
  res.end(text);
  return {status, body};
}

async function handle(req, res) {
  const url = new URL(req.url ?? '/', 'http://127.0.0.1');
  if (req.method === 'GET' && url.pathname === '/healthz') {
    return reply(res, 200, {ok: true});
  }
  const bodyText = await readBody(req);
  let body;
  try {
    body = bodyText === '' ? null : JSON.parse(bodyText);
  } catch {
    body = {unparsable: bodyText.slice(0, 200)};
  }
  const entry = {method: req.method, path: req.url, headers: req.headers, body};

  if (req.method !== 'POST' || (url.pathname !== '/query' && url.pathname !== '/mutate')) {
    log({...entry, status: 404});
    return reply(res, 404, {error: 'not found'});
  }

  const userID = authenticate(req.headers);
  if (userID === undefined) {
    const out = reply(res, 401, {error: 'unauthorized', message: 'invalid or missing token'});
    log({...entry, status: out.status, response: out.body});
    return out;
  }

  const ctx = {location: 'server', userID};
  let result;
  try {
    if (url.pathname === '/query') {
      result = await handleQueryRequest({
        handler: (name, args) => mustGetQuery(queries, name).fn({args, ctx}),
        schema,
        query: url.searchParams,
        body,
        userID,
        logLevel: 'warn',
      });
    } else {
      result = await handleMutateRequest({
        dbProvider: db,
        handler: transact =>
          transact((tx, name, args) => mustGetMutator(mutators, name).fn({tx, args, ctx})),
        query: url.searchParams,
        body,
        userID,
        logLevel: 'warn',
      });
    }
  } catch (e) {
    const out = reply(res, 500, {error: 'internal', message: String(e)});
    log({...entry, status: out.status, response: out.body});
    return out;
  }
  const out = reply(res, 200, result);
  log({...entry, status: out.status, response: out.body});
  return out;
}

const server = http.createServer((req, res) => {
  handle(req, res).catch(e => {
    console.error('api-server: request failed', e);
    if (!res.headersSent) {
      reply(res, 500, {error: 'internal', message: String(e)});
    } else {
      res.destroy();
    }
  });
});

server.listen(port, '127.0.0.1', () => {
  console.log(`READY ${server.address().port}`);
});

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    server.close();
    process.exit(0);
  });
}
