-- Upstream tables and seed rows of the e2e-legacy suite (see schema.mjs).
-- Apply to the database BEFORE the sync server starts:
--   psql "$ZC_E2E_PG_URL" -v ON_ERROR_STOP=1 -f seed.sql
-- It drops and recreates the suite's tables (not the server's `zero`/`zero_0`
-- schemas); a database that was already replicated also needs a fresh replica
-- file for the server. The scenarios write more rows (ids with a per-run
-- prefix) while they run.
--
-- Who can read which issue (rules in schema.mjs: public, or owner, or has
-- commented on it):
--   u1 (Alice): i01 i04 i07 i10 (public), i02 i03 (own), i05 i08 (commented)   -- not i06 i09
--   u2 (Bob):   public, i04 i05 i09 (own), i02 i03 (commented)                 -- not i06 i08
--   u3 (Carol): public, i06 (own), i03 i09 (commented)                         -- not i02 i05 i08
--   no token:   public only
-- Comments are readable by their author and on issues that are public or the reader's.
-- e.g. u2 reads i03 (commented) but not c04 (u3's comment on u1's private i03).

SET client_min_messages = warning;

DROP TABLE IF EXISTS share, doc, comment, issue, "user" CASCADE;

CREATE TABLE "user" (
  id   TEXT PRIMARY KEY,
  name TEXT NOT NULL
);

CREATE TABLE issue (
  id        TEXT PRIMARY KEY,
  title     TEXT NOT NULL,
  "ownerID" TEXT NOT NULL,
  public    BOOLEAN NOT NULL,
  modified  DOUBLE PRECISION NOT NULL
);

CREATE TABLE comment (
  id         TEXT PRIMARY KEY,
  "issueID"  TEXT NOT NULL,
  "authorID" TEXT NOT NULL,
  body       TEXT NOT NULL,
  created    DOUBLE PRECISION NOT NULL
);

-- Property scenario: random rows, one `batch` per run.
CREATE TABLE doc (
  id        TEXT PRIMARY KEY,
  batch     TEXT NOT NULL,
  "ownerID" TEXT NOT NULL,
  level     INTEGER NOT NULL,
  archived  BOOLEAN NOT NULL,
  title     TEXT
);

CREATE TABLE share (
  id       TEXT PRIMARY KEY,
  batch    TEXT NOT NULL,
  "docID"  TEXT NOT NULL,
  "userID" TEXT NOT NULL
);

INSERT INTO "user" (id, name) VALUES
  ('u1', 'Alice'),
  ('u2', 'Bob'),
  ('u3', 'Carol'),
  ('u4', 'Dave');

INSERT INTO issue (id, title, "ownerID", public, modified) VALUES
  ('i01', 'Public roadmap',            'u1', true,  1000),
  ('i02', 'Alice private notes',       'u1', false, 1010),
  ('i03', 'Alice asks Bob and Carol',  'u1', false, 1020),
  ('i04', 'Bob public bug',            'u2', true,  1030),
  ('i05', 'Bob private draft',         'u2', false, 1040),
  ('i06', 'Carol secret',              'u3', false, 1050),
  ('i07', 'Carol public idea',         'u3', true,  1050),  -- same modified as i06 (tie)
  ('i08', 'Dave private, Alice helps', 'u4', false, 1070),
  ('i09', 'Bob private, Carol helps',  'u2', false, 1080),
  ('i10', 'Orphan public (no owner)',  'u9', true,  1090);  -- dangling ownerID

INSERT INTO comment (id, "issueID", "authorID", body, created) VALUES
  ('c01', 'i01', 'u2', 'Bob on the roadmap',      2000),
  ('c02', 'i01', 'u3', 'Carol on the roadmap',    2010),
  ('c03', 'i03', 'u2', 'Bob answers Alice',       2020),
  ('c04', 'i03', 'u3', 'Carol answers Alice',     2030),
  ('c05', 'i04', 'u1', 'Alice on Bob''s bug',     2040),
  ('c06', 'i05', 'u2', 'Bob on his draft',        2050),
  ('c07', 'i08', 'u1', 'Alice helps Dave',        2060),
  ('c08', 'i09', 'u3', 'Carol helps Bob',         2070),
  ('c09', 'i07', 'u1', 'Alice likes it',          2080),
  ('c10', 'i02', 'u2', 'Bob peeks at the notes',  2090),
  ('c11', 'i05', 'u1', 'Alice reviews the draft', 2100),
  ('c12', 'i06', 'u4', 'Dave on Carol''s secret', 2110);
