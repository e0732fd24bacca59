//! The pipeline's client of a running publishd: `publish` (werf's flags and
//! environment), `status`, `list`, `cancel` and `watch`. Each prints text
//! for people or, with `--output json`, the API's own objects, and ends with
//! an `Exit` code a pipeline can act on.

mod exit;
mod follow;
mod publish_report;
mod report;
mod service;
mod spec;

pub use exit::Exit;

use anyhow::anyhow;

use crate::cli::{JobArgs, ListArgs, Output, PublishArgs, WatchArgs, present};
use service::{Answer, Service, field};

/// Why a command did not get its answer, and the code that says so.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub error: anyhow::Error,
    /// The service's refusal as sent (the API's JSON error), which
    /// `--output json` prints on stdout.
    pub answer: Option<String>,
}

impl Failure {
    fn new(exit: Exit, error: anyhow::Error) -> Failure {
        Failure {
            exit,
            error,
            answer: None,
        }
    }

    fn usage(error: anyhow::Error) -> Failure {
        Failure::new(Exit::Usage, error)
    }

    fn refused(error: anyhow::Error) -> Failure {
        Failure::new(Exit::Refused, error)
    }

    fn unreachable(error: anyhow::Error) -> Failure {
        Failure::new(Exit::Unreachable, error)
    }

    fn detached(error: anyhow::Error) -> Failure {
        Failure::new(Exit::Detached, error)
    }

    /// Says what was being done.
    fn context(self, what: String) -> Failure {
        Failure {
            error: self.error.context(what),
            ..self
        }
    }
}

/// Says on stderr why a command failed (and with `--output json`, prints
/// the service's refusal on stdout as sent); answers its code.
fn finish(outcome: Result<Exit, Failure>, output: Output) -> Exit {
    match outcome {
        Ok(exit) => exit,
        Err(Failure {
            exit,
            error,
            answer,
        }) => {
            if let (Output::Json, Some(answer)) = (output, answer) {
                println!("{answer}");
            }
            // Detaching is what the user asked for, not an error.
            if exit == Exit::Detached {
                eprintln!("{error}");
            } else {
                eprintln!("error: {error:#}");
            }
            exit
        }
    }
}

/// `publishd publish`: submits the job; with `--wait` (or the old
/// spellings) follows it and reports each target.
pub async fn publish(args: PublishArgs) -> Exit {
    let output = args.client.output;
    finish(submit(args).await, output)
}

async fn submit(args: PublishArgs) -> Result<Exit, Failure> {
    let env = spec::WerfEnv::from_vars(std::env::vars_os());
    let body = spec::job_spec(&args, &env).map_err(Failure::usage)?;
    let wait = spec::waits(&args, &env);
    let report_path = spec::report_path(&args, &env);
    if args.interrupt.cancel_on_interrupt && !wait {
        return Err(Failure::usage(anyhow!(
            "--cancel-on-interrupt applies while waiting: add --wait"
        )));
    }
    let key = match present(&args.idempotency_key) {
        Some(key) => key.to_owned(),
        None => {
            // Without a key a resubmission could create a second job.
            let key = uuid::Uuid::now_v7().to_string();
            eprintln!("idempotency key {key} (generated)");
            key
        }
    };
    let mut service = Service::new(&args.client, wait)?;
    let submitted = service
        .expect("submitting the job", |client, base| {
            client
                .post(format!("{base}/api/v1/jobs"))
                .header("Idempotency-Key", &key)
                .json(&body)
        })
        .await?;
    let id = field(&submitted.json, "id")?.to_owned();
    if !wait {
        match args.client.output {
            Output::Text => {
                println!("{id}");
                eprintln!(
                    "job {id} accepted; follow it with: publishd watch --server {} {id}",
                    service.base
                );
            }
            Output::Json => println!("{}", submitted.text),
        }
        return Ok(Exit::Succeeded);
    }
    eprintln!("job {id} accepted; waiting");
    let job = follow::follow(&mut service, &id, &submitted.json, args.interrupt).await?;
    let exit = report_end(&job, args.client.output);
    if let Some(path) = report_path {
        if exit != Exit::Succeeded {
            eprintln!("no publish report: the job did not succeed");
        } else {
            publish_report::write(&job.json, &path).map_err(Failure::usage)?;
            eprintln!("publish report written to {}", path.display());
        }
    }
    Ok(exit)
}

/// `publishd watch`: follows an existing job as `publish --wait` does.
pub async fn watch(args: WatchArgs) -> Exit {
    let output = args.client.output;
    finish(watch_job(args).await, output)
}

async fn watch_job(args: WatchArgs) -> Result<Exit, Failure> {
    let mut service = Service::new(&args.client, true)?;
    let job = read_job(&mut service, &args.id).await?;
    let job = follow::follow(&mut service, &args.id, &job.json, args.interrupt).await?;
    Ok(report_end(&job, args.client.output))
}

