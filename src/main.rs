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
        Command::Serve(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| EnvFilter::new("info,tower_http=info")),
                )
                .init();
            let app = Application::build(Settings::from(args)).await?;
            app.run_until(shutdown_signal()).await
        }
    }
}
