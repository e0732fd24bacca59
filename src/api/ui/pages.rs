//! The dashboard's pages as HTML. Plain functions of what they show: no
//! I/O here.

use maud::{DOCTYPE, Markup, html};

use crate::domain::status::{JobStatus, TargetStatus};
use crate::engine::EngineDescription;
use crate::store::{Job, JobFilter, JobPage, Target};

const STATUSES: [JobStatus; 5] = [
    JobStatus::Queued,
    JobStatus::Running,
    JobStatus::Succeeded,
    JobStatus::Failed,
    JobStatus::Cancelled,
];

/// Every page: the same header and navigation, the content in `main`
/// (which the script swaps when it fetches a page), a live region for
/// what the script has to say.
fn layout(title: &str, current: &str, main_attributes: &MainAttributes, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · publishd" }
                link rel="stylesheet" href="/ui/assets/app.css";
                script src="/ui/assets/app.js" defer {}
            }
            body {
                a class="skip" href="#main" { "Skip to content" }
                header {
                    nav aria-label="Main" {
                        span class="brand" { "publishd" }
                        ul {
                            li { a href="/ui/" aria-current=[(current == "jobs").then_some("page")] { "Jobs" } }
                            li { a href="/ui/engines" aria-current=[(current == "engines").then_some("page")] { "Engines" } }
                            li { a href="/docs" { "API docs" } }
                        }
                        button type="button" id="sign-out" hidden { "Sign out" }
                    }
                }
                main id="main" tabindex="-1"
                    data-refresh=[main_attributes.refresh]
                    data-job=[main_attributes.job.as_deref()]
                    data-last-event=[main_attributes.last_event]
                    data-sign-in=[main_attributes.sign_in.then_some("")] {
                    (content)
                }
                p id="announce" class="visually-hidden" role="status" aria-live="polite" {}
            }
        }
    }
}

#[derive(Default)]
struct MainAttributes {
    /// Milliseconds between refreshes of the page's content.
    refresh: Option<u32>,
    /// The job whose events the script follows...
    job: Option<String>,
    /// ...after this one, the last the page shows.
    last_event: Option<i64>,
    sign_in: bool,
}

/// A time as `<time>`: absolute here, made relative by the script (the
/// absolute one stays in its title).
fn time(at: Option<&str>) -> Markup {
    match at {
        Some(at) => html! { time datetime=(at) { (short_time(at)) } },
        None => html! { span class="none" { "—" } },
    }
}

/// `2026-11-29T01:40:14.691301Z` as `2026-11-29 01:40:14 UTC`.
fn short_time(at: &str) -> String {
    match (at.get(..10), at.get(11..19)) {
        (Some(day), Some(clock)) => format!("{day} {clock} UTC"),
        _ => at.to_owned(),
    }
}

fn job_status(status: JobStatus) -> Markup {
    html! { span class={ "status " (status.as_str()) } { (status.as_str()) } }
}

fn target_status(status: TargetStatus) -> Markup {
    html! { span class={ "status " (status.as_str()) } { (status.as_str()) } }
}

