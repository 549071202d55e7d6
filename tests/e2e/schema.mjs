// The issue-tracker app shared by the client side (scenarios.mjs) and the API
// server (api-server.mjs): Zero schema, named queries and custom mutators.
//
// Client names equal server (Postgres) names on purpose, so that the expected
// results in scenarios.mjs can be computed with plain SQL on the same names.
// seed.sql creates the matching tables.
import {
  boolean,
  createBuilder,
  createSchema,
  defineMutator,
  defineMutators,
  defineQueries,
  defineQuery,
  number,
  relationships,
  string,
  table,
} from '@rocicorp/zero';

const user = table('user')
  .columns({id: string(), name: string()})
  .primaryKey('id');

const issue = table('issue')
  .columns({
    id: string(),
    title: string(),
    open: boolean(),
    modified: number(),
    creatorID: string(),
    description: string().optional(),
  })
  .primaryKey('id');

const comment = table('comment')
  .columns({
    id: string(),
    issueID: string(),
    authorID: string(),
    body: string(),
    created: number(),
  })
  .primaryKey('id');

const label = table('label')
  .columns({id: string(), name: string()})
  .primaryKey('id');

const issueLabel = table('issueLabel')
  .columns({issueID: string(), labelID: string()})
  .primaryKey('issueID', 'labelID');

const issueRelationships = relationships(issue, ({one, many}) => ({
  creator: one({sourceField: ['creatorID'], destField: ['id'], destSchema: user}),
  comments: many({sourceField: ['id'], destField: ['issueID'], destSchema: comment}),
  labels: many(
    {sourceField: ['id'], destField: ['issueID'], destSchema: issueLabel},
    {sourceField: ['labelID'], destField: ['id'], destSchema: label},
  ),
}));

const commentRelationships = relationships(comment, ({one}) => ({
  author: one({sourceField: ['authorID'], destField: ['id'], destSchema: user}),
}));

export const schema = createSchema({
  tables: [user, issue, comment, label, issueLabel],
  relationships: [issueRelationships, commentRelationships],
});

export const zql = createBuilder(schema);

// Default window of openIssues; scenarios pass their own.
export const DEFAULT_OPEN_LIMIT = 5;

// The message the API server's transform fails with for `rejectedQuery`.
export const REJECTED_QUERY_MESSAGE = 'rejectedQuery is not allowed on this server';
// The message the server-side run of `issue.failOnServer` throws.
export const FAILING_MUTATOR_MESSAGE = 'failOnServer refused by the server';

// `ctx` is whatever the caller passes: the client's Zero `context` option
// ({location: 'client'}) or the API server's ({location: 'server', userID}).
const onServer = ctx => ctx?.location === 'server';

export const queries = defineQueries({
  // Open issues, newest first, a window of `limit` rows, with creator and comments.
  openIssues: defineQuery(({args}) =>
    zql.issue
      .where('open', true)
      .orderBy('modified', 'desc')
      .limit(args?.limit ?? DEFAULT_OPEN_LIMIT)
      .related('creator')
      .related('comments', c => c.orderBy('created', 'asc')),
  ),
  // Issues that have at least one comment (EXISTS), by id.
  issuesWithComments: defineQuery(() =>
    zql.issue.whereExists('comments').orderBy('id', 'asc'),
  ),
  // One issue with everything: creator, comments (+author), labels via the junction
  // (1.9.0 refuses orderBy inside a junction relationship: the order is the junction's).
  issueByID: defineQuery(({args}) =>
    zql.issue
      .where('id', args.id)
      .related('creator')
      .related('comments', c => c.orderBy('created', 'asc').related('author'))
      .related('labels')
      .one(),
  ),
  // All users, by id (used by two-groups as an overlapping query).
  allUsers: defineQuery(() => zql.user.orderBy('id', 'asc')),
  // Runs locally on the client, but the API server refuses to transform it.
  rejectedQuery: defineQuery(({ctx}) => {
    if (onServer(ctx)) {
      throw new Error(REJECTED_QUERY_MESSAGE);
    }
    return zql.issue.orderBy('id', 'asc');
  }),
});

export const mutators = defineMutators({
  issue: {
    create: defineMutator(async ({tx, args}) => {
      await tx.mutate.issue.insert({
        id: args.id,
        title: args.title,
        open: args.open ?? true,
        modified: args.modified,
        creatorID: args.creatorID,
        description: args.description ?? null,
      });
    }),
    setTitle: defineMutator(async ({tx, args}) => {
      const change = {id: args.id, title: args.title};
      if (args.modified !== undefined) {
        change.modified = args.modified;
      }
      await tx.mutate.issue.update(change);
    }),
    // Changes the title optimistically on the client; the server run throws,
    // so nothing reaches Postgres and the client's change is rolled back.
    failOnServer: defineMutator(async ({tx, args}) => {
      if (tx.location === 'server') {
        throw new Error(FAILING_MUTATOR_MESSAGE);
      }
      await tx.mutate.issue.update({id: args.id, title: args.title});
    }),
  },
  comment: {
    add: defineMutator(async ({tx, args}) => {
      await tx.mutate.comment.insert({
        id: args.id,
        issueID: args.issueID,
        authorID: args.authorID,
        body: args.body,
        created: args.created,
      });
    }),
  },
});
