//! Builds the application: store, engine, worker pool and router.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::access::{AccessControl, QueueShare, RouteToken};
use crate::api::{self, AppState, EventStreams, Fence, SourceIds};
use crate::config::Settings;
use crate::credentials::{DockerConfig, JobCredentials};
use crate::engine::{DockerEngine, Engine, NoEngine};
use crate::metrics::Metrics;
use crate::progress::ProgressHub;
use crate::registry::{HttpRegistry, Registry};
use crate::store::{AuditEntry, HEARTBEAT, Instance, Location, Store};
use crate::webhooks::{CallbackFence, Webhooks};
use crate::worker::{Cancellations, SeedTurns, WorkerContext, WorkerPool};

pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    context: Arc<WorkerContext>,
    wake: Arc<Notify>,
    access: AccessControl,
    callbacks: CallbackFence,
    settings: Settings,
    stopping: CancellationToken,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let (engine, warnings): (Option<Arc<dyn Engine>>, _) = match settings.docker_host.as_deref()
        {
            Some("none") => (None, Vec::new()),
            host => {
                let engine = DockerEngine::new(host)?;
                let warnings = plain_engine(&engine, settings.allow_plain_engine)?;
                (Some(Arc::new(engine)), warnings)
            }
        };
        Self::assemble(settings, engine, warnings).await
    }

    /// Builds on a given engine: the seam tests use to inject engine faults.
    pub async fn build_with_engine(
        settings: Settings,
        engine: Arc<dyn Engine>,
    ) -> anyhow::Result<Application> {
        Self::assemble(settings, Some(engine), Vec::new()).await
    }

    /// Builds the application; without an engine (`--docker-host none`) it
    /// publishes registry sources only. `warnings` are what `/readyz` says
    /// of choices made against advice.
    async fn assemble(
        settings: Settings,
        engine: Option<Arc<dyn Engine>>,
        warnings: Vec<String>,
    ) -> anyhow::Result<Application> {
        let share = QueueShare {
            queued_targets: settings.max_queued_targets,
            at_least: settings.limits.max_targets,
        };
        let access = AccessControl::new(settings.tokens.clone(), share)?;
        if access.current().is_empty()
            && !settings.listen.ip().is_loopback()
            && !settings.allow_unauthenticated
        {
            anyhow::bail!(
                "refusing to listen on {} without API tokens: anyone who reaches it could publish \
                 through this engine. Give tokens (--auth-config, --api-token-file or \
                 PUBLISHD_API_TOKENS), listen on a loopback address, or pass \
                 --allow-unauthenticated",
                settings.listen
            );
        }
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("listening on {}", settings.listen))?;
        let instance = Instance {
            id: uuid::Uuid::now_v7(),
            engine: engine_name(&settings, engine.as_deref()).await?,
            address: listener.local_addr()?.to_string(),
        };
        tracing::info!(
            instance = %instance.id,
            engine = instance.engine.as_deref().unwrap_or("(none)"),
            database = %settings.database,
            "opening the store"
        );
        let store = Store::open_with(
            &settings.database,
            instance.clone(),
            settings.session_limits,
        )
        .await
        .with_context(|| format!("opening the database {}", settings.database))?;
        let cancellations = Cancellations::default();
        let wake = Arc::new(Notify::new());
        let job_credentials = JobCredentials::default();
        let progress = ProgressHub::default();
        let metrics = Metrics::default();
        let stopping = CancellationToken::new();
        let registry: Arc<dyn Registry> = Arc::new(HttpRegistry::new(
            engine.clone(),
            settings.docker_certs_dir.clone(),
            settings.allow_registry.clone(),
            settings.allow_token_realm.clone(),
        ));
        let callbacks = CallbackFence::new(settings.allow_callback.clone());
        let credentials = DockerConfig::new(
            settings.docker_config.clone(),
            settings.credential_helper_timeout,
        );
        let router = api::router(AppState {
            store: store.clone(),
            instance: Arc::new(instance),
            engine: engine.clone(),
            source_ids: SourceIds::default(),
            registry: registry.clone(),
            credentials: credentials.clone(),
            cancellations: cancellations.clone(),
            wake: wake.clone(),
            limits: settings.limits,
            max_queued_targets: settings.max_queued_targets,
            job_credentials: job_credentials.clone(),
            access: access.clone(),
            fence: Fence {
                allowed_origins: settings.allow_origins.clone().into(),
                public_url: settings.public_url.clone(),
                listen: settings.listen,
                access: access.clone(),
            },
            allow_registry: Arc::new(settings.allow_registry.clone()),
            progress: progress.clone(),
            streams: EventStreams::new(settings.max_streams_per_token, settings.stream_max_age),
            webhooks_enabled: settings.webhook_secret.is_some(),
            callbacks: callbacks.clone(),
            stopping: stopping.clone(),
            metrics: metrics.clone(),
            metrics_token: settings.metrics_token.as_deref().map(RouteToken::new),
            warnings: warnings.into(),
        });
        let context = Arc::new(WorkerContext {
            seed_turns: SeedTurns::new(store.clone(), wake.clone()),
            store,
            registry,
            engine: engine.unwrap_or_else(|| Arc::new(NoEngine)),
            credentials,
            allow_registry: Arc::new(settings.allow_registry.clone()),
            job_credentials,
            cancellations,
            timeouts: settings.timeouts,
            retry: settings.retry,
            tag_method: settings.tag_method,
            publish_via: settings.publish_via,
            max_target_runs: settings.max_target_runs,
            credential_wait: settings.credential_wait,
            lease: settings.lease,
            progress,
            metrics,
        });
        Ok(Application {
            listener,
            router,
            context,
            wake,
            access,
            callbacks,
            settings,
            stopping,
        })
    }

    /// The HTTP routes, to be served by the caller (tests call them in
    /// process). No worker runs until `run_until`.
    pub fn router(&self) -> axum::Router {
        self.router.clone()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.settings.listen)
    }

    /// Serves until `shutdown` completes, then stops taking requests and new
    /// work and lets running targets finish within the grace period.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let address = self.local_addr();
        let reloads = tokio::spawn(reload_tokens_on_sighup(
            self.access.clone(),
            self.context.store.clone(),
        ));
        let stopping = self.stopping;
        let store = self.context.store.clone();
        let webhooks = self.settings.webhook_secret.clone().map(|secret| {
            let webhooks = Webhooks::new(
                store.clone(),
                secret,
                self.settings.webhook_max_age,
                self.settings.webhook_first_retry,
                self.callbacks.clone(),
                self.context.metrics.clone(),
            );
            tokio::spawn(webhooks.run(stopping.clone()))
        });
        let retention = self.settings.retention.map(|retention| {
            tokio::spawn(crate::retention::run(
                store.clone(),
                retention,
                stopping.clone(),
            ))
        });
        // Only on a shared database does anyone read a heartbeat.
        let heartbeat = store
            .is_shared()
            .then(|| tokio::spawn(heartbeat(store.clone(), stopping.clone())));
        let pool = WorkerPool::start(self.context, self.settings.workers, self.wake);
        let trigger = stopping.clone();
        tokio::spawn(async move {
            shutdown.await;
            trigger.cancel();
        });
        tracing::info!(
            %address,
            workers = self.settings.workers,
            api_tokens = self.access.current().len(),
            "publishd listening"
        );
        // The HTTP drain and the worker drain run side by side, so the
        // whole stop takes at most one grace period.
        let serving = async {
            let served = crate::server::serve(
                self.listener,
                self.router,
                &self.settings,
                stopping.clone().cancelled_owned(),
            )
            .await;
            stopping.cancel();
            served
        };
        let draining = async {
            stopping.cancelled().await;
            tracing::info!("shutting down: draining the worker pool");
            pool.shutdown(self.settings.shutdown_grace).await;
        };
        let (served, ()) = tokio::join!(serving, draining);
        reloads.abort();
        // Awaited, so that its hold on the store (and the database's lock)
        // is gone when this returns: a restart in the same process must
        // find the database free.
        let _ = reloads.await;
        // Both stop at `stopping`; a delivery under way is dropped and sent
        // again after the restart, under the same delivery id.
        for task in webhooks.into_iter().chain(retention) {
            let _ = task.await;
        }
        if let Some(heartbeat) = heartbeat {
            let _ = heartbeat.await;
        }
        // Gone from `GET /api/v1/engines` at once, not after its heartbeat ages.
        if let Err(error) = store.leave().await {
            tracing::warn!(
                error = format!("{error:#}"),
                "removing this instance's record"
            );
        }
        served.context("serving HTTP")
    }
}

