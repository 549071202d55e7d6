//! Wire messages and connect requests against traffic captured between the real
//! `@rocicorp/zero` 1.9.0 client and zero-cache 1.9.0 (`fixtures/captures/`, copied from the
//! protocol notes' `protocol-captures/`).
//!
//! Transcript lines are `{"t": ms, "dir": "open"|"upgrade"|"up"|"down"|"close"|"note", "data": …}`;
//! `up`/`down` data is one WebSocket frame, `open` has the URL and the decoded
//! `Sec-WebSocket-Protocol` JSON plus the encoded length. The `error-probes-*.txt` files hold
//! raw-socket probes: `["down", "<frame text>"]` and `["upgrade", 101, "<header prefix>"]`.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use proptest::prelude::*;
use serde_json::{Value, json};
use zc_protocol::ast;
use zc_protocol::connect::{
    ConnectError, ConnectParams, PROTOCOL_VERSION, SecProtocolError, decode_sec_protocol,
    encode_sec_protocol, parse_connect_path, parse_connect_request,
};
use zc_protocol::messages::{
    AnalyzeQueryOptions, BackoffErrorKind, BasicErrorKind, ChangeDesiredQueriesBody, ClientSchema,
    ColumnSchema, ConnectedBody, CrudMutation, CrudOp, CustomMutation, DeleteClientsBody,
    Downstream, ErrorBody, ErrorKind, ErrorOrigin, ErroredQuery, FailureCause, InitConnectionBody,
    InspectDownBody, InspectQueryRow, InspectUpBody, MessageError, Mutation, MutationId,
    MutationPatchOp, MutationResponse, MutationResult, PokeEndBody, PokePartBody, PokeStartBody,
    PullRequestBody, PullResponseBody, PushBody, PushResponseBody, QueriesPatchOp, RowPatchOp,
    ServerFailureReason, TableSchema, UpQueriesPatchOp, UpdateAuthBody, Upstream, ValueType,
    WireRow, ZeroCacheFailureReason, parse_downstream, parse_upstream,
};

fn captures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/captures")
}

fn capture_files(ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(captures_dir())
        .expect("fixtures/captures")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    files.sort();
    files
}

/// One transcript line: its direction, its data as a value, and the raw text of the data.
struct Line {
    file: String,
    dir: String,
    data: Value,
    raw: String,
    whole: Value,
    text: String,
}

fn transcript_lines() -> Vec<Line> {
    let mut out = Vec::new();
    for path in capture_files("jsonl") {
        let file = path
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        for text in std::fs::read_to_string(&path).expect("transcript").lines() {
            let whole: Value = serde_json::from_str(text).expect("transcript line");
            let Some(dir) = whole.get("dir").and_then(Value::as_str) else {
                continue; // custom-api-server.jsonl: HTTP exchanges, tested separately
            };
            // The capture harness writes `{"t":…,"dir":…,"data":<frame>}`.
            let start = text.find(",\"data\":").expect("data member") + ",\"data\":".len();
            let raw = text[start..text.len() - 1].to_owned();
            assert_eq!(
                serde_json::from_str::<Value>(&raw).expect("frame"),
                whole["data"]
            );
            out.push(Line {
                file: file.clone(),
                dir: dir.to_owned(),
                data: whole["data"].clone(),
                raw,
                whole: whole.clone(),
                text: text.to_owned(),
            });
        }
    }
    out
}

fn expected_upstream_variant(m: &Upstream) -> bool {
    matches!(
        (m.tag(), m),
        ("initConnection", Upstream::InitConnection(_))
            | ("ping", Upstream::Ping)
            | ("deleteClients", Upstream::DeleteClients(_))
            | ("changeDesiredQueries", Upstream::ChangeDesiredQueries(_))
            | ("pull", Upstream::Pull(_))
            | ("updateAuth", Upstream::UpdateAuth(_))
            | ("push", Upstream::Push(_))
            | ("closeConnection", Upstream::CloseConnection(_))
            | ("inspect", Upstream::Inspect(_))
            | ("ackMutationResponses", Upstream::AckMutationResponses(_))
    )
}

#[test]
fn every_captured_frame_parses_and_reserializes_to_the_same_json() {
    let mut up = 0;
    let mut down = 0;
    let mut byte_exact = 0;
    for line in transcript_lines() {
        let ctx = format!("{}: {}", line.file, line.raw);
        let tag = line.data[0].as_str().unwrap_or_default();
        let text = match line.dir.as_str() {
            "up" => {
                let m = parse_upstream(&line.raw).unwrap_or_else(|e| panic!("{ctx}: {e:?}"));
                assert_eq!(m.tag(), tag, "{ctx}");
                assert!(expected_upstream_variant(&m), "{ctx}");
                assert_eq!(Upstream::from_value(&line.data).unwrap(), m);
                up += 1;
                m.to_json()
            }
            "down" => {
                let m = parse_downstream(&line.raw).unwrap_or_else(|e| panic!("{ctx}: {e:?}"));
                assert_eq!(m.tag(), tag, "{ctx}");
                down += 1;
                m.to_json()
            }
            _ => continue,
        };
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, line.data, "{ctx}\nre-serialized: {text}");
        if text == line.raw {
            byte_exact += 1;
        } else {
            // zero-cache adds a poke part's members in the order its patches arrive.
            assert_eq!(tag, "pokePart", "{ctx}\nre-serialized: {text}");
        }
    }
    assert!(up >= 10 && down >= 90, "up {up}, down {down}");
    // Member order follows the client and zero-cache, so nearly every captured frame comes
    // back byte for byte.
    assert!(byte_exact + 5 >= up + down, "{byte_exact} of {}", up + down);
}

