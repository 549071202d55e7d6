//! The whole server in-process (replication, CVR in PostgreSQL, view syncer, WebSocket
//! transport) driven by the protocol-level test client of `zc-testkit`: a captured
//! transcript of the 1.9.0 client replayed (its named queries answered by the app
//! server's recorded responses), many clients in several groups following upstream
//! writes, bad frames, unsupported versions and cookies from the future.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use warp::Filter;
use zc_protocol::connect::{ConnectParams, SecProtocol};
use zc_protocol::messages::{
    Downstream, ErrorKind, ErroredQuery, InitConnectionBody, RowPatchOp, UpQueriesPatchOp, Upstream,
};
use zc_testkit::TestDb;
use zc_testkit::client::{TestClient, params};

const CAPTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../zc-protocol/fixtures/captures"
);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The app's query endpoint, answering with the ASTs the real app server returned in the
/// captured session (`custom-api-server.jsonl`), for the same names.
fn spawn_query_endpoint() -> u16 {
    spawn_counting_query_endpoint().0
}

/// The app's query endpoint, answering the captured ASTs by name (`Bearer bad` is
/// refused), with the number of requests it got.
fn spawn_counting_query_endpoint() -> (u16, Arc<AtomicUsize>) {
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&requests);
    let text =
        std::fs::read_to_string(format!("{CAPTURES}/custom-api-server.jsonl")).expect("capture");
    let mut asts: BTreeMap<String, Value> = BTreeMap::new();
    for line in text.lines() {
        let entry: Value = serde_json::from_str(line).expect("json");
        for q in entry["response"]["queries"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let (Some(name), Some(ast)) = (q["name"].as_str(), q.get("ast")) {
                asts.insert(name.to_owned(), ast.clone());
            }
        }
    }
    let route = warp::post()
        .and(warp::path("query"))
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::body::json())
        .map(move |auth: Option<String>, body: Value| {
            counter.fetch_add(1, Ordering::SeqCst);
            if auth.as_deref() == Some("Bearer bad") {
                return warp::reply::with_status(
                    warp::reply::json(&json!({"error": "unauthorized"})),
                    warp::http::StatusCode::UNAUTHORIZED,
                );
            }
            let queries: Vec<Value> = body[1]
                .as_array()
                .into_iter()
                .flatten()
                .map(|q| match asts.get(q["name"].as_str().unwrap_or_default()) {
                    Some(ast) => json!({"id": q["id"], "name": q["name"], "ast": ast}),
                    None => json!({"error": "app", "id": q["id"], "name": q["name"], "message": "Query not found"}),
                })
                .collect();
            warp::reply::with_status(
                warp::reply::json(&json!({"kind": "QueryResponse", "userID": "u1", "queries": queries})),
                warp::http::StatusCode::OK,
            )
        });
    let port = free_port();
    #[allow(clippy::disallowed_methods)]
    tokio::spawn(warp::serve(route).run(([127, 0, 0, 1], port)));
    (port, requests)
}

struct Server {
    base: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), zc_server::Error>>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(db: &TestDb, query_port: u16) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let replica = dir.path().join("replica.db");
        let config = <zc_server::Config as clap::Parser>::try_parse_from([
            "zc".to_owned(),
            format!("--upstream-db={}", db.url()),
            format!("--replica-file={}", replica.display()),
            format!("--port={port}"),
            format!("--app-id={}", db.name),
            format!("--query-url=http://127.0.0.1:{query_port}/query"),
        ])
        .expect("config");
        let shutdown = CancellationToken::new();
        #[allow(clippy::disallowed_methods)]
        let task = tokio::spawn(zc_server::run(config, shutdown.clone()));
        let base = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(!task.is_finished(), "server stopped during start-up");
            assert!(
                tokio::time::Instant::now() < deadline,
                "server did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Server {
            base,
            shutdown,
            task,
            _dir: dir,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let r = tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("server stops")
            .expect("server task");
        r.expect("server ends without error");
    }
}

