// The benchmark app's API server, the same for both sync servers: POST /query
// (named query transforms, ZERO_QUERY_URL) and POST /mutate (custom mutators,
// ZERO_MUTATE_URL), built on @rocicorp/zero/server.
//
// Environment:
//   BENCH_PG_URL    upstream Postgres URL  [required]
//   BENCH_API_PORT  port on 127.0.0.1 (default 0 = any free port)
// Prints `READY <port>` once listening. Tokens `tok:<userID>` are accepted.
import http from 'node:http';
import {mustGetMutator, mustGetQuery} from '@rocicorp/zero';
import {zeroPostgresJS} from '@rocicorp/zero/pg';
import {handleMutateRequest, handleQueryRequest} from '@rocicorp/zero/server';
import {mutators, queries, schema} from './schema.mjs';

const pgURL = process.env.BENCH_PG_URL;
if (!pgURL) {
  console.error('api-server: BENCH_PG_URL is required');
  process.exit(2);
}
const db = zeroPostgresJS(schema, pgURL);
let requests = 0;

function userOf(headers) {
  const m = /^Bearer tok:([A-Za-z0-9_-]+)$/.exec(String(headers['authorization'] ?? ''));
  return m ? m[1] : undefined;
}

function send(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {'content-type': 'application/json', 'content-length': Buffer.byteLength(text)});
  res.end(text);
}

async function handle(req, res) {
  const url = new URL(req.url ?? '/', 'http://127.0.0.1');
  if (req.method === 'GET' && url.pathname === '/stats') {
    return send(res, 200, {requests});
  }
  const chunks = [];
  for await (const c of req) {
    chunks.push(c);
  }
  requests++;
  if (req.method !== 'POST' || (url.pathname !== '/query' && url.pathname !== '/mutate')) {
    return send(res, 404, {error: 'not found'});
  }
  const userID = userOf(req.headers);
  if (userID === undefined) {
    return send(res, 401, {error: 'unauthorized'});
  }
  const text = Buffer.concat(chunks).toString('utf8');
  const body = text === '' ? null : JSON.parse(text);
  const ctx = {location: 'server', userID};
  const result =
    url.pathname === '/query'
      ? await handleQueryRequest({
          handler: (name, args) => mustGetQuery(queries, name).fn({args, ctx}),
          schema,
          query: url.searchParams,
          body,
          userID,
          logLevel: 'warn',
        })
      : await handleMutateRequest({
          dbProvider: db,
          handler: transact => transact((tx, name, args) => mustGetMutator(mutators, name).fn({tx, args, ctx})),
          query: url.searchParams,
          body,
          userID,
          logLevel: 'warn',
        });
  send(res, 200, result);
}

const server = http.createServer((req, res) => {
  handle(req, res).catch(e => {
    console.error('api-server: request failed', e);
    if (!res.headersSent) {
      send(res, 500, {error: 'internal', message: String(e)});
    } else {
      res.destroy();
    }
  });
});
server.keepAliveTimeout = 60_000;
server.listen(Number(process.env.BENCH_API_PORT ?? 0), '127.0.0.1', () => {
  console.log(`READY ${server.address().port}`);
});
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => process.exit(0));
}