#[test]
fn captured_frames_land_in_the_right_variants() {
    let lines = transcript_lines();
    let downs: Vec<Downstream> = lines
        .iter()
        .filter(|l| l.dir == "down")
        .map(|l| parse_downstream(&l.raw).unwrap())
        .collect();
    let ups: Vec<Upstream> = lines
        .iter()
        .filter(|l| l.dir == "up")
        .map(|l| parse_upstream(&l.raw).unwrap())
        .collect();

    // The first poke of a new group starts from a null cookie.
    assert!(downs.iter().any(|d| matches!(
        d,
        Downstream::PokeStart(PokeStartBody {
            base_cookie: None,
            ..
        })
    )));
    // Row puts keep the server's column order.
    let put = downs
        .iter()
        .find_map(|d| match d {
            Downstream::PokePart(p) => p.rows_patch.as_ref()?.iter().find_map(|op| match op {
                RowPatchOp::Put { table_name, value } if table_name == "issue" => Some(value),
                _ => None,
            }),
            _ => None,
        })
        .unwrap();
    let columns: Vec<&str> = put.iter().map(|(c, _)| c).collect();
    assert_eq!(columns, ["id", "title", "done", "n"]);
    // Row deletes, mutation results and their cleanup, transform errors.
    assert!(downs.iter().any(|d| matches!(d, Downstream::PokePart(p)
        if p.rows_patch.iter().flatten().any(|op| matches!(op, RowPatchOp::Del { .. })))));
    assert!(downs.iter().any(|d| matches!(d, Downstream::PokePart(p)
        if p.mutations_patch.iter().flatten().any(|op| matches!(op,
            MutationPatchOp::Put { mutation: MutationResponse {
                result: MutationResult::App { message: Some(m), .. }, .. } } if m == "nope: test")))));
    assert!(
        downs.iter().any(|d| matches!(d, Downstream::PokePart(p)
        if p.mutations_patch.iter().flatten().any(|op| matches!(op, MutationPatchOp::Del { .. }))))
    );
    assert!(
        downs
            .iter()
            .any(|d| matches!(d, Downstream::TransformError(errs)
        if matches!(&errs[..], [ErroredQuery::App { name, .. }] if name == "notOnServer")))
    );
    assert!(downs.iter().any(|d| matches!(d, Downstream::Pong)));

    // CRUD insert/update/delete, custom mutations, acks, auth updates, query removal, ping.
    let crud_ops: Vec<&CrudOp> = ups
        .iter()
        .filter_map(|u| match u {
            Upstream::Push(p) => Some(&p.mutations),
            _ => None,
        })
        .flatten()
        .filter_map(|m| match m {
            Mutation::Crud(c) => Some(&c.ops),
            Mutation::Custom(_) => None,
        })
        .flatten()
        .collect();
    assert!(crud_ops.iter().any(|o| matches!(o, CrudOp::Insert { .. })));
    assert!(crud_ops.iter().any(|o| matches!(o, CrudOp::Update { .. })));
    assert!(crud_ops.iter().any(|o| matches!(o, CrudOp::Delete { .. })));
    assert!(ups.iter().any(|u| matches!(u, Upstream::Push(p)
        if matches!(&p.mutations[..], [Mutation::Custom(CustomMutation { name, .. })] if name == "issue.setTitle"))));
    assert!(
        ups.iter()
            .any(|u| matches!(u, Upstream::AckMutationResponses(MutationId { id: 2, .. })))
    );
    assert!(ups.iter().any(
        |u| matches!(u, Upstream::UpdateAuth(UpdateAuthBody { auth }) if auth == "opaque-token-2")
    ));
    assert!(
        ups.iter()
            .any(|u| matches!(u, Upstream::ChangeDesiredQueries(c)
        if matches!(&c.desired_queries_patch[..], [UpQueriesPatchOp::Del { .. }])))
    );
    assert!(ups.contains(&Upstream::Ping));
}

/// `encodeURIComponent(base64(text))`, computed independently of the code under test.
fn client_header(json_text: &str) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(json_text)
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D")
}

