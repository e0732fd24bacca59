use clap::Parser;
use tracing_subscriber::EnvFilter;

use publishd::config::{Cli, Command, Settings};
use publishd::startup::{Application, shutdown_signal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Openapi => {
            println!(
                "{}",
                serde_json::to_string_pretty(&publishd::api::openapi())?
            );
            Ok(())
        }
        // Exit codes a pipeline can act on: 0 published, 1 a target failed
        // or was cancelled, 2 the job could not be submitted or followed.
        Command::Publish(args) => match publishd::client::publish(args).await {
            Ok(true) => std::process::exit(0),
            Ok(false) => std::process::exit(1),
            Err(error) => {
                eprintln!("error: {error:#}");
                std::process::exit(2);
            }
        },
        Command::Serve(args) => {
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_env_filter(
                    EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| EnvFilter::new("info,tower_http=info")),
                )
                .init();
            let app = Application::build(Settings::from_args(args)?).await?;
            app.run_until(shutdown_signal()).await
        }
    }
}