/// The jobs page: `filter` as asked, in its form and its next page's link;
/// the submitter field only for a caller who sees every submitter's jobs.
pub fn jobs(page: &JobPage, filter: &JobFilter, submitter_field: bool) -> Markup {
    let attributes = MainAttributes {
        refresh: Some(2000),
        ..MainAttributes::default()
    };
    let status = filter.status;
    let search = filter.search.as_deref().unwrap_or("");
    let repo_prefix = filter.repo_prefix.as_deref().unwrap_or("");
    let submitter = filter.submitted_by.as_deref().unwrap_or("");
    let query = |cursor: &str| {
        let mut query = format!("?cursor={cursor}");
        if let Some(status) = status {
            query.push_str(&format!("&status={}", status.as_str()));
        }
        if filter.has_failed_target {
            query.push_str("&failed=true");
        }
        for (name, value) in [
            ("submitter", submitter),
            ("repo", repo_prefix),
            ("q", search),
        ] {
            if !value.is_empty() && (name != "submitter" || submitter_field) {
                query.push_str(&format!("&{name}={}", url_escape(value)));
            }
        }
        query
    };
    layout(
        "Jobs",
        "jobs",
        &attributes,
        html! {
            h1 { "Jobs" }
            form class="filters" method="get" action="/ui/" role="search" {
                label for="status" { "Status" }
                select id="status" name="status" {
                    option value="" selected[status.is_none()] { "any" }
                    @for each in STATUSES {
                        option value=(each.as_str()) selected[status == Some(each)] { (each.as_str()) }
                    }
                }
                label {
                    input id="failed" name="failed" type="checkbox" value="true" checked[filter.has_failed_target];
                    " with a failed target"
                }
                @if submitter_field {
                    label for="submitter" { "Submitter" }
                    input id="submitter" name="submitter" type="text" value=(submitter);
                }
                label for="repo" { "Repository prefix" }
                input id="repo" name="repo" type="text" value=(repo_prefix) placeholder="registry.example.com/acme/";
                label for="q" { "Repository or reference" }
                input id="q" name="q" type="search" value=(search) placeholder="registry.example.com/acme";
                button type="submit" { "Show" }
            }
            @if page.jobs.is_empty() {
                p { "No jobs." }
            } @else {
                div class="scroll" {
                    table class="jobs" {
                        caption class="visually-hidden" { "Jobs, newest first" }
                        thead { tr {
                            th scope="col" { "Job" }
                            th scope="col" { "Status" }
                            th scope="col" { "Repository" }
                            th scope="col" { "Targets" }
                            th scope="col" { "Created" }
                            th scope="col" { "Finished" }
                        } }
                        tbody {
                            @for job in &page.jobs {
                                tr id={ "job-" (job.id) } data-status=(job.status.as_str()) {
                                    td { a href={ "/ui/jobs/" (job.id) } { code { (job.id) } } }
                                    td { (job_status(job.status)) }
                                    td { (job.repo) }
                                    td { (target_summary(job)) }
                                    td { (time(Some(&job.created_at))) }
                                    td { (time(job.finished_at.as_deref())) }
                                }
                            }
                        }
                    }
                }
            }
            @if let Some(cursor) = &page.next_cursor {
                p { a rel="next" href={ "/ui/" (query(cursor)) } { "Older jobs" } }
            }
        },
    )
}

fn target_summary(job: &Job) -> String {
    let done = job
        .targets
        .iter()
        .filter(|target| target.status == TargetStatus::Succeeded)
        .count();
    format!("{done} of {} published", job.targets.len())
}

pub fn job(job: &Job, cancellable: bool, last_event: i64) -> Markup {
    let attributes = MainAttributes {
        job: Some(job.id.to_string()),
        last_event: Some(last_event),
        ..MainAttributes::default()
    };
    layout(
        "Job",
        "jobs",
        &attributes,
        html! {
            h1 { "Job " code { (job.id) } }
            dl class="summary" {
                dt { "Status" } dd id="job-status" data-status=(job.status.as_str()) { (job_status(job.status)) }
                dt { "Repository" } dd { (job.repo) " (" (job.repo_mode.as_str()) ")" }
                @if let Some(by) = &job.submitted_by { dt { "Submitted by" } dd { (by) } }
                dt { "Created" } dd { (time(Some(&job.created_at))) }
                dt { "Started" } dd { (time(job.started_at.as_deref())) }
                dt { "Finished" } dd { (time(job.finished_at.as_deref())) }
                @if let Some(error) = &job.error { dt { "Error" } dd class="error" { (error) } }
            }
            @if cancellable {
                p { button type="button" class="danger" data-cancel=(job.id) { "Cancel job" } }
            }
            h2 { "Targets" }
            div class="scroll" {
                table class="targets" {
                    caption class="visually-hidden" { "The job's targets" }
                    thead { tr {
                        th scope="col" { "#" }
                        th scope="col" { "Image" }
                        th scope="col" { "Tag" }
                        th scope="col" { "Status" }
                        th scope="col" { "Digest" }
                        th scope="col" { "Tries" }
                        th scope="col" { "Time" }
                    } }
                    tbody {
                        @for (position, target) in job.targets.iter().enumerate() {
                            (target_row(position, target))
                        }
                    }
                }
            }
        },
    )
}