/// Reports a finished job; answers the code of how it ended.
fn report_end(job: &Answer, output: Output) -> Exit {
    let status = report::text(&job.json, "status");
    match output {
        Output::Text => {
            print!("{}", report::results(&job.json));
            match job.json["error"].as_str().filter(|error| *error != status) {
                Some(error) => eprintln!("job {} {status}: {error}", report::text(&job.json, "id")),
                None => eprintln!("job {} {status}", report::text(&job.json, "id")),
            }
        }
        Output::Json => println!("{}", job.text),
    }
    Exit::of_job_status(status)
}

/// `publishd status`: the job as it is now.
pub async fn status(args: JobArgs) -> Exit {
    async fn run(args: JobArgs) -> Result<Exit, Failure> {
        let mut service = Service::new(&args.client, false)?;
        let job = read_job(&mut service, &args.id).await?;
        Ok(show(&job, args.client.output, report::job))
    }
    let output = args.client.output;
    finish(run(args).await, output)
}

/// `publishd list`: a page of jobs, newest first.
pub async fn list(args: ListArgs) -> Exit {
    async fn run(args: ListArgs) -> Result<Exit, Failure> {
        let mut query = vec![("limit", args.limit.to_string())];
        query.extend(filters(&args));
        if let Some(cursor) = &args.cursor {
            query.push(("cursor", cursor.clone()));
        }
        let mut service = Service::new(&args.client, false)?;
        let page = service
            .expect("listing jobs", |client, base| {
                client.get(format!("{base}/api/v1/jobs")).query(&query)
            })
            .await?;
        let shown = show(&page, args.client.output, report::page);
        // The next page is the same command from the page's cursor.
        if let (Output::Text, Some(cursor)) =
            (args.client.output, page.json["next_cursor"].as_str())
        {
            eprintln!("{}", next_page(&service.base, &args, cursor));
        }
        Ok(shown)
    }
    let output = args.client.output;
    finish(run(args).await, output)
}

/// `publishd cancel`: asks for the job to be cancelled.
pub async fn cancel(args: JobArgs) -> Exit {
    async fn run(args: JobArgs) -> Result<Exit, Failure> {
        let id = &args.id;
        let mut service = Service::new(&args.client, false)?;
        let job = service
            .expect(&format!("cancelling job {id}"), |client, base| {
                client.post(format!("{base}/api/v1/jobs/{id}/cancel"))
            })
            .await?;
        Ok(show(&job, args.client.output, |job| {
            format!(
                "job {id} cancel requested (now {})\n",
                report::text(job, "status")
            )
        }))
    }
    let output = args.client.output;
    finish(run(args).await, output)
}

/// The query parameters of `list`'s filters.
fn filters(args: &ListArgs) -> Vec<(&'static str, String)> {
    let mut query = Vec::new();
    if let Some(status) = &args.status {
        query.push(("status", status.clone()));
    }
    if args.has_failed_target {
        query.push(("has_failed_target", "true".to_owned()));
    }
    for (name, value) in [
        ("submitted_by", &args.submitted_by),
        ("repo_prefix", &args.repo_prefix),
        ("q", &args.search),
    ] {
        if let Some(value) = value {
            query.push((name, value.clone()));
        }
    }
    query
}

/// `next page: publishd list ... --cursor C`: the command that lists the
/// page after this one.
fn next_page(server: &str, args: &ListArgs, cursor: &str) -> String {
    let mut command = format!("next page: publishd list --server {server}");
    for (name, value) in filters(args) {
        command += &match name {
            "has_failed_target" => " --has-failed-target".to_owned(),
            "q" => format!(" --search {}", shell_word(&value)),
            _ => format!(" --{} {}", name.replace('_', "-"), shell_word(&value)),
        };
    }
    command + &format!(" --limit {} --cursor {cursor}", args.limit)
}

/// `text` as one word of a POSIX shell command line.
fn shell_word(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/:._-@".contains(c));
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// Prints an answer: `text` of it, or as sent.
fn show(answer: &Answer, output: Output, text: impl FnOnce(&serde_json::Value) -> String) -> Exit {
    match output {
        Output::Text => print!("{}", text(&answer.json)),
        Output::Json => println!("{}", answer.text),
    }
    Exit::Succeeded
}

async fn read_job(service: &mut Service, id: &str) -> Result<Answer, Failure> {
    service
        .expect(&format!("reading job {id}"), |client, base| {
            client.get(format!("{base}/api/v1/jobs/{id}"))
        })
        .await
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    #[test]
    fn the_next_page_keeps_every_filter_as_one_word_each() {
        let cli = Cli::try_parse_from([
            "publishd",
            "list",
            "--status",
            "failed",
            "--has-failed-target",
            "--submitted-by",
            "team a",
            "--repo-prefix",
            "registry.example.com/acme/",
            "--search",
            "it's",
        ])
        .unwrap();
        let Command::List(args) = cli.command else {
            panic!("not a list: {cli:?}")
        };
        assert_eq!(
            next_page("http://127.0.0.1:8080", &args, "C"),
            "next page: publishd list --server http://127.0.0.1:8080 --status failed \
             --has-failed-target --submitted-by 'team a' \
             --repo-prefix registry.example.com/acme/ --search 'it'\\''s' --limit 20 --cursor C"
        );
    }
}
