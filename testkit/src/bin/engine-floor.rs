//! The engine's floor for publishing, for scripts/bench.sh (row B_load):
//! N targets of one local image, each made as publishd's load tag method
//! makes it (a config-only archive of the source's config plus werf's
//! labels, loaded), pushed and deleted, straight through the Engine API in
//! L lanes. It uses publishd's own engine client (`publishd::engine`), so
//! the only thing missing is publishd's bookkeeping: no database, no
//! registry reads (up-to-date check, read-back), no events.
//!
//!   engine-floor --docker-host unix:///… --source IMG --repo REG/REPO --n 200 --lanes 4
//!
//! Prints one JSON object: {"targets", "failed", "seconds", "per_second"}.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use publishd::credentials::RegistryAuth;
use publishd::domain::labels::{LabelInput, werf_labels};
use publishd::domain::spec::TagStrategy;
use publishd::engine::{DockerEngine, Engine, LabelledImage};

#[derive(Parser)]
struct Args {
    /// The engine: unix:///path or tcp://host:port.
    #[arg(long, env = "DOCKER_HOST")]
    docker_host: String,
    /// The local image every target is made from.
    #[arg(long)]
    source: String,
    /// Where the targets go: REGISTRY/REPOSITORY; tag `t<PREFIX>-<i>`.
    #[arg(long)]
    repo: String,
    #[arg(long, default_value = "f")]
    tag_prefix: String,
    #[arg(long, default_value_t = 200)]
    n: usize,
    #[arg(long, default_value_t = 4)]
    lanes: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let engine = Arc::new(DockerEngine::new(Some(&args.docker_host))?);
    let source = engine
        .inspect_image(&args.source)
        .await?
        .with_context(|| format!("no image {}", args.source))?;
    let source = Arc::new(source);
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let lanes: Vec<_> = (0..args.lanes.max(1))
        .map(|_| {
            let (engine, source, next, failed) =
                (engine.clone(), source.clone(), next.clone(), failed.clone());
            let (repo, prefix, n) = (args.repo.clone(), args.tag_prefix.clone(), args.n);
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let tag = format!("{prefix}-{i}");
                    let reference = format!("{repo}:{tag}");
                    if let Err(error) = publish(engine.as_ref(), &source, &reference, &tag).await {
                        eprintln!("{reference}: {error:#}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for lane in lanes {
        lane.await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let failed = failed.load(Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({
            "targets": args.n,
            "failed": failed,
            "seconds": seconds,
            "per_second": args.n as f64 / seconds,
        })
    );
    if failed > 0 {
        bail!("{failed} of {} targets failed", args.n);
    }
    Ok(())
}

/// Load the labelled image, push it, delete the name: publishd's three
/// steps, each one call.
async fn publish(
    engine: &DockerEngine,
    source: &publishd::engine::SourceImage,
    reference: &str,
    tag: &str,
) -> anyhow::Result<()> {
    let labels = werf_labels(&LabelInput {
        reference,
        strategy: TagStrategy::Custom,
        image_name: None,
        tag,
        source_image_id: &source.id,
    });
    let image = LabelledImage::new(source, &labels);
    engine.load_image(&image, reference).await?;
    engine
        .push(reference, &RegistryAuth::anonymous(), &|_| {})
        .await?;
    engine.remove_reference(reference).await?;
    Ok(())
}