fn named(hash: &str, name: &str, args: Vec<Value>) -> UpQueriesPatchOp {
    UpQueriesPatchOp::Put {
        hash: hash.into(),
        ast: None,
        name: Some(name.into()),
        args: Some(args),
        ttl: Some(300_000.0),
    }
}

/// The rows a client holds after applying pokes (by table and id).
#[derive(Default, Debug)]
struct View {
    rows: BTreeMap<(String, String), Value>,
    got: Vec<String>,
}

impl View {
    fn apply(&mut self, poke: &zc_testkit::client::Poke) {
        for part in &poke.parts {
            for op in part.got_queries_patch.iter().flatten() {
                if let zc_protocol::messages::QueriesPatchOp::Put { hash, .. } = op {
                    self.got.push(hash.clone());
                }
            }
            for op in part.rows_patch.iter().flatten() {
                match op {
                    RowPatchOp::Put { table_name, value } => {
                        let v = serde_json::to_value(value).expect("row");
                        let id = v["id"].to_string();
                        self.rows.insert((table_name.clone(), id), v);
                    }
                    RowPatchOp::Del { table_name, id } => {
                        let v = serde_json::to_value(id).expect("id");
                        self.rows.remove(&(table_name.clone(), v["id"].to_string()));
                    }
                    _ => {}
                }
            }
        }
    }

    fn ids(&self) -> Vec<String> {
        self.rows
            .keys()
            .map(|(_, id)| id.trim_matches('"').to_owned())
            .collect()
    }
}

/// A client connected to `base`, past the server's `connected` message.
async fn connected(
    base: &str,
    params: ConnectParams,
    init: Option<&InitConnectionBody>,
    token: Option<&str>,
) -> TestClient {
    let mut c = TestClient::connect(base, params, init, token)
        .await
        .expect("connect");
    assert!(matches!(c.recv().await, Some(Downstream::Connected(_))));
    c
}

/// Applies `c`'s pokes until its query `hash` is complete (other clients' pokes of its
/// group may come first).
async fn view_until_got(c: &mut TestClient, hash: &str) -> View {
    let mut view = View::default();
    while !view.got.iter().any(|h| h == hash) {
        view.apply(&c.poke().await.expect("poke"));
    }
    view
}

/// `n` clients `c0`, `c1`, … in `groups` groups (`{prefix}0`, `{prefix}1`, …, round robin),
/// each with the seed's open issues (the captured `openIssues` query) hydrated.
async fn watching_open_issues(
    server: &Server,
    prefix: &str,
    n: usize,
    groups: usize,
) -> Vec<(TestClient, View)> {
    let init = InitConnectionBody::new(vec![named("j89s9yb1osb", "openIssues", vec![])]);
    let mut clients = Vec::new();
    for i in 0..n {
        let group = format!("{prefix}{}", i % groups);
        let mut c = connected(
            &server.base,
            params(&group, &format!("c{i}"), None),
            Some(&init),
            Some("token"),
        )
        .await;
        let view = view_until_got(&mut c, "j89s9yb1osb").await;
        assert_eq!(view.ids(), vec!["i1", "i2"], "client {i}");
        clients.push((c, view));
    }
    clients
}

/// Applies `c`'s pokes to `view` until it holds the row `id`.
async fn apply_until_row(c: &mut TestClient, view: &mut View, id: &str) {
    while !view.ids().iter().any(|i| i == id) {
        view.apply(&c.poke().await.expect("poke after write"));
    }
}