/// The name of the engine this instance drives: `--engine-name`, else the
/// engine's own (`/info` Name). When the engine does not answer at start:
/// on a shared database, an error (a made-up name would strand the jobs
/// of the engine's real name, and its targets in flight); alone, this
/// host's name (the engine's, for a local socket), since one publishd per
/// file claims every job whatever its engine's name. `None` without an
/// engine.
async fn engine_name(
    settings: &Settings,
    engine: Option<&dyn Engine>,
) -> anyhow::Result<Option<String>> {
    let Some(engine) = engine else {
        return Ok(None);
    };
    if let Some(name) = &settings.engine_name {
        return Ok(Some(name.clone()));
    }
    let described = tokio::time::timeout(Duration::from_secs(5), engine.describe()).await;
    match described {
        Ok(Ok(description)) if !description.name.is_empty() => Ok(Some(description.name)),
        outcome => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|name| name.trim().to_owned())
                .unwrap_or_else(|_| "localhost".to_owned());
            let why = match outcome {
                Ok(Err(error)) => error.to_string(),
                Ok(Ok(_)) => "it has no name".to_owned(),
                Err(_) => "it did not answer within 5 s".to_owned(),
            };
            if matches!(settings.database, Location::Postgres(_)) {
                anyhow::bail!(
                    "the engine could not say its name ({why}); on a shared database give \
                     --engine-name, the name the other instances on this engine use"
                );
            }
            tracing::warn!(
                engine_name = %host,
                reason = %why,
                "naming the engine after this host: its /info could not say its name; \
                 give --engine-name to choose"
            );
            Ok(Some(host))
        }
    }
}

