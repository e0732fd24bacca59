use clap::Parser;
use tracing_subscriber::EnvFilter;

use publishd::cli::{Cli, Command};
use publishd::client::Exit;
use publishd::config::{LogFormat, Settings};
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
        // The client commands end with the code of `client::Exit`.
        Command::Publish(args) => exit(publishd::client::publish(*args).await),
        Command::Status(args) => exit(publishd::client::status(args).await),
        Command::List(args) => exit(publishd::client::list(args).await),
        Command::Cancel(args) => exit(publishd::client::cancel(args).await),
        Command::Watch(args) => exit(publishd::client::watch(args).await),
        Command::Serve(args) => {
            init_logs(args.log_format);
            let app = Application::build(Settings::from_args(*args)?).await?;
            app.run_until(shutdown_signal()).await
        }
    }
}

fn exit(code: Exit) -> ! {
    std::process::exit(code.code())
}

/// Log lines to stderr: text for people, or one JSON object per line (with
/// the fields of every span it is in: a job's `job_id` and `reference`, a
/// request's `request_id`) for log shippers. `RUST_LOG` filters.
fn init_logs(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,tower_http=info"));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    // Colour codes only for a terminal, not a log file.
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .init(),
        // Span fields go to the top level, beside the event's own, where a
        // log shipper indexes them.
        LogFormat::Json => registry
            .with(
                json_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .flatten_event(true)
                    .with_current_span(false)
                    .flatten_span_list_on_top_level(true),
            )
            .init(),
    }
}
