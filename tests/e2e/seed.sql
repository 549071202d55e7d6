-- Upstream schema and seed rows for the e2e suite (see schema.mjs).
-- Apply to a fresh database BEFORE the sync server starts, e.g.
--   psql "$ZC_E2E_PG_URL" -v ON_ERROR_STOP=1 -f seed.sql
-- The suite writes more rows while it runs (ids with a per-run prefix), so a
-- database that was already used needs this file again (it drops the tables
-- first) and a fresh replica file for the sync server.

SET client_min_messages = warning;

DROP TABLE IF EXISTS "issueLabel", label, comment, issue, "user" CASCADE;

CREATE TABLE "user" (
  id   TEXT PRIMARY KEY,
  name TEXT NOT NULL
);

CREATE TABLE issue (
  id          TEXT PRIMARY KEY,
  title       TEXT NOT NULL,
  open        BOOLEAN NOT NULL,
  modified    DOUBLE PRECISION NOT NULL,
  "creatorID" TEXT NOT NULL,
  description TEXT
);

CREATE TABLE comment (
  id         TEXT PRIMARY KEY,
  "issueID"  TEXT NOT NULL,
  "authorID" TEXT NOT NULL,
  body       TEXT NOT NULL,
  created    DOUBLE PRECISION NOT NULL
);

CREATE TABLE label (
  id   TEXT PRIMARY KEY,
  name TEXT NOT NULL
);

CREATE TABLE "issueLabel" (
  "issueID" TEXT NOT NULL,
  "labelID" TEXT NOT NULL,
  PRIMARY KEY ("issueID", "labelID")
);

INSERT INTO "user" (id, name) VALUES
  ('u1', 'Alice'),
  ('u2', 'Bob'),
  ('u3', 'Carol'),
  ('u4', 'Dan');

-- i09 and i10 share `modified` on purpose (in the default window of 5): the tie is
-- broken by the primary key, ascending.
INSERT INTO issue (id, title, open, modified, "creatorID", description) VALUES
  ('i01', 'Crash on start',          true,  1001, 'u1', 'Segfault when the config is empty'),
  ('i02', 'Typo in README',          true,  1002, 'u2', NULL),
  ('i03', 'Slow sync on big tables', true,  1003, 'u1', 'Initial sync takes minutes'),
  ('i04', 'Dark mode',               true,  1004, 'u3', NULL),
  ('i05', 'Login loop',              false, 1005, 'u2', 'Fixed in 0.3'),
  ('i06', 'Export to CSV',           true,  1006, 'u4', NULL),
  ('i07', 'Wrong timezone',          true,  1007, 'u1', 'Dates shift by one hour'),
  ('i08', 'Memory leak',             false, 1008, 'u3', NULL),
  ('i09', 'Keyboard shortcuts',      true,  1010, 'u2', NULL),
  ('i10', 'Unicode titles: ünïcödé ✓', true, 1010, 'u4', 'Non-ASCII text must survive'),
  ('i11', 'Flaky test',              true,  1011, 'u9', NULL),
  ('i12', 'Archive old issues',      false, 1012, 'u1', NULL);

INSERT INTO comment (id, "issueID", "authorID", body, created) VALUES
  ('c01', 'i01', 'u2', 'Can reproduce.',              2001),
  ('c02', 'i01', 'u1', 'Stack trace attached.',       2002),
  ('c03', 'i03', 'u4', 'Which tables?',               2003),
  ('c04', 'i07', 'u3', 'Only in CET.',                2004),
  ('c05', 'i07', 'u1', 'Confirmed.',                  2005),
  ('c06', 'i07', 'u2', 'Fix is in review.',           2006),
  ('c07', 'i08', 'u4', 'Seen after 2 days uptime.',   2007),
  ('c08', 'i10', 'u3', 'Emoji too: 🎉',               2008);

INSERT INTO label (id, name) VALUES
  ('l1', 'bug'),
  ('l2', 'feature'),
  ('l3', 'docs'),
  ('l4', 'perf');

INSERT INTO "issueLabel" ("issueID", "labelID") VALUES
  ('i01', 'l1'),
  ('i02', 'l3'),
  ('i03', 'l1'),
  ('i03', 'l4'),
  ('i04', 'l2'),
  ('i07', 'l1'),
  ('i10', 'l1'),
  ('i10', 'l2');