/// The value of the gauge `name` of app `app` in a Prometheus text exposition.
fn gauge(metrics: &str, name: &str, app: &str) -> Option<String> {
    let label = format!("{name}{{app=\"{app}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(label.as_str()).map(str::to_owned))
}

async fn seed(db: &TestDb) {
    db.exec(
        "CREATE TABLE issue (id text PRIMARY KEY, title text NOT NULL, done boolean NOT NULL, n float8);
         INSERT INTO issue VALUES ('i1', 'first (edited)', false, 1), ('i2', 'second', false, 2), ('i3', 'third', true, 3);",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_session_replays_against_zc() {
    let db = TestDb::new().await;
    seed(&db).await;
    let server = Server::start(&db, spawn_query_endpoint()).await;

    // The captured client's connect request: its init message and token.
    let text = std::fs::read_to_string(format!("{CAPTURES}/custom.jsonl")).expect("capture");
    let open: Value = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("json"))
        .find(|d| d["dir"] == "open")
        .expect("open record");
    let sec = &open["data"]["secProtocol"];
    let init: InitConnectionBody =
        serde_json::from_value(sec["initConnectionMessage"][1].clone()).expect("init");
    let token = sec["authToken"].as_str().map(str::to_owned);
    let decoded = SecProtocol {
        init_connection: Some(init.clone()),
        auth_token: token.clone(),
    };
    let mut client = connected(
        &server.base,
        params("replayed-group", "replayed-client", None),
        decoded.init_connection.as_ref(),
        decoded.auth_token.as_deref(),
    )
    .await;
    let mut view = View::default();
    let first = client.poke().await.expect("first poke");
    assert_eq!(first.start.base_cookie, None);
    view.apply(&first);
    // Both captured queries are complete with the rows zero-cache sent.
    let mut got = view.got.clone();
    got.sort();
    assert_eq!(got, vec!["j89s9yb1osb", "utzqmu14j875"]);
    assert_eq!(view.ids(), vec!["i1", "i2"]);

    // The capture's upstream insert, and the poke that brings it.
    db.exec("INSERT INTO issue VALUES ('i9', 'ninth', false, 9)")
        .await;
    let poke = client.poke().await.expect("poke after insert");
    assert_eq!(
        poke.start.base_cookie.as_deref(),
        Some(first.end.cookie.as_str())
    );
    assert!(poke.end.cookie > first.end.cookie);
    view.apply(&poke);
    assert_eq!(view.ids(), vec!["i1", "i2", "i9"]);
    // A row leaving the query is a delete.
    db.exec("UPDATE issue SET done = true WHERE id = 'i2'")
        .await;
    view.apply(&client.poke().await.expect("poke after update"));
    assert_eq!(view.ids(), vec!["i1", "i9"]);

    client.send(&Upstream::Ping).await.expect("ping");
    assert!(matches!(client.recv().await, Some(Downstream::Pong)));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_follow_upstream_writes_and_bad_frames_only_hurt_their_sender() {
    let db = TestDb::new().await;
    seed(&db).await;
    let server = Server::start(&db, spawn_query_endpoint()).await;
    let mut clients = watching_open_issues(&server, "g", 12, 4).await;
    // The four groups run the same query for the same user: one pipeline.
    let metrics = reqwest_get(&format!("{}/metrics", server.base)).await;
    assert_eq!(
        gauge(&metrics, "zc_sync_pipelines", &db.name).as_deref(),
        Some("1"),
        "{metrics}"
    );

    // One client sends garbage: it gets InvalidMessage and is closed.
    let (mut bad, _) = clients.remove(0);
    bad.send_raw("this is not json").await.expect("send");
    // (Pokes for its group's other clients may still be on the way.)
    loop {
        match bad.recv().await {
            Some(Downstream::Error(e)) => {
                assert_eq!(e.kind(), ErrorKind::InvalidMessage);
                break;
            }
            Some(Downstream::PokeStart(_) | Downstream::PokePart(_) | Downstream::PokeEnd(_)) => {}
            other => panic!("expected an InvalidMessage error, got {other:?}"),
        }
    }
    assert!(bad.closed().await);

    // Everyone else sees the upstream write.
    db.exec("INSERT INTO issue VALUES ('i0', 'zeroth', false, 0)")
        .await;
    for (c, view) in &mut clients {
        apply_until_row(c, view, "i0").await;
        assert_eq!(view.ids(), vec!["i0", "i1", "i2"]);
    }

    // A message far larger than the socket's read buffer (8 KiB) arrives whole: a ping
    // padded with 256 KiB of JSON whitespace is answered.
    let (c, _) = &mut clients[0];
    let padded = format!("[\"ping\",{{}}{}]", " ".repeat(256 << 10));
    c.send_raw(&padded).await.expect("send");
    loop {
        match c.recv().await {
            Some(Downstream::Pong) => break,
            Some(Downstream::PokeStart(_) | Downstream::PokePart(_) | Downstream::PokeEnd(_)) => {}
            other => panic!("expected pong, got {other:?}"),
        }
    }
    server.stop().await;
}

/// A desired query holding a NUL character (no PostgreSQL text or jsonb can hold one, so
/// its CVR record could not be written) is refused alone with a query error; the client's
/// other query and its group go on. Before, the group's every CVR write failed, and the
/// client reconnected into the same failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_holding_a_nul_character_is_refused_alone() {
    let db = TestDb::new().await;
    seed(&db).await;
    let server = Server::start(&db, spawn_query_endpoint()).await;
    let init = InitConnectionBody::new(vec![
        named("nul1", "openIssues", vec![json!({"title": "a\u{0}b"})]),
        named("j89s9yb1osb", "openIssues", vec![]),
    ]);
    let mut c = connected(
        &server.base,
        params("g", "c", None),
        Some(&init),
        Some("token"),
    )
    .await;
    let mut view = view_until_got(&mut c, "j89s9yb1osb").await;
    assert_eq!(view.ids(), vec!["i1", "i2"]);
    assert!(!view.got.iter().any(|h| h == "nul1"));
    let refused = c.other.iter().any(|m| match m {
        Downstream::TransformError(errors) => errors.iter().any(|e| {
            matches!(e, ErroredQuery::Parse { id, message, .. }
                if id == "nul1" && message.contains("NUL"))
        }),
        _ => false,
    });
    assert!(refused, "no query error for the NUL query: {:?}", c.other);

    // The group still writes its record and follows upstream writes.
    db.exec("INSERT INTO issue VALUES ('i0', 'zeroth', false, 0)")
        .await;
    apply_until_row(&mut c, &mut view, "i0").await;
    assert!(
        !c.other.iter().any(|m| matches!(m, Downstream::Error(_))),
        "{:?}",
        c.other
    );
    server.stop().await;
}

/// A client group whose clients have all left stops after its keepalive (5 s, as
/// zero-cache's view syncer) even while upstream writes keep waking it: it no longer
/// advances its pipelines or writes its CVR for every change. A client that comes back
/// later gets a new group actor that resumes from the CVR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_without_clients_stops_while_writes_go_on() {
    let db = TestDb::new().await;
    seed(&db).await;
    let server = Server::start(&db, spawn_query_endpoint()).await;
    let groups = || client_groups(&server.base, &db.name);
    let init = InitConnectionBody::new(vec![named("j89s9yb1osb", "openIssues", vec![])]);
    let connect = || async {
        let mut c = connected(
            &server.base,
            params("idle-group", "c1", None),
            Some(&init),
            Some("token"),
        )
        .await;
        let view = view_until_got(&mut c, "j89s9yb1osb").await;
        (c, view)
    };
    let (c, view) = connect().await;
    assert_eq!(view.ids(), vec!["i1", "i2"]);
    assert_eq!(groups().await.as_deref(), Some("1"));
    let cvr = db.pool().await;
    let version_sql = format!(
        "SELECT version FROM \"{}_0/zc_cvr\".instances WHERE client_group_id = 'idle-group'",
        db.name
    );
    let stored = || async {
        sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(version_sql.as_str()))
            .fetch_one(&cvr)
            .await
            .expect("the group's stored version")
    };
    drop(c);

    // Writes every 100 ms; the group must be gone well within 20 s. Until then it follows
    // them without writing its record for each (once at most, if a write came before the
    // group saw its client go).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    let mut versions = std::collections::BTreeSet::new();
    while groups().await.as_deref() != Some("0") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the group without clients is still running"
        );
        versions.insert(stored().await);
        n += 1;
        db.exec(&format!("UPDATE issue SET n = {n} WHERE id = 'i2'"))
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(n >= 10, "{n} writes");
    assert!(versions.len() <= 2, "{versions:?} after {n} writes");
    // It wrote it when it left.
    let last_seen = versions.last().cloned().unwrap_or_default();
    assert!(stored().await > last_seen);

    // Back again: a new actor serves the group, with the writes made while it was gone
    // (the last one may still be on its way through replication).
    let (mut c, mut view) = connect().await;
    let i2 = |view: &View| {
        view.rows
            .iter()
            .find_map(|((_, id), v)| (id == "\"i2\"").then(|| v["n"].as_f64()))
            .flatten()
    };
    while i2(&view) != Some(f64::from(n)) {
        let Some(poke) = c.poke().await else {
            panic!("the last write (n = {n}) did not come: {view:?}");
        };
        view.apply(&poke);
    }
    assert_eq!(view.ids(), vec!["i1", "i2"]);
    assert_eq!(groups().await.as_deref(), Some("1"));
    drop(c);
    server.stop().await;
}

