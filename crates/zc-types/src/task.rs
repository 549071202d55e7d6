//! Named tasks: every spawned task carries a name and a tracing span.

use std::future::Future;

use tracing::Instrument;

/// Spawns `fut` on the current Tokio runtime inside a span named after the task.
#[allow(clippy::disallowed_methods)]
pub fn spawn_named<F>(name: &'static str, fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(fut.instrument(tracing::info_span!("task", name)))
}
