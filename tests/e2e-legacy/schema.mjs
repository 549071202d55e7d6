// The legacy-path app of the e2e-legacy suite: a Zero schema with
// `enableLegacyQueries` (ad-hoc `zero.query.<table>…` is sent to the server as
// a raw AST) and `enableLegacyMutators` (`zero.mutate.<table>.insert/…` is sent
// as a `_zero_crud` push and executed by the sync server itself), plus the
// row permissions (`definePermissions`) that the server enforces on both.
//
// The same file is the input of `zero-deploy-permissions --schema-path
// schema.mjs`, which compiles `permissions` and writes them into the upstream
// `zero.permissions` row (see README.md). It must therefore export `schema`
// and `permissions`.
//
// Client names equal Postgres names, so the rules can be restated in SQL
// (`sqlRules` below) and the expected results computed with plain SQL.
//
// Authentication is HS256 JWT (the server runs with ZERO_AUTH_SECRET); the
// decoded claims are `authData` in the rules: `sub` is the user id, `role` an
// optional custom claim.
import {
  ANYONE_CAN,
  boolean,
  createSchema,
  definePermissions,
  number,
  relationships,
  string,
  table,
} from '@rocicorp/zero';

// -- Issue tracker (scenarios read-rules, crud, noperms, tokens) -------------

const user = table('user')
  .columns({id: string(), name: string()})
  .primaryKey('id');

const issue = table('issue')
  .columns({
    id: string(),
    title: string(),
    ownerID: string(),
    public: boolean(),
    modified: number(),
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

// -- Property scenario tables (random rows, one batch per run) ---------------

const doc = table('doc')
  .columns({
    id: string(),
    batch: string(),
    ownerID: string(),
    level: number(),
    archived: boolean(),
    title: string().optional(),
  })
  .primaryKey('id');

const share = table('share')
  .columns({
    id: string(),
    batch: string(),
    docID: string(),
    userID: string(),
  })
  .primaryKey('id');

const issueRelationships = relationships(issue, ({one, many}) => ({
  owner: one({sourceField: ['ownerID'], destField: ['id'], destSchema: user}),
  comments: many({sourceField: ['id'], destField: ['issueID'], destSchema: comment}),
}));

const commentRelationships = relationships(comment, ({one}) => ({
  issue: one({sourceField: ['issueID'], destField: ['id'], destSchema: issue}),
  author: one({sourceField: ['authorID'], destField: ['id'], destSchema: user}),
}));

const docRelationships = relationships(doc, ({one, many}) => ({
  owner: one({sourceField: ['ownerID'], destField: ['id'], destSchema: user}),
  shares: many({sourceField: ['id'], destField: ['docID'], destSchema: share}),
}));

const shareRelationships = relationships(share, ({one}) => ({
  doc: one({sourceField: ['docID'], destField: ['id'], destSchema: doc}),
}));

export const schema = createSchema({
  tables: [user, issue, comment, doc, share],
  relationships: [issueRelationships, commentRelationships, docRelationships, shareRelationships],
  enableLegacyQueries: true,
  enableLegacyMutators: true,
});

// -- Permissions --------------------------------------------------------------
//
// A row is readable if ANY select rule holds (rules are OR-ed and AND-ed to the
// query's own where, in the query and in every subquery: related and
// whereExists). A write needs ANY rule of each applicable list to hold; a
// missing list means nobody can (here: every write to `user`, `doc`, `share`).
//
// insert            evaluated on the row as it would be after the insert
// update.preMutation   on the row before the update
// update.postMutation  on the row after the update
// delete            on the row before the delete
//
// Subqueries inside a rule (the EXISTS below) are NOT themselves filtered by
// the permissions of the table they read.

const isIssueOwner = (authData, {cmp}) => cmp('ownerID', authData.sub);
const isPublicIssue = (_authData, {cmp}) => cmp('public', true);
const commentedOnIssue = (authData, {exists}) =>
  exists('comments', c => c.where('authorID', authData.sub));

const isCommentAuthor = (authData, {cmp}) => cmp('authorID', authData.sub);
const onReadableIssue = (authData, {exists}) =>
  exists('issue', i => i.where(({or, cmp}) => or(cmp('public', true), cmp('ownerID', authData.sub))));
const onOwnIssue = (authData, {exists}) => exists('issue', i => i.where('ownerID', authData.sub));

const isDocOwner = (authData, {cmp}) => cmp('ownerID', authData.sub);
const isOpenDoc = (_authData, {and, cmp}) => and(cmp('level', '<=', 1), cmp('archived', false));
const sharedWithMe = (authData, {exists}) => exists('shares', s => s.where('userID', authData.sub));
const isAdmin = (authData, {cmpLit}) => cmpLit(authData.role, '=', 'admin');
// A share to the pseudo-user `everyone` publishes the doc. That share row itself
// stays unreadable to others (share rules below): the server reads it while
// evaluating this rule but must not sync it to the client.
const isPublished = (_authData, {exists}) => exists('shares', s => s.where('userID', 'everyone'));

const isShareTarget = (authData, {cmp}) => cmp('userID', authData.sub);
const onOwnDoc = (authData, {exists}) => exists('doc', d => d.where('ownerID', authData.sub));

export const permissions = definePermissions(schema, () => ({
  user: {
    row: {select: ANYONE_CAN},
  },
  issue: {
    row: {
      select: [isPublicIssue, isIssueOwner, commentedOnIssue],
      insert: [isIssueOwner],
      update: {preMutation: [isIssueOwner], postMutation: [isIssueOwner]},
      delete: [isIssueOwner],
    },
  },
  comment: {
    row: {
      select: [isCommentAuthor, onReadableIssue],
      // Only as yourself, and only on an issue that is public or yours.
      insert: [(a, eb) => eb.and(isCommentAuthor(a, eb), onReadableIssue(a, eb))],
      update: {preMutation: [isCommentAuthor], postMutation: [isCommentAuthor]},
      // The author, or the owner of the issue.
      delete: [isCommentAuthor, onOwnIssue],
    },
  },
  doc: {
    row: {select: [isDocOwner, isOpenDoc, sharedWithMe, isAdmin, isPublished]},
  },
  share: {
    row: {select: [isShareTarget, onOwnDoc]},
  },
}));

// -- The same rules in SQL (the oracle of scenarios.mjs) ----------------------
//
// `sub` and `role` are bound as parameters by the caller; a missing claim is
// NULL, and a comparison with NULL is never true (as in ZQL). Aliases: the
// table's own alias is given; subqueries use their own.
export const sqlRules = {
  issue: a => `(${a}.public OR ${a}."ownerID" = $sub OR EXISTS (SELECT 1 FROM comment rc WHERE rc."issueID" = ${a}.id AND rc."authorID" = $sub))`,
  comment: a => `(${a}."authorID" = $sub OR EXISTS (SELECT 1 FROM issue ri WHERE ri.id = ${a}."issueID" AND (ri.public OR ri."ownerID" = $sub)))`,
  user: () => 'TRUE',
  doc: a => `(${a}."ownerID" = $sub OR (${a}.level <= 1 AND ${a}.archived = false) OR EXISTS (SELECT 1 FROM share rs WHERE rs."docID" = ${a}.id AND rs."userID" = $sub) OR $role = 'admin' OR EXISTS (SELECT 1 FROM share rp WHERE rp."docID" = ${a}.id AND rp."userID" = 'everyone'))`,
  share: a => `(${a}."userID" = $sub OR EXISTS (SELECT 1 FROM doc rd WHERE rd.id = ${a}."docID" AND rd."ownerID" = $sub))`,
};