/// A bulk change upstream (far more rows than the shared pipelines hold) is not pushed
/// through them row by row: they are rebuilt at the new version, and each group still sends
/// its clients exactly what changed for them, with the `lastMutationID` the same transaction
/// set. The next small write is pushed as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_change_rebuilds_the_pipelines_and_clients_get_only_their_changes() {
    let db = TestDb::new().await;
    seed(&db).await;
    let server = Server::start(&db, spawn_query_endpoint()).await;
    let mut clients = watching_open_issues(&server, "bulk", 3, 2).await;
    let rebuilds = || async {
        let metrics = reqwest_get(&format!("{}/metrics", server.base)).await;
        gauge(&metrics, "zc_sync_pipeline_rebuilds_total", &db.name)
    };
    assert_eq!(rebuilds().await, None);

    // One transaction: 5,000 closed issues (no query holds them), an edit, a close, and
    // client c0's last mutation id.
    db.exec(&format!(
        "BEGIN;
         INSERT INTO issue SELECT 'bulk' || g, 'bulk', true, g FROM generate_series(1, 5000) g;
         UPDATE issue SET title = 'first (bulk)' WHERE id = 'i1';
         UPDATE issue SET done = true WHERE id = 'i2';
         INSERT INTO \"{}_0\".clients VALUES ('bulk0', 'c0', 7, NULL);
         COMMIT;",
        db.name
    ))
    .await;
    for (i, (c, view)) in clients.iter_mut().enumerate() {
        let mut lmids = BTreeMap::new();
        let mut rows = 0;
        while view.ids() != vec!["i1"] {
            let poke = c.poke().await.expect("poke after the bulk change");
            for part in &poke.parts {
                rows += part.rows_patch.as_ref().map_or(0, Vec::len);
                lmids.extend(part.last_mutation_id_changes.clone().unwrap_or_default());
            }
            view.apply(&poke);
        }
        let title = view
            .rows
            .iter()
            .find_map(|((_, id), v)| (id == "\"i1\"").then(|| v["title"].clone()));
        assert_eq!(title, Some(json!("first (bulk)")), "client {i}");
        // The edit and the delete; none of the bulk's rows.
        assert_eq!(rows, 2, "client {i}");
        let expected = (i % 2 == 0).then_some(7);
        assert_eq!(lmids.get("c0").copied(), expected, "client {i}: {lmids:?}");
    }
    assert_eq!(rebuilds().await.as_deref(), Some("1"));

    // A small write afterwards goes through the rebuilt pipelines.
    db.exec("INSERT INTO issue VALUES ('i0', 'zeroth', false, 0)")
        .await;
    for (c, view) in &mut clients {
        apply_until_row(c, view, "i0").await;
        assert_eq!(view.ids(), vec!["i0", "i1"]);
    }
    assert_eq!(rebuilds().await.as_deref(), Some("1"));
    server.stop().await;
}