fn target_row(position: usize, target: &Target) -> Markup {
    html! {
        tr id={ "target-" (position) } data-status=(target.status.as_str()) {
            td { (position) }
            td { (target.image.as_deref().unwrap_or("(nameless)")) }
            td {
                (target.strategy.as_str()) ": " code { (target.tag.as_deref().unwrap_or("(not known yet)")) }
                @if let Some(reference) = &target.reference { br; small class="reference" { (reference) } }
            }
            td {
                (target_status(target.status))
                @if target.up_to_date { " " small { "(up to date: not pushed)" } }
                @if target.status == TargetStatus::Pushing {
                    br;
                    label class="visually-hidden" for={ "progress-" (position) } { "Push progress" }
                    progress id={ "progress-" (position) } max="100" {}
                    " " small id={ "progress-text-" (position) } {}
                }
                @if let Some(error) = &target.error { p class="error" { (error) } }
                @for warning in &target.warnings { p class="warning" { "Warning: " (warning) } }
            }
            td {
                @if let Some(digest) = &target.digest {
                    code class="digest" { (digest) }
                    " "
                    button type="button" class="copy" data-copy=(digest) aria-label={ "Copy digest of target " (position) } { "Copy" }
                } @else { span class="none" { "—" } }
            }
            td {
                (target.attempts)
                @if !target.attempt_errors.is_empty() {
                    details {
                        summary { (target.attempt_errors.len()) " failed" }
                        ol {
                            @for failed in &target.attempt_errors {
                                li { "try " (failed.attempt) ", " (failed.step) ", " (time(Some(&failed.at))) ": " (failed.error) }
                            }
                        }
                    }
                }
            }
            td { (time(target.started_at.as_deref())) br; (time(target.finished_at.as_deref())) }
        }
    }
}

pub fn engines(
    ping: Result<(), String>,
    description: Result<EngineDescription, String>,
    database: Result<(), String>,
) -> Markup {
    layout(
        "Engines",
        "engines",
        &MainAttributes::default(),
        html! {
            h1 { "Engines" }
            section aria-labelledby="engine" {
                h2 id="engine" { "Docker engine" }
                dl class="summary" {
                    dt { "Ready" }
                    dd { @match &ping { Ok(()) => span class="status succeeded" { "ready" }, Err(why) => span class="status failed" { "unavailable: " (why) } } }
                    @match &description {
                        Ok(description) => {
                            dt { "Product" } dd { (format!("{:?}", description.product)) }
                            dt { "API version" } dd { (description.api_version) }
                            dt { "Image store" } dd { (format!("{:?}", description.image_store)) }
                        }
                        Err(why) => { dt { "Description" } dd class="error" { (why) } }
                    }
                }
            }
            section aria-labelledby="database" {
                h2 id="database" { "Database" }
                dl class="summary" {
                    dt { "Ready" }
                    dd { @match &database { Ok(()) => span class="status succeeded" { "ready" }, Err(why) => span class="status failed" { "unavailable: " (why) } } }
                }
            }
        },
    )
}

pub fn sign_in(title: &str) -> Markup {
    let attributes = MainAttributes {
        sign_in: true,
        ..MainAttributes::default()
    };
    layout(
        title,
        "",
        &attributes,
        html! {
            h1 { "Sign in" }
            p { "This publishd needs an API token. It is kept in this browser tab only (session storage) and sent with each request." }
            // Posted, never in a URL: the script keeps the token; without
            // it, the post answers this page again.
            form id="sign-in" method="post" action="/ui/sign-in" {
                label for="token" { "API token" }
                input id="token" name="token" type="password" autocomplete="off" required;
                button type="submit" { "Sign in" }
            }
            p id="sign-in-error" class="error" role="alert" {}
            noscript { p { "Signing in needs JavaScript." } }
        },
    )
}

/// A page the caller's token may not see.
pub fn forbidden(title: &str, why: &str) -> Markup {
    layout(
        title,
        "",
        &MainAttributes::default(),
        html! {
            h1 { (title) }
            p { (why) }
            p { a href="/ui/" { "All jobs" } }
        },
    )
}

pub fn not_found(id: &str) -> Markup {
    layout(
        "Not found",
        "",
        &MainAttributes::default(),
        html! {
            h1 { "No such job" }
            p { "There is no job " code { (id) } " that this token may see." }
            p { a href="/ui/" { "All jobs" } }
        },
    )
}

pub fn trouble() -> Markup {
    layout(
        "Unavailable",
        "",
        &MainAttributes::default(),
        html! {
            h1 { "Unavailable" }
            p { "The database is busy or in trouble; the page will work again once it is back. The service's log says more." }
        },
    )
}

/// `text` for a query string.
fn url_escape(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}
