-- Upstream schema and deterministic seed data of the side-by-side benchmark:
-- an issue tracker (users, issues, comments, labels, issue labels, notifications).
--
--   psql "$URL" -v ON_ERROR_STOP=1 -v issues=100000 -f seed.sql
--
-- Sizes derived from :issues (N):
--   user          max(100, N/100)
--   label         50
--   issue         N            (70% open: id number mod 10 < 7)
--   comment       3 N          (spread over the issues by a multiplicative hash)
--   issueLabel    N + N/3      (every issue one label, every third a second one)
--   notification  N
-- bench.mjs applies this once to a template database and gives each server a
-- copy of it (CREATE DATABASE ... TEMPLATE), so both start from identical data.

SET client_min_messages = warning;

DROP TABLE IF EXISTS notification, "issueLabel", label, comment, issue, "user" CASCADE;

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

CREATE TABLE notification (
  id        TEXT PRIMARY KEY,
  "userID"  TEXT NOT NULL,
  "issueID" TEXT NOT NULL,
  kind      TEXT NOT NULL,
  read      BOOLEAN NOT NULL,
  created   DOUBLE PRECISION NOT NULL
);

SELECT greatest(100, :issues / 100) AS users \gset

INSERT INTO "user" (id, name)
SELECT 'u' || lpad(g::text, 6, '0'), 'User ' || g
FROM generate_series(0, :users - 1) g;

INSERT INTO label (id, name)
SELECT 'l' || lpad(g::text, 2, '0'), 'label-' || g
FROM generate_series(0, 49) g;

-- modified: a permutation of 0..N-1 (7919 is prime, coprime with N = 10^k), so
-- the order by modified is unrelated to the id order. All seeded values are
-- below 2e12; the benchmark's writes use 2e12 + seq, so a written issue moves
-- to the top of the "open issues by modified" window.
INSERT INTO issue (id, title, open, modified, "creatorID", description)
SELECT 'i' || lpad(g::text, 7, '0'),
       'Issue number ' || g || ' about component ' || (g % 37),
       (g % 10) < 7,
       1700000000000 + ((g::bigint * 7919) % :issues) * 1000,
       'u' || lpad((g % :users)::text, 6, '0'),
       CASE WHEN g % 4 = 0 THEN NULL
            ELSE 'Steps to reproduce: open the app, click ' || g || ' times, observe the failure.' END
FROM generate_series(0, :issues - 1) g;

INSERT INTO comment (id, "issueID", "authorID", body, created)
SELECT 'c' || lpad(g::text, 8, '0'),
       'i' || lpad(((g::bigint * 2654435761) % :issues)::text, 7, '0'),
       'u' || lpad(((g::bigint * 40503) % :users)::text, 6, '0'),
       'Comment ' || g || ': I can reproduce this on my machine as well.',
       1600000000000 + g::bigint * 10
FROM generate_series(0, 3 * :issues - 1) g;

INSERT INTO "issueLabel" ("issueID", "labelID")
SELECT 'i' || lpad(g::text, 7, '0'), 'l' || lpad((g % 50)::text, 2, '0')
FROM generate_series(0, :issues - 1) g
UNION ALL
SELECT 'i' || lpad(g::text, 7, '0'), 'l' || lpad(((g / 3 + 7) % 50)::text, 2, '0')
FROM generate_series(0, :issues - 1, 3) g
WHERE (g / 3 + 7) % 50 <> g % 50;

INSERT INTO notification (id, "userID", "issueID", kind, read, created)
SELECT 'n' || lpad(g::text, 8, '0'),
       'u' || lpad(((g::bigint * 31) % :users)::text, 6, '0'),
       'i' || lpad(g::text, 7, '0'),
       CASE g % 3 WHEN 0 THEN 'mention' WHEN 1 THEN 'assign' ELSE 'comment' END,
       g % 2 = 0,
       1650000000000 + g::bigint * 10
FROM generate_series(0, :issues - 1) g;

-- The app's indexes (both servers mirror upstream indexes into their replicas).
CREATE INDEX issue_open_modified ON issue (open, modified);
CREATE INDEX issue_modified ON issue (modified);
CREATE INDEX issue_creator ON issue ("creatorID");
CREATE INDEX comment_issue_created ON comment ("issueID", created);
CREATE INDEX issue_label_label ON "issueLabel" ("labelID");
CREATE INDEX notification_user ON notification ("userID", created);

ANALYZE;