/// How many client groups of app `app` the server at `base` runs, by its metrics.
async fn client_groups(base: &str, app: &str) -> Option<String> {
    let metrics = reqwest_get(&format!("{base}/metrics")).await;
    gauge(&metrics, "zc_sync_client_groups", app)
}

/// Waits (20 s at most) until the server at `base` runs `n` client groups of app `app`.
async fn until_groups(base: &str, app: &str, n: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if client_groups(base, app).await.as_deref() == Some(n) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server does not run {n} client groups"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Applies `c`'s pokes to `view` until `done(view)`, each poke following `cookie` (which
/// moves on with them); fails if none comes for 10 s.
async fn apply_from_cookie(
    c: &mut TestClient,
    view: &mut View,
    cookie: &mut String,
    done: impl Fn(&View) -> bool,
) {
    while !done(view) {
        let poke = tokio::time::timeout(Duration::from_secs(10), c.poke())
            .await
            .ok()
            .flatten();
        let Some(poke) = poke else {
            panic!("no poke came: {view:?}");
        };
        assert_eq!(poke.start.base_cookie.as_deref(), Some(cookie.as_str()));
        view.apply(&poke);
        cookie.clone_from(&poke.end.cookie);
    }
}

/// A client that comes back with its cookie to a group whose actor had stopped gets the
/// rows its queries hold that changed upstream meanwhile, and the group's last mutation
/// ids: the new actor resumes from the CVR and looks up each held row's (and each of the
/// group's client rows') last change in the replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_group_puts_the_rows_changed_while_it_was_gone() {
    let db = TestDb::new().await;
    seed(&db).await;
    let server = Server::start(&db, spawn_query_endpoint()).await;
    let init = InitConnectionBody::new(vec![named("j89s9yb1osb", "openIssues", vec![])]);
    let client = |id: &'static str, cookie: Option<String>| {
        let (base, init) = (&server.base, &init);
        async move {
            let group = if id == "w1" { "watcher" } else { "resumed" };
            connected(
                base,
                params(group, id, cookie.as_deref()),
                Some(init),
                Some("token"),
            )
            .await
        }
    };
    let mut c = client("c1", None).await;
    let mut view = View::default();
    let mut cookie = String::new();
    while !view.got.iter().any(|h| h == "j89s9yb1osb") {
        let poke = c.poke().await.expect("poke");
        view.apply(&poke);
        cookie.clone_from(&poke.end.cookie);
    }
    assert_eq!(view.ids(), vec!["i1", "i2"]);
    drop(c);
    until_groups(&server.base, &db.name, "0").await;

    // Changed while the group is gone; another group shows when the replica has it.
    db.exec("UPDATE issue SET title = 'changed while gone' WHERE id = 'i1'")
        .await;
    let changed = |view: &View| {
        view.rows
            .iter()
            .any(|((_, id), v)| id == "\"i1\"" && v["title"] == json!("changed while gone"))
    };
    let mut other = client("w1", None).await;
    let mut seen = view_until_got(&mut other, "j89s9yb1osb").await;
    while !changed(&seen) {
        seen.apply(&other.poke().await.expect("poke of the watcher"));
    }
    let mut c = client("c2", Some(cookie.clone())).await;
    apply_from_cookie(&mut c, &mut view, &mut cookie, changed).await;
    assert_eq!(view.ids(), vec!["i1", "i2"]);

    // Gone again, and the table gains a column (zc copies it again when the stream next
    // shows the table, here with a change to a row no query holds): every held row of the
    // table comes back with it.
    drop(c);
    until_groups(&server.base, &db.name, "1").await;
    db.exec(
        "ALTER TABLE issue ADD COLUMN extra text NOT NULL DEFAULT 'x';
         UPDATE issue SET n = 4 WHERE id = 'i3';",
    )
    .await;
    let extended = |view: &View| view.rows.values().all(|v| v["extra"] == json!("x"));
    while !extended(&seen) {
        seen.apply(&other.poke().await.expect("poke of the watcher"));
    }
    let mut c = client("c3", Some(cookie.clone())).await;
    apply_from_cookie(&mut c, &mut view, &mut cookie, extended).await;
    assert_eq!(view.ids(), vec!["i1", "i2"]);

    // A client that takes the group's latest version, and leaves with it.
    drop(c);
    until_groups(&server.base, &db.name, "1").await;
    let mut c = client("c4", Some(cookie.clone())).await;
    let poke = c.poke().await.expect("a connect poke");
    view.apply(&poke);
    cookie.clone_from(&poke.end.cookie);

    // Gone again, and a mutation of c4 commits upstream, changing no row the group holds
    // (an app's transaction that replicates after the group left; written here by hand).
    // When c4 comes back with the record's cookie, it is sent its last mutation id.
    // The watcher's own client row, in the same transaction, shows when the replica has it.
    drop(c);
    until_groups(&server.base, &db.name, "1").await;
    db.exec(&format!(
        r#"INSERT INTO "{}_0".clients ("clientGroupID", "clientID", "lastMutationID")
           VALUES ('resumed', 'c4', 7), ('watcher', 'w1', 3)"#,
        db.name
    ))
    .await;
    let lmid = |poke: &zc_testkit::client::Poke, client: &str| {
        poke.parts.iter().find_map(|p| {
            p.last_mutation_id_changes
                .as_ref()
                .and_then(|m| m.get(client).copied())
        })
    };
    loop {
        let poke = other.poke().await.expect("poke of the watcher");
        if lmid(&poke, "w1") == Some(3) {
            break;
        }
    }
    let mut c = client("c4", Some(cookie.clone())).await;
    let poke = c.poke().await.expect("a connect poke");
    assert_eq!(poke.start.base_cookie.as_deref(), Some(cookie.as_str()));
    assert_eq!(lmid(&poke, "c4"), Some(7), "{poke:?}");
    drop((c, other));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_errors_are_the_protocols() {
    let db = TestDb::new().await;
    seed(&db).await;
    let (query_port, requests) = spawn_counting_query_endpoint();
    let server = Server::start(&db, query_port).await;
    let init = InitConnectionBody::new(vec![]);

    // A cookie for a group this server has no record of.
    let mut c = connected(
        &server.base,
        params("g", "c1", Some("zz")),
        Some(&init),
        None,
    )
    .await;
    match c.recv().await {
        Some(Downstream::Error(e)) => assert_eq!(e.kind(), ErrorKind::ClientNotFound),
        other => panic!("expected ClientNotFound, got {other:?}"),
    }
    // A cookie from the future of a group the server knows.
    let mut c = connected(&server.base, params("g", "c1", None), Some(&init), None).await;
    assert!(c.poke().await.is_some());
    let mut c = connected(
        &server.base,
        params("g", "c1b", Some("zz")),
        Some(&init),
        None,
    )
    .await;
    match c.recv().await {
        Some(Downstream::Error(e)) => {
            assert_eq!(e.kind(), ErrorKind::InvalidConnectionRequestBaseCookie)
        }
        other => panic!("expected a base cookie error, got {other:?}"),
    }

    // A token the app refuses: TransformFailed with the HTTP status. The app answers
    // within milliseconds, but the error is held until the 1.9.0 client has finished
    // handling `connected` (it would otherwise end in its `error` state, not `needs-auth`).
    let mut c = connected(
        &server.base,
        params("g2", "c2", None),
        Some(&init),
        Some("bad"),
    )
    .await;
    let got_connected = std::time::Instant::now();
    match c.recv().await {
        Some(Downstream::Error(e)) => assert_eq!(e.kind(), ErrorKind::TransformFailed),
        other => panic!("expected TransformFailed, got {other:?}"),
    }
    let held = got_connected.elapsed();
    assert!(
        held >= std::time::Duration::from_millis(200),
        "the error came {held:?} after connected"
    );

    // The same token with a named query: refused by the query's transform.
    let open_issues = InitConnectionBody::new(vec![named("j89s9yb1osb", "openIssues", vec![])]);
    let mut c = connected(
        &server.base,
        params("g2", "c2", None),
        Some(&open_issues),
        Some("bad"),
    )
    .await;
    match c.recv().await {
        Some(Downstream::Error(e)) => assert_eq!(e.kind(), ErrorKind::TransformFailed),
        other => panic!("expected TransformFailed, got {other:?}"),
    }

    // A connection costs the app one request: with named queries, their transform (which
    // also checks its credentials); without, the check alone.
    let before = requests.load(Ordering::SeqCst);
    let mut c = connected(
        &server.base,
        params("g5", "c5", None),
        Some(&open_issues),
        Some("t"),
    )
    .await;
    let view = view_until_got(&mut c, "j89s9yb1osb").await;
    assert_eq!(view.ids(), vec!["i1", "i2"]);
    assert_eq!(requests.load(Ordering::SeqCst) - before, 1);
    let before = requests.load(Ordering::SeqCst);
    let mut c = connected(
        &server.base,
        params("g6", "c6", None),
        Some(&init),
        Some("t"),
    )
    .await;
    assert!(c.poke().await.is_some());
    assert_eq!(requests.load(Ordering::SeqCst) - before, 1);

    // A query the app does not know: transformError, and the query is not complete.
    let init = InitConnectionBody::new(vec![named("nope", "notOnServer", vec![])]);
    let mut c = connected(
        &server.base,
        params("g3", "c3", None),
        Some(&init),
        Some("t"),
    )
    .await;
    match c.recv().await {
        Some(Downstream::TransformError(errors)) => assert_eq!(errors.len(), 1),
        other => panic!("expected transformError, got {other:?}"),
    }
    let poke = c.poke().await.expect("poke");
    assert!(poke.parts.iter().all(|p| p.got_queries_patch.is_none()));

    // A client schema that does not fit the replica.
    let mut init = InitConnectionBody::new(vec![]);
    init.client_schema = Some(
        serde_json::from_value(json!({"tables": {
            "nope": {"columns": {"id": {"type": "string"}}, "primaryKey": ["id"]},
            "issue": {"columns": {"id": {"type": "number"}, "title": {"type": "string"}}, "primaryKey": ["id"]}
        }}))
        .expect("client schema"),
    );
    let mut c = connected(&server.base, params("g4", "c4", None), Some(&init), None).await;
    match c.recv().await {
        Some(Downstream::Error(e)) => {
            assert_eq!(e.kind(), ErrorKind::SchemaVersionNotSupported);
            assert!(e.message().contains("\"nope\" table"), "{}", e.message());
            assert!(e.message().contains("\"issue\".\"id\""), "{}", e.message());
        }
        other => panic!("expected SchemaVersionNotSupported, got {other:?}"),
    }

    // A plain GET of the sync path is told what is missing.
    let body = reqwest_get(&format!("{}/sync/v51/connect", server.base)).await;
    assert!(body.contains("not a WebSocket upgrade"), "{body}");

    // Health and metrics.
    let body = reqwest_get(&format!("{}/", server.base)).await;
    assert_eq!(body, "OK");
    let metrics = reqwest_get(&format!("{}/metrics", server.base)).await;
    assert!(metrics.contains("zc_connections_total"), "{metrics}");
    server.stop().await;
}

async fn reqwest_get(url: &str) -> String {
    // A plain HTTP/1.1 GET over TCP, to keep the test free of another HTTP client.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = tokio::net::TcpStream::connect(host).await.expect("connect");
    s.write_all(
        format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}
