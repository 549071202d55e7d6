//! The walsender session (pgwire-replication), behind zc-wal's own error type.

use pgwire_replication::{ReplicationClient, ReplicationConfig, TlsConfig};
use zc_types::Lsn;

use crate::config::{ConnParts, WalConfig};
use crate::error::{BoxError, Error};

/// Options pinned on the walsender session so that text values are rendered the way
/// `pg_value::parse_text` reads them, whatever the server's defaults are.
const SESSION_OPTIONS: &str = "-c datestyle=ISO,MDY -c timezone=UTC -c intervalstyle=postgres -c extra_float_digits=3 -c bytea_output=hex";

pub(crate) fn replication_config(
    parts: &ConnParts,
    cfg: &WalConfig,
    publications: &[String],
    ack: Lsn,
) -> ReplicationConfig {
    let tls = match parts.sslmode.as_str() {
        "require" => TlsConfig::require(),
        "verify-ca" => TlsConfig::verify_ca(None),
        "verify-full" => TlsConfig::verify_full(None),
        _ => TlsConfig::disabled(),
    };
    ReplicationConfig::new(
        parts.host.clone(),
        parts.user.clone(),
        parts.password.clone(),
        parts.database.clone(),
        cfg.slot_name(),
        publications.to_vec(),
    )
    .with_port(parts.port)
    .with_tls(tls)
    .with_start_lsn(pgwire_replication::Lsn(ack.as_u64()))
    .with_ack_lsn(pgwire_replication::Lsn(ack.as_u64()))
    .with_status_interval(cfg.status_interval)
    .with_wakeup_interval(cfg.status_interval.max(std::time::Duration::from_secs(1)))
    .with_buffer_size(1024)
    .with_options(SESSION_OPTIONS)
    .with_application_name("zc")
}

pub(crate) fn repl_err(
    what: &'static str,
) -> impl FnOnce(pgwire_replication::PgWireError) -> Error {
    move |e| {
        let transient = e.is_transient() || e.is_io() || slot_busy(&e);
        Error::Replication {
            what,
            source: Box::new(e) as BoxError,
            transient,
        }
    }
}

/// An error that retrying may get past: the slot is still held by an earlier session, the
/// server is shutting down, restarting or out of connections, or the stream's worker ended
/// with a result that was lost.
fn slot_busy(e: &pgwire_replication::PgWireError) -> bool {
    let msg = e.to_string();
    msg.contains("is active for PID")
        // The worker's result was lost to a receive dropped while joining it (the stream
        // ended either way; a new one starts from the durable watermark).
        || msg.contains("worker already joined")
        || [
            "55006", "57P01", "57P02", "57P03", "53300", "08006", "08003", "08001",
        ]
        .iter()
        .any(|code| msg.contains(code))
}

/// Result of `CREATE_REPLICATION_SLOT ... (SNAPSHOT 'export')`.
#[derive(Debug)]
pub(crate) struct CreatedSlot {
    pub(crate) consistent_point: Lsn,
    pub(crate) snapshot: String,
}

/// Creates the slot on a gated session and returns the session (which must stay open and
/// idle until every COPY connection imported the snapshot).
pub(crate) async fn create_slot(
    parts: &ConnParts,
    cfg: &WalConfig,
    publications: &[String],
    slot_name: &str,
    temporary: bool,
) -> Result<(ReplicationClient, CreatedSlot), Error> {
    let rc = replication_config(parts, cfg, publications, Lsn::ZERO);
    let mut client = ReplicationClient::connect_gated(rc)
        .await
        .map_err(repl_err("connect"))?;
    let sql = format!(
        "CREATE_REPLICATION_SLOT \"{slot_name}\" {}LOGICAL pgoutput (SNAPSHOT 'export')",
        if temporary { "TEMPORARY " } else { "" }
    );
    let rows = tokio::time::timeout(std::time::Duration::from_secs(60), client.simple_query(&sql))
        .await
        .map_err(|_| Error::Replication {
            what: "create the replication slot (timed out: a long-running transaction upstream blocks it)",
            source: "timeout".into(),
            transient: true,
        })?
        .map_err(|e| {
            if e.to_string().contains("42501") || e.to_string().contains("permission denied") {
                Error::ReplicationPrivilege { role: parts.user.clone() }
            } else {
                repl_err("create the replication slot")(e)
            }
        })?;
    let text = |i: usize| -> Option<String> {
        rows.first()?
            .get(i)?
            .as_ref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    };
    let bad = || Error::Replication {
        what: "read CREATE_REPLICATION_SLOT's result",
        source: format!("unexpected result {rows:?}").into(),
        transient: false,
    };
    let consistent_point: Lsn = text(1).and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let snapshot = text(2).ok_or_else(bad)?;
    Ok((
        client,
        CreatedSlot {
            consistent_point,
            snapshot,
        },
    ))
}