#[test]
fn captured_connect_requests_decode_and_encode_like_the_client() {
    let lines = transcript_lines();
    let mut opens = 0;
    for line in lines.iter().filter(|l| l.dir == "open") {
        let open = &line.whole["data"];
        let url = open["url"].as_str().unwrap();
        // The decoded header JSON as the client wrote it.
        let start = line.text.find("\"secProtocol\":").unwrap() + "\"secProtocol\":".len();
        let end = line.text.find(",\"secProtocolLength\":").unwrap();
        let header_json = &line.text[start..end];
        let header = client_header(header_json);
        assert_eq!(
            header.len() as u64,
            open["secProtocolLength"].as_u64().unwrap(),
            "{url}"
        );

        let decoded = decode_sec_protocol(&header).unwrap();
        let init = decoded.init_connection.as_ref().unwrap();
        let sent: Value = serde_json::from_str(header_json).unwrap();
        assert_eq!(
            serde_json::to_value(init).unwrap(),
            sent["initConnectionMessage"][1]
        );
        assert_eq!(
            decoded.auth_token.as_deref(),
            sent.get("authToken").and_then(Value::as_str)
        );
        // Re-encoding reproduces the client's header byte for byte.
        assert_eq!(
            encode_sec_protocol(Some(init), decoded.auth_token.as_deref()),
            header,
            "{url}"
        );

        let req = parse_connect_request(url, Some(&header)).unwrap();
        assert_eq!(req.path.version, PROTOCOL_VERSION);
        assert_eq!(req.path.base, None);
        assert_eq!(req.path.action, "connect");
        assert_eq!(req.sec_protocol, decoded);
        let p = &req.params;
        assert_eq!(p.client_id.len(), 18);
        assert_eq!(p.user_id.as_deref(), Some("u1"));
        assert_eq!(p.wsid.len(), 21);
        assert!(p.profile_id.as_deref().unwrap().starts_with('p'));
        assert_eq!(p.lmid, 0);
        assert!(!p.debug_perf && p.extra.is_empty());
        if url.contains("baseCookie=&") {
            assert_eq!(p.base_cookie, None);
            assert!(init.client_schema.is_some());
        } else {
            assert!(p.base_cookie.is_some());
        }
        // The client wrote `ts` with a fraction; everything else comes back verbatim.
        let query = url.split_once('?').unwrap().1;
        let ts = query.split('&').find(|kv| kv.starts_with("ts=")).unwrap();
        let ts_int = format!("ts={}", p.timestamp);
        assert_eq!(p.to_query(), query.replace(ts, &ts_int));
        assert_eq!(ConnectParams::from_query(&p.to_query()).unwrap(), *p);
        opens += 1;
    }
    assert!(opens >= 8);
    let reconnect = lines
        .iter()
        .find(|l| l.dir == "open" && l.whole["data"]["url"].as_str().unwrap().contains("%3A01"))
        .unwrap();
    let url = reconnect.whole["data"]["url"].as_str().unwrap();
    let req = parse_connect_request(url, Some("e30%3D")).unwrap();
    assert_eq!(req.params.base_cookie.as_deref(), Some("4g4tj4:01"));

    // The 101 responses echo the request value (the capture keeps its first 24 characters).
    for line in lines.iter().filter(|l| l.dir == "upgrade") {
        let echoed = line.whole["data"]["headers"]["sec-websocket-protocol"]
            .as_str()
            .unwrap();
        assert!(echoed.starts_with("eyJpbml0Q29ubmVjdGlvbk1l"));
        assert!(client_header("{\"initConnectionMessage\":").starts_with(&echoed[..20]));
    }
}

/// Frames of the raw-socket probes (`["down", "<frame text>"]`).
fn probe_frames() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for path in capture_files("txt") {
        let file = path
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        for line in std::fs::read_to_string(&path).expect("probe file").lines() {
            let line = line.trim();
            if !line.starts_with('[') {
                continue;
            }
            let v: Value = serde_json::from_str(line).expect("probe line");
            out.push((file.clone(), v.to_string()));
        }
    }
    out
}

#[test]
fn probe_frames_parse_and_round_trip() {
    let mut errors = Vec::new();
    let mut headers = 0;
    for (file, line) in probe_frames() {
        let v: Value = serde_json::from_str(&line).unwrap();
        match v[0].as_str().unwrap() {
            "down" => {
                let text = v[1].as_str().unwrap();
                let m = parse_downstream(text).unwrap_or_else(|e| panic!("{file}: {text}: {e:?}"));
                assert_eq!(
                    serde_json::from_str::<Value>(&m.to_json()).unwrap(),
                    serde_json::from_str::<Value>(text).unwrap()
                );
                assert_eq!(m.to_json(), text, "{file}: byte for byte");
                if let Downstream::Error(e) = m {
                    assert_eq!(e.origin(), Some(ErrorOrigin::ZeroCache));
                    errors.push(e);
                }
            }
            "upgrade" if v[2] == "e30%3D" => {
                let d = decode_sec_protocol("e30%3D").unwrap();
                assert_eq!((d.init_connection, d.auth_token), (None, None));
                assert_eq!(encode_sec_protocol(None, None), "e30%3D");
                headers += 1;
            }
            _ => {}
        }
    }
    assert_eq!(headers, 2);
    let kinds: std::collections::BTreeSet<ErrorKind> = errors.iter().map(ErrorBody::kind).collect();
    for k in [
        ErrorKind::VersionNotSupported,
        ErrorKind::InvalidMessage,
        ErrorKind::InvalidConnectionRequest,
        ErrorKind::SchemaVersionNotSupported,
        ErrorKind::ClientNotFound,
        ErrorKind::InvalidPush,
        ErrorKind::Internal,
        ErrorKind::Unauthorized,
        ErrorKind::PushFailed,
    ] {
        assert!(kinds.contains(&k), "{k}");
    }
    // The constructors produce what zero-cache sent.
    for e in &errors {
        let rebuilt = match e.kind() {
            ErrorKind::VersionNotSupported => {
                let v = if e.message().contains("v99") { 99 } else { 29 };
                ErrorBody::version_not_supported(v)
            }
            ErrorKind::ClientNotFound => ErrorBody::client_not_found(),
            ErrorKind::InvalidPush => ErrorBody::invalid_push(e.message()),
            ErrorKind::Unauthorized => ErrorBody::unauthorized(e.message()),
            ErrorKind::PushFailed => ErrorBody::push_failed(
                e.message(),
                vec![MutationId {
                    client_id: "c1".into(),
                    id: 1,
                }],
                FailureCause::Http {
                    status: 401,
                    body_preview: None,
                },
            ),
            _ => continue,
        };
        assert_eq!(&rebuilt, e);
    }
}

#[test]
fn app_server_exchanges_use_the_same_push_and_result_types() {
    let text = std::fs::read_to_string(captures_dir().join("custom-api-server.jsonl")).unwrap();
    let mut pushes = 0;
    let mut results = 0;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        if !v["path"].as_str().unwrap().starts_with("/mutate") {
            continue;
        }
        // zero-cache forwards the push body unchanged to the mutate endpoint.
        let push: PushBody = serde_json::from_value(v["body"].clone()).unwrap();
        assert_eq!(serde_json::to_value(&push).unwrap(), v["body"]);
        pushes += 1;
        for r in v["response"]["mutations"].as_array().unwrap() {
            let r2: MutationResponse = serde_json::from_value(r.clone()).unwrap();
            assert_eq!(serde_json::to_value(&r2).unwrap(), *r);
            results += 1;
        }
    }
    assert!(pushes >= 4 && results >= 2);
}

