//! The pipeline's client of a running publishd: `publish` (werf's flags and
//! environment), `status`, `list`, `cancel` and `watch`. Each prints text
//! for people or, with `--output json`, the API's own objects, and ends with
//! an `Exit` code a pipeline can act on.

mod exit;
mod follow;
mod report;
mod service;
mod spec;

pub use exit::Exit;

use anyhow::anyhow;

use crate::cli::{JobArgs, ListArgs, Output, PublishArgs, WatchArgs};
use service::{Answer, Service, field};

/// Why a command did not get its answer, and the code that says so.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub error: anyhow::Error,
}

impl Failure {
    fn usage(error: anyhow::Error) -> Failure {
        Failure {
            exit: Exit::Usage,
            error,
        }
    }

    fn refused(error: anyhow::Error) -> Failure {
        Failure {
            exit: Exit::Refused,
            error,
        }
    }

    fn unreachable(error: anyhow::Error) -> Failure {
        Failure {
            exit: Exit::Unreachable,
            error,
        }
    }

    /// Says what was being done.
    fn context(self, what: String) -> Failure {
        Failure {
            exit: self.exit,
            error: self.error.context(what),
        }
    }

    fn detached(error: anyhow::Error) -> Failure {
        Failure {
            exit: Exit::Detached,
            error,
        }
    }
}

/// Says on stderr why a command failed; answers its code.
fn finish(outcome: Result<Exit, Failure>) -> Exit {
    match outcome {
        Ok(exit) => exit,
        // Detaching is what the user asked for, not an error.
        Err(Failure {
            exit: Exit::Detached,
            error,
        }) => {
            eprintln!("{error}");
            Exit::Detached
        }
        Err(Failure { exit, error }) => {
            eprintln!("error: {error:#}");
            exit
        }
    }
}

/// `publishd publish`: submits the job; with `--wait` (or the old
/// spellings) follows it and reports each target.
pub async fn publish(args: PublishArgs) -> Exit {
    finish(submit(args).await)
}

async fn submit(args: PublishArgs) -> Result<Exit, Failure> {
    let env_custom_tags = spec::custom_tags_from_env(std::env::vars_os());
    let body = spec::job_spec(&args, &env_custom_tags).map_err(Failure::usage)?;
    let wait = spec::waits(&args);
    if args.interrupt.cancel_on_interrupt && !wait {
        return Err(Failure::usage(anyhow!(
            "--cancel-on-interrupt applies while waiting: add --wait"
        )));
    }
    let key = match &args.idempotency_key {
        Some(key) => key.clone(),
        None => {
            // Without a key a resubmission could create a second job.
            let key = uuid::Uuid::now_v7().to_string();
            eprintln!("idempotency key {key} (generated)");
            key
        }
    };
    let mut service = Service::new(&args.client)?;
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
    Ok(report_end(&job, args.client.output))
}

/// `publishd watch`: follows an existing job as `publish --wait` does.
pub async fn watch(args: WatchArgs) -> Exit {
    finish(watch_job(args).await)
}

async fn watch_job(args: WatchArgs) -> Result<Exit, Failure> {
    let mut service = Service::new(&args.client)?;
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
        let mut service = Service::new(&args.client)?;
        let job = read_job(&mut service, &args.id).await?;
        Ok(show(&job, args.client.output, report::job))
    }
    finish(run(args).await)
}

/// `publishd list`: a page of jobs, newest first.
pub async fn list(args: ListArgs) -> Exit {
    async fn run(args: ListArgs) -> Result<Exit, Failure> {
        let mut query = vec![("limit", args.limit.to_string())];
        if let Some(status) = &args.status {
            query.push(("status", status.clone()));
        }
        if let Some(cursor) = &args.cursor {
            query.push(("cursor", cursor.clone()));
        }
        let mut service = Service::new(&args.client)?;
        let page = service
            .expect("listing jobs", |client, base| {
                client.get(format!("{base}/api/v1/jobs")).query(&query)
            })
            .await?;
        Ok(show(&page, args.client.output, report::page))
    }
    finish(run(args).await)
}

/// `publishd cancel`: asks for the job to be cancelled.
pub async fn cancel(args: JobArgs) -> Exit {
    async fn run(args: JobArgs) -> Result<Exit, Failure> {
        let id = &args.id;
        let mut service = Service::new(&args.client)?;
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
    finish(run(args).await)
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