/// An engine over plain TCP gets the registry credentials of every push
/// (`X-Registry-Auth`) in clear: refused unless the operator allows it
/// (`--allow-plain-engine`), and then a warning, in the log and in
/// `/readyz`.
fn plain_engine(engine: &DockerEngine, allowed: bool) -> anyhow::Result<Vec<String>> {
    let Some(address) = engine.plain_tcp() else {
        return Ok(Vec::new());
    };
    if !allowed {
        anyhow::bail!(
            "refusing to drive the engine at tcp://{address} without TLS: every push sends it \
             registry credentials (X-Registry-Auth) that anyone on the way can read. Use its \
             unix socket (over SSH: ssh -L /tmp/docker.sock:/var/run/docker.sock HOST), or \
             pass --allow-plain-engine on a network only publishd and the engine share"
        );
    }
    let warning = format!(
        "the engine at tcp://{address} is reached without TLS (--allow-plain-engine): registry \
         credentials travel to it in clear"
    );
    tracing::warn!("{warning}");
    Ok(vec![warning])
}

/// Says every [`HEARTBEAT`] that this instance is alive, until it stops.
async fn heartbeat(store: Store, stopping: CancellationToken) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            _ = stopping.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(error) = store.heartbeat().await {
            tracing::warn!(
                error = format!("{error:#}"),
                "recording this instance's heartbeat"
            );
        }
    }
}

/// Reads the tokens again on each SIGHUP, and audits it: a revoked token is
/// refused from the next request on. A file that does not load leaves the
/// tokens as they were.
async fn reload_tokens_on_sighup(access: AccessControl, store: Store) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGHUP; tokens are not reloaded");
                return;
            }
        };
        while hangups.recv().await.is_some() {
            let (outcome, detail) = match access.reload() {
                Ok(count) => {
                    tracing::info!(tokens = count, "API tokens reloaded");
                    ("reloaded", serde_json::json!({"tokens": count}))
                }
                Err(error) => {
                    tracing::error!(
                        error = format!("{error:#}"),
                        "API tokens not reloaded; the old ones stay"
                    );
                    (
                        "failed",
                        serde_json::json!({"message": format!("{error:#}")}),
                    )
                }
            };
            let entry = AuditEntry {
                actor: None,
                action: "tokens.reload",
                outcome,
                job_id: None,
                detail,
            };
            if let Err(error) = store.record_audit(entry).await {
                tracing::error!(error = format!("{error:#}"), "recording a token reload");
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (access, store);
        std::future::pending::<()>().await;
    }
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