/// Messages the captures do not contain, built in code: each round-trips through its text.
fn constructed_messages() -> (Vec<Upstream>, Vec<Downstream>) {
    let ast = ast::parse(r#"{"table":"issue","limit":1}"#).expect("ast");
    let row = WireRow::new()
        .with("id", "i1")
        .with("n", 1.5)
        .with("j", json!({"a": [1]}));
    let pk = WireRow::new().with("id", "i1");
    let mid = MutationId {
        client_id: "c1".into(),
        id: 3,
    };
    let schema = ClientSchema {
        tables: [(
            "issue".to_owned(),
            TableSchema {
                columns: [
                    (
                        "id".to_owned(),
                        ColumnSchema {
                            value_type: ValueType::String,
                        },
                    ),
                    (
                        "j".to_owned(),
                        ColumnSchema {
                            value_type: ValueType::Json,
                        },
                    ),
                ]
                .into(),
                primary_key: vec!["id".into()],
            },
        )]
        .into(),
    };
    let init = InitConnectionBody {
        desired_queries_patch: vec![
            UpQueriesPatchOp::Put {
                hash: "h1".into(),
                ast: Some(Box::new(ast.clone())),
                name: None,
                args: None,
                ttl: Some(300_000.0),
            },
            UpQueriesPatchOp::Put {
                hash: "h2".into(),
                ast: None,
                name: Some("q".into()),
                args: Some(vec![json!({"id": "i1"})]),
                ttl: Some(0.5),
            },
            UpQueriesPatchOp::Del { hash: "h3".into() },
            UpQueriesPatchOp::Clear,
        ],
        deleted: Some(DeleteClientsBody {
            client_ids: Some(vec!["old".into()]),
            client_group_ids: None,
        }),
        client_schema: Some(schema),
        user_push_url: Some("https://app/mutate".into()),
        user_push_headers: Some([("x-a".to_owned(), "1".to_owned())].into()),
        user_query_url: Some("https://app/query".into()),
        user_query_headers: Some(Default::default()),
        active_clients: Some(vec!["c1".into()]),
        traceparent: Some("00-abc-def-01".into()),
    };
    let ups = vec![
        Upstream::InitConnection(init),
        Upstream::InitConnection(InitConnectionBody::new(vec![])),
        Upstream::Ping,
        Upstream::DeleteClients(DeleteClientsBody::default()),
        Upstream::ChangeDesiredQueries(ChangeDesiredQueriesBody {
            desired_queries_patch: vec![UpQueriesPatchOp::Del { hash: "h".into() }],
            traceparent: Some("t".into()),
        }),
        Upstream::Pull(PullRequestBody {
            client_group_id: "g".into(),
            cookie: None,
            request_id: "r".into(),
        }),
        Upstream::UpdateAuth(UpdateAuthBody { auth: "tok".into() }),
        Upstream::Push(PushBody {
            timestamp: 1,
            client_group_id: "g".into(),
            mutations: vec![
                Mutation::Crud(CrudMutation {
                    timestamp: 2,
                    id: 1,
                    client_id: "c1".into(),
                    ops: vec![
                        CrudOp::Upsert {
                            table_name: "issue".into(),
                            primary_key: vec!["id".into()],
                            value: row.clone(),
                        },
                        CrudOp::Delete {
                            table_name: "issue".into(),
                            primary_key: vec!["id".into()],
                            value: pk.clone(),
                        },
                    ],
                }),
                Mutation::Custom(CustomMutation {
                    timestamp: 3,
                    id: 2,
                    client_id: "c1".into(),
                    name: "issue.create".into(),
                    args: vec![Value::Null],
                }),
            ],
            push_version: 1,
            schema_version: Some(4),
            request_id: "r".into(),
            auth: Some("a".into()),
            traceparent: None,
        }),
        Upstream::CloseConnection(vec![json!(1), json!("x")]),
        Upstream::Inspect(InspectUpBody::Queries {
            id: "i".into(),
            client_id: Some("c1".into()),
        }),
        Upstream::Inspect(InspectUpBody::Authenticate {
            id: "i".into(),
            value: "pw".into(),
        }),
        Upstream::Inspect(InspectUpBody::AnalyzeQuery {
            id: "i".into(),
            value: None,
            options: Some(AnalyzeQueryOptions {
                vended_rows: Some(true),
                synced_rows: None,
                join_plans: Some(false),
            }),
            ast: Some(Box::new(ast.clone())),
            name: None,
            args: None,
        }),
        Upstream::AckMutationResponses(mid.clone()),
    ];
    let downs = vec![
        Downstream::Connected(ConnectedBody {
            wsid: "w".into(),
            timestamp: None,
        }),
        Downstream::Error(ErrorBody::backoff(
            BackoffErrorKind::Rehome,
            "moved",
            Some(10),
            None,
        )),
        Downstream::Error(ErrorBody::basic(
            BasicErrorKind::InvalidConnectionRequestLastMutationId,
            "x",
        )),
        Downstream::Error(ErrorBody::transform_failed(
            "t",
            vec!["q".into()],
            FailureCause::ZeroCache(ZeroCacheFailureReason::Timeout),
        )),
        Downstream::Error(ErrorBody::push_failed(
            "p",
            vec![mid.clone()],
            FailureCause::Server(ServerFailureReason::OutOfOrderMutation),
        )),
        Downstream::Pong,
        Downstream::PokeStart(PokeStartBody::new("p1", Some("00:01".into()))),
        Downstream::PokePart(PokePartBody::new("p1")),
        Downstream::PokePart(PokePartBody {
            poke_id: "p1".into(),
            last_mutation_id_changes: Some([("c1".to_owned(), 3)].into()),
            desired_queries_patches: Some(
                [(
                    "c1".to_owned(),
                    vec![QueriesPatchOp::put("h"), QueriesPatchOp::Clear],
                )]
                .into(),
            ),
            got_queries_patch: Some(vec![QueriesPatchOp::del("h")]),
            rows_patch: Some(vec![
                RowPatchOp::Clear,
                RowPatchOp::Put {
                    table_name: "issue".into(),
                    value: row.clone(),
                },
                RowPatchOp::Update {
                    table_name: "issue".into(),
                    id: pk.clone(),
                    merge: Some(WireRow::new().with("n", 2)),
                    constrain: Some(vec!["id".into(), "n".into()]),
                },
                RowPatchOp::Del {
                    table_name: "issue".into(),
                    id: pk,
                },
            ]),
            mutations_patch: Some(vec![
                MutationPatchOp::Put {
                    mutation: MutationResponse {
                        id: mid.clone(),
                        result: MutationResult::Ok {
                            data: Some(Value::Null),
                        },
                    },
                },
                MutationPatchOp::Put {
                    mutation: MutationResponse {
                        id: mid.clone(),
                        result: MutationResult::AlreadyProcessed {
                            details: Some(json!("d")),
                        },
                    },
                },
                MutationPatchOp::Del { id: mid.clone() },
            ]),
        }),
        Downstream::PokeEnd(PokeEndBody {
            poke_id: "p1".into(),
            cookie: String::new(),
            cancel: Some(true),
        }),
        Downstream::Pull(PullResponseBody {
            cookie: "c".into(),
            request_id: "r".into(),
            last_mutation_id_changes: [("c1".to_owned(), 0)].into(),
        }),
        Downstream::DeleteClients(DeleteClientsBody {
            client_ids: Some(vec!["c2".into()]),
            client_group_ids: Some(vec![]),
        }),
        Downstream::PushResponse(PushResponseBody::Ok {
            mutations: vec![MutationResponse {
                id: mid.clone(),
                result: MutationResult::App {
                    message: None,
                    details: Some(json!({"x": 1})),
                },
            }],
        }),
        Downstream::PushResponse(PushResponseBody::Http {
            status: 500,
            details: "boom".into(),
            mutation_ids: Some(vec![mid]),
        }),
        Downstream::PushResponse(PushResponseBody::UnsupportedSchemaVersion { mutation_ids: None }),
        Downstream::Inspect(InspectDownBody::Queries {
            id: "i".into(),
            value: vec![InspectQueryRow {
                client_id: "c1".into(),
                query_id: "q".into(),
                ast: None,
                name: Some("n".into()),
                args: Some(vec![]),
                got: true,
                deleted: false,
                ttl: 300_000.0,
                inactivated_at: None,
                row_count: 7,
                metrics: Some(Value::Null),
            }],
        }),
        Downstream::Inspect(InspectDownBody::Error {
            id: "i".into(),
            value: "not supported".into(),
        }),
        Downstream::TransformError(vec![ErroredQuery::Parse {
            id: "q".into(),
            name: "n".into(),
            message: "bad args".into(),
            details: None,
        }]),
    ];
    (ups, downs)
}

#[test]
fn constructed_messages_of_every_variant_round_trip() {
    let (ups, downs) = constructed_messages();
    for m in &ups {
        let text = m.to_json();
        assert_eq!(
            &parse_upstream(&text).unwrap_or_else(|e| panic!("{text}: {e:?}")),
            m
        );
        // Through serde too (as used inside other structures).
        assert_eq!(&serde_json::from_str::<Upstream>(&text).unwrap(), m);
    }
    for m in &downs {
        let text = m.to_json();
        assert_eq!(
            &parse_downstream(&text).unwrap_or_else(|e| panic!("{text}: {e:?}")),
            m
        );
        assert_eq!(&serde_json::from_str::<Downstream>(&text).unwrap(), m);
    }
    // Spot checks of the exact text.
    assert_eq!(Upstream::Ping.to_json(), r#"["ping",{}]"#);
    assert_eq!(Downstream::Pong.to_json(), r#"["pong",{}]"#);
    assert_eq!(
        Downstream::PokeStart(PokeStartBody::new("00:01", None)).to_json(),
        r#"["pokeStart",{"pokeID":"00:01","baseCookie":null}]"#
    );
    let part = downs
        .iter()
        .find(|d| matches!(d, Downstream::PokePart(p) if !p.is_empty()));
    let text = part.unwrap().to_json();
    assert!(text.contains(r#"{"op":"clear"},{"op":"put","tableName":"issue","value":{"id":"i1","n":1.5,"j":{"a":[1]}}}"#), "{text}");
    assert!(text.contains(r#""result":{"data":null}"#), "{text}");
    let init = ups[0].to_json();
    assert!(
        init.contains(r#""ttl":300000}"#) && init.contains(r#""ttl":0.5}"#),
        "{init}"
    );
}

fn invalid_body(text: &str) -> (String, String) {
    match parse_upstream(text) {
        Err(MessageError::InvalidBody { path, source, .. }) => (path, source.to_string()),
        other => panic!("{text}: expected an invalid body, got {other:?}"),
    }
}

#[test]
fn malformed_upstream_frames_give_typed_errors() {
    assert_eq!(
        parse_upstream(" [ \"ping\" ,\n { } ] ").unwrap(),
        Upstream::Ping
    );
    assert_eq!(
        parse_upstream(r#"["\u0070ing",{}]"#).unwrap(),
        Upstream::Ping
    );
    assert!(matches!(
        parse_upstream(r#"["ping",{}] x"#),
        Err(MessageError::Json(_))
    ));
    assert!(matches!(
        parse_upstream("not json"),
        Err(MessageError::Json(_))
    ));
    assert!(matches!(parse_upstream(""), Err(MessageError::Json(_))));
    assert!(matches!(
        parse_upstream(r#"{"ping":{}}"#),
        Err(MessageError::NotAnArray)
    ));
    assert!(matches!(
        parse_upstream(r#"["ping"]"#),
        Err(MessageError::WrongLength { len: 1 })
    ));
    assert!(matches!(
        parse_upstream(r#"["ping",{},{}]"#),
        Err(MessageError::WrongLength { len: 3 })
    ));
    assert!(matches!(
        parse_upstream(r#"[1,{}]"#),
        Err(MessageError::TypeNotAString)
    ));
    match parse_upstream(r#"["frobnicate",{}]"#) {
        Err(MessageError::UnknownType { tag }) => assert_eq!(tag, "frobnicate"),
        other => panic!("{other:?}"),
    }
    // Downstream-only tags are unknown upstream, and vice versa.
    assert!(matches!(
        parse_upstream(r#"["pong",{}]"#),
        Err(MessageError::UnknownType { .. })
    ));
    assert!(matches!(
        parse_downstream(r#"["ping",{}]"#),
        Err(MessageError::UnknownType { .. })
    ));

    let (path, msg) = invalid_body(r#"["ping",{"x":1}]"#);
    assert_eq!(path, "x");
    assert!(msg.contains("unknown field `x`"), "{msg}");
    let (path, _) = invalid_body(r#"["ping",[]]"#);
    assert_eq!(path, ".");
    let (_, msg) = invalid_body(
        r#"["push",{"clientGroupID":"g","mutations":[],"pushVersion":1,"requestID":"r"}]"#,
    );
    assert!(msg.contains("missing field `timestamp`"), "{msg}");
    let (path, msg) = invalid_body(
        r#"["initConnection",{"desiredQueriesPatch":[{"op":"put","hash":"h","ast":{"table":"t","limit":-1}}]}]"#,
    );
    assert!(path.starts_with("desiredQueriesPatch[0]"), "{path}");
    assert!(msg.contains("-1"), "{msg}");
    let (path, msg) = invalid_body(
        r#"["initConnection",{"desiredQueriesPatch":[],"clientSchema":{"tables":{"t":{"columns":{"a":{"type":"date"}},"primaryKey":["a"]}}}}]"#,
    );
    assert_eq!(path, "clientSchema.tables.t.columns.a.type");
    assert!(msg.contains("date"), "{msg}");
    let (path, msg) = invalid_body(r#"["ackMutationResponses",{"clientID":"c","id":-1}]"#);
    assert_eq!(path, "id");
    assert!(msg.contains("-1"), "{msg}");
    let (_, msg) = invalid_body(
        r#"["push",{"timestamp":1,"clientGroupID":"g","mutations":[{"type":"crud","timestamp":1,"id":1,"clientID":"c","name":"other","args":[{"ops":[]}]}],"pushVersion":1,"requestID":"r"}]"#,
    );
    assert!(msg.contains("_zero_crud"), "{msg}");
    let (_, msg) = invalid_body(
        r#"["push",{"timestamp":1,"clientGroupID":"g","mutations":[{"type":"crud","timestamp":1,"id":1,"clientID":"c","name":"_zero_crud","args":[{"ops":[]},{"ops":[]}]}],"pushVersion":1,"requestID":"r"}]"#,
    );
    assert!(msg.contains("length") || msg.contains("elements"), "{msg}");
    let (_, msg) = invalid_body(
        r#"["push",{"timestamp":1,"clientGroupID":"g","mutations":[{"type":"crud","timestamp":1,"id":1,"clientID":"c","name":"_zero_crud","args":[{"ops":[{"op":"delete","tableName":"t","primaryKey":["id"],"value":{"id":null}}]}]}],"pushVersion":1,"requestID":"r"}]"#,
    );
    assert!(msg.contains("primary key"), "{msg}");
    let (_, msg) = invalid_body(
        r#"["push",{"timestamp":1,"clientGroupID":"g","mutations":[{"type":"crud","timestamp":1,"id":1,"clientID":"c","name":"_zero_crud","args":[{"ops":[{"op":"insert","tableName":"t","primaryKey":[],"value":{}}]}]}],"pushVersion":1,"requestID":"r"}]"#,
    );
    assert!(msg.contains("at least one column"), "{msg}");
    let (_, msg) =
        invalid_body(r#"["changeDesiredQueries",{"desiredQueriesPatch":[{"op":"put"}]}]"#);
    assert!(msg.contains("hash"), "{msg}");
    let (_, msg) = invalid_body(
        r#"["changeDesiredQueries",{"desiredQueriesPatch":[{"op":"del","hash":"h","ttl":1}]}]"#,
    );
    assert!(msg.contains("ttl"), "{msg}");
    let (_, msg) = invalid_body(r#"["pull",{"clientGroupID":"g","requestID":"r"}]"#);
    assert!(msg.contains("cookie"), "{msg}");
    let (_, msg) = invalid_body(r#"["inspect",{"op":"version","id":"i","extra":1}]"#);
    assert!(msg.contains("extra"), "{msg}");

    // The error body sent back, as zero-cache does for `not json`.
    let body = parse_upstream("not json").unwrap_err().to_error_body();
    assert_eq!(body.kind(), ErrorKind::InvalidMessage);
    assert_eq!(body.origin(), Some(ErrorOrigin::ZeroCache));
    assert!(
        body.message().starts_with("message is not valid JSON: "),
        "{body}"
    );
    let body = parse_upstream(r#"["ping",{"x":1}]"#)
        .unwrap_err()
        .to_error_body();
    assert_eq!(
        body.message(),
        "invalid body of \"ping\" message at x: unknown field `x`, there are no fields at line 1 column 4"
    );
}

#[test]
fn connect_requests_report_errors_the_way_zero_cache_does() {
    let ok_query = "clientID=c1&clientGroupID=g1&baseCookie=&ts=1&lmid=0&wsid=w1";
    let header = encode_sec_protocol(Some(&InitConnectionBody::new(vec![])), None);
    let target = |v: u32| format!("/sync/v{v}/connect?{ok_query}");

    // Handshake-level failures: close 1002 with the text as reason.
    let cases: Vec<(String, Option<&str>, &str)> = vec![
        (
            format!("/foo/bar?{ok_query}"),
            Some(&header),
            "Error: Invalid URL: /foo/bar?",
        ),
        (
            format!("/sync/vX/connect?{ok_query}"),
            Some(&header),
            "Error: Invalid version",
        ),
        (
            "/sync/v51/connect?clientID=c1&clientGroupID=g1&baseCookie=&ts=1&lmid=&wsid=w".into(),
            Some(&header),
            "Error: invalid querystring - missing lmid",
        ),
        (
            "/sync/v51/connect?clientGroupID=g1&ts=1&lmid=0".into(),
            Some(&header),
            "Error: invalid querystring - missing clientID",
        ),
        (
            "/sync/v51/connect?clientID=c&clientGroupID=g1&ts=abc&lmid=0".into(),
            Some(&header),
            "Error: invalid querystring parameter ts, got: abc",
        ),
        (
            target(51),
            None,
            "Error: missing Sec-WebSocket-Protocol header",
        ),
        (
            target(51),
            Some("%%%"),
            "Error: invalid Sec-WebSocket-Protocol header: malformed percent",
        ),
        (
            target(51),
            Some("not*base64"),
            "Error: invalid Sec-WebSocket-Protocol header: malformed base64",
        ),
        // Handshake errors win over an unsupported version, as in zero-cache.
        (
            target(99),
            Some("bm90IGpzb24%3D"),
            "Error: invalid Sec-WebSocket-Protocol header: decoded value is not JSON",
        ),
    ];
    for (target, header, reason) in cases {
        let err = parse_connect_request(&target, header).unwrap_err();
        assert!(err.error_body().is_none(), "{target}: {err:?}");
        let close = err.close_reason();
        assert!(close.starts_with(reason), "{target}: {close}");
        assert!(close.len() <= 123);
    }

    // Protocol-level failures: an error message after the upgrade.
    for (v, who) in [(29, "client"), (99, "server"), (52, "server")] {
        let err = parse_connect_request(&target(v), Some(&header)).unwrap_err();
        assert!(matches!(err, ConnectError::VersionNotSupported { version } if version == v));
        let body = err.error_body().unwrap();
        assert_eq!(body.kind(), ErrorKind::VersionNotSupported);
        assert_eq!(
            body.message(),
            format!(
                "server is at sync protocol v51 and does not support v{v}. The {who} must be updated to a newer release."
            )
        );
    }
    for v in [30, 48, 51] {
        assert_eq!(
            parse_connect_request(&target(v), Some(&header))
                .unwrap()
                .path
                .version,
            v
        );
    }
    let bad_init =
        client_header(r#"{"initConnectionMessage":["initConnection",{}],"authToken":"t"}"#);
    let err = parse_connect_request(&target(51), Some(&bad_init)).unwrap_err();
    assert!(matches!(
        &err,
        ConnectError::SecProtocol(SecProtocolError::InitConnection(
            MessageError::InvalidBody { .. }
        ))
    ));
    let body = err.error_body().unwrap();
    assert_eq!(body.kind(), ErrorKind::InvalidMessage);
    assert!(body.message().contains("desiredQueriesPatch"), "{body}");
    let wrong = client_header(r#"{"initConnectionMessage":["ping",{}]}"#);
    assert!(matches!(
        decode_sec_protocol(&wrong),
        Err(SecProtocolError::InitConnection(
            MessageError::UnexpectedType { .. }
        ))
    ));
    assert!(matches!(
        decode_sec_protocol(&client_header(r#"{"authToken":5}"#)),
        Err(SecProtocolError::AuthTokenNotAString)
    ));
    assert!(matches!(
        decode_sec_protocol(&client_header("[1]")),
        Err(SecProtocolError::NotAnObject)
    ));
    // An empty token counts as none; unknown members are ignored; padding is optional.
    let d = decode_sec_protocol(&client_header(r#"{"authToken":"","x":1}"#)).unwrap();
    assert_eq!(d.auth_token, None);
    assert_eq!(decode_sec_protocol("e30").unwrap().auth_token, None);
}

#[test]
fn connect_params_round_trip_with_base_paths_and_extras() {
    let params = ConnectParams {
        client_id: "c 1".into(),
        client_group_id: "g/1".into(),
        user_id: None,
        base_cookie: Some("4g4tj4:01".into()),
        timestamp: 12,
        lmid: 7,
        wsid: "w".into(),
        profile_id: None,
        debug_perf: true,
        extra: vec![("reconnectHint".into(), "a&b=c".into())],
    };
    let target = params.to_target(Some("zero"), 51);
    assert_eq!(
        target,
        "/zero/sync/v51/connect?clientID=c+1&clientGroupID=g%2F1&baseCookie=4g4tj4%3A01&ts=12&lmid=7&wsid=w&debugPerf=true&reconnectHint=a%26b%3Dc"
    );
    let req = parse_connect_request(&format!("wss://example.com{target}"), Some("e30%3D")).unwrap();
    assert_eq!(req.params, params);
    assert_eq!(req.path.base.as_deref(), Some("zero"));
    assert_eq!(parse_connect_path("/sync/v51/connect").unwrap().base, None);
}

fn json_strategy() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[a-zA-Z_]{0,8}".prop_map(Value::String),
        prop::sample::select(vec![
            "put",
            "del",
            "clear",
            "crud",
            "custom",
            "_zero_crud",
            "insert",
            "delete",
            "simple",
            "column",
            "literal",
            "=",
            "issue",
            "id",
            "op",
            "type",
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "op",
                    "hash",
                    "ast",
                    "ttl",
                    "name",
                    "args",
                    "table",
                    "where",
                    "type",
                    "left",
                    "right",
                    "value",
                    "desiredQueriesPatch",
                    "clientSchema",
                    "mutations",
                    "id",
                    "clientID",
                    "clientGroupID",
                    "timestamp",
                    "pushVersion",
                    "requestID",
                    "tableName",
                    "primaryKey",
                    "ops",
                    "auth",
                    "cookie",
                    "tables",
                    "columns",
                    "x",
                ])
                .prop_map(str::to_owned),
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const TAGS: &[&str] = &[
    "initConnection",
    "ping",
    "deleteClients",
    "changeDesiredQueries",
    "pull",
    "updateAuth",
    "push",
    "closeConnection",
    "inspect",
    "ackMutationResponses",
    "connected",
    "error",
    "pong",
    "pokeStart",
    "pokePart",
    "pokeEnd",
    "pushResponse",
    "transformError",
];

/// Replaces one node (chosen by `pick`) of `v` by `replacement`, or deletes an object member.
fn perturb(v: &mut Value, pick: &mut usize, replacement: &Value, delete: bool) -> bool {
    if *pick == 0 {
        *v = replacement.clone();
        return true;
    }
    *pick -= 1;
    match v {
        Value::Array(items) => items
            .iter_mut()
            .any(|i| perturb(i, pick, replacement, delete)),
        Value::Object(m) => {
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                if delete && *pick == 0 {
                    m.remove(&k);
                    return true;
                }
                if let Some(child) = m.get_mut(&k)
                    && perturb(child, pick, replacement, delete)
                {
                    return true;
                }
            }
            false
        }
        _ => false,
    }
}

fn check_total(text: &str) {
    if let Ok(m) = parse_upstream(text) {
        // Whatever parses serializes and parses back to itself.
        assert_eq!(parse_upstream(&m.to_json()).expect("re-parse"), m);
    }
    if let Ok(m) = parse_downstream(text) {
        assert_eq!(parse_downstream(&m.to_json()).expect("re-parse"), m);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        check_total(&text);
        let _ = decode_sec_protocol(&text);
        let _ = parse_connect_request(&text, Some(&text));
        let _ = ConnectParams::from_query(&text);
    }

    #[test]
    fn arbitrary_json_never_panics(v in json_strategy()) {
        check_total(&v.to_string());
        let _ = decode_sec_protocol(&client_header(&v.to_string()));
    }

    #[test]
    fn arbitrary_bodies_under_known_tags_never_panic(
        tag in prop::sample::select(TAGS),
        body in json_strategy(),
    ) {
        check_total(&json!([tag, body]).to_string());
        let header = client_header(&json!({"initConnectionMessage": [tag, body]}).to_string());
        let _ = decode_sec_protocol(&header);
    }

    #[test]
    fn perturbed_captured_frames_never_panic(
        index in any::<prop::sample::Index>(),
        pick in 0usize..200,
        replacement in json_strategy(),
        delete in any::<bool>(),
    ) {
        let lines = captured_frames();
        let mut frame = index.get(lines).clone();
        let mut p = pick;
        perturb(&mut frame, &mut p, &replacement, delete);
        check_total(&frame.to_string());
    }

    #[test]
    fn connect_targets_never_panic(
        path in "(/[a-z0-9v%]{0,6}){0,5}",
        query in "[a-zA-Z0-9=&%+.]{0,40}",
        header in "[A-Za-z0-9%+/=]{0,24}",
    ) {
        let _ = parse_connect_request(&format!("{path}?{query}"), Some(&header));
    }
}

fn captured_frames() -> &'static Vec<Value> {
    static FRAMES: std::sync::OnceLock<Vec<Value>> = std::sync::OnceLock::new();
    FRAMES.get_or_init(|| {
        transcript_lines()
            .into_iter()
            .filter(|l| l.dir == "up" || l.dir == "down")
            .map(|l| l.data)
            .collect()
    })
}

#[test]
fn deeply_nested_input_is_an_error_not_a_stack_overflow() {
    for depth in [200, 100_000] {
        let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert!(parse_upstream(&nested).is_err());
        assert!(parse_upstream(&format!(r#"["closeConnection",{nested}]"#)).is_err());
        let mut cond = String::from(r#"{"type":"and","conditions":[]}"#);
        for _ in 0..depth.min(5_000) {
            cond = format!(r#"{{"type":"and","conditions":[{cond}]}}"#);
        }
        let init = format!(
            r#"["initConnection",{{"desiredQueriesPatch":[{{"op":"put","hash":"h","ast":{{"table":"t","where":{cond}}}}}]}}]"#
        );
        assert!(parse_upstream(&init).is_err());
        assert!(
            decode_sec_protocol(&client_header(&format!(
                r#"{{"initConnectionMessage":{nested}}}"#
            )))
            .is_err()
        );
    }
    // Moderate nesting inside a body is fine.
    let ok = format!(
        r#"["closeConnection",[{}{}]]"#,
        "[".repeat(50),
        "]".repeat(50)
    );
    assert!(matches!(
        parse_upstream(&ok),
        Ok(Upstream::CloseConnection(_))
    ));
}
