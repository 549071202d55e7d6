// The benchmark's app, shared by the clients (clients.mjs) and the API server
// (api-server.mjs): an issue tracker with users, issues, comments, labels,
// issue labels and notifications. Names equal the Postgres names of seed.sql.
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

const user = table('user').columns({id: string(), name: string()}).primaryKey('id');

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
  .columns({id: string(), issueID: string(), authorID: string(), body: string(), created: number()})
  .primaryKey('id');

const label = table('label').columns({id: string(), name: string()}).primaryKey('id');

const issueLabel = table('issueLabel')
  .columns({issueID: string(), labelID: string()})
  .primaryKey('issueID', 'labelID');

const notification = table('notification')
  .columns({
    id: string(),
    userID: string(),
    issueID: string(),
    kind: string(),
    read: boolean(),
    created: number(),
  })
  .primaryKey('id');

const issueRelationships = relationships(issue, ({one, many}) => ({
  creator: one({sourceField: ['creatorID'], destField: ['id'], destSchema: user}),
  comments: many({sourceField: ['id'], destField: ['issueID'], destSchema: comment}),
  labels: many(
    {sourceField: ['id'], destField: ['issueID'], destSchema: issueLabel},
    {sourceField: ['labelID'], destField: ['id'], destSchema: label},
  ),
}));

const notificationRelationships = relationships(notification, ({one}) => ({
  issue: one({sourceField: ['issueID'], destField: ['id'], destSchema: issue}),
}));

export const schema = createSchema({
  tables: [user, issue, comment, label, issueLabel, notification],
  relationships: [issueRelationships, notificationRelationships],
});

export const zql = createBuilder(schema);

/** Window of the benchmark's query. */
export const OPEN_ISSUES_LIMIT = 100;

/** Seeded `modified` values are below this; the benchmark's writes use WRITE_BASE + seq. */
export const WRITE_BASE = 2e12;

export const queries = defineQueries({
  // The measured query: ~100 open issues, newest first, with creator and comments.
  openIssues: defineQuery(({args}) =>
    zql.issue
      .where('open', true)
      .orderBy('modified', 'desc')
      .limit(args?.limit ?? OPEN_ISSUES_LIMIT)
      .related('creator')
      .related('comments', c => c.orderBy('created', 'asc')),
  ),
  // Not used by the measured workload; here so the app looks like an app.
  myNotifications: defineQuery(({args}) =>
    zql.notification.where('userID', args.userID).orderBy('created', 'desc').limit(50).related('issue'),
  ),
});

export const mutators = defineMutators({
  issue: {
    setTitle: defineMutator(async ({tx, args}) => {
      await tx.mutate.issue.update({id: args.id, title: args.title});
    }),
  },
});
