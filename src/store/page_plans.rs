//! Every filter of the jobs list, alone and with the others, with and
//! without a cursor, is read through the index made for it on both
//! databases, newest first without a sort: what the planner answers
//! (`EXPLAIN QUERY PLAN`, `EXPLAIN`) for the statements `list_jobs` sends.
//! A filter added to `JobFilter` compiles only once `page_index` names its
//! index, and is checked here once `combinations` has it.

use sqlx::Row;

use super::sql::{PageSql, page_index, rows_of_jobs_sql};
use super::tests::Db;
use super::*;

/// Every combination of the filters, each with and without a cursor.
fn combinations() -> Vec<PageKey> {
    let mut keys = Vec::new();
    for bits in 0..64u32 {
        let on = |bit: u32| bits & (1 << bit) != 0;
        let filter = JobFilter {
            status: on(0).then_some(JobStatus::Succeeded),
            has_failed_target: on(1),
            submitted_by: on(2).then(|| "team-a".to_owned()),
            repo_prefix: on(3).then(|| "registry.example.com/acme/".to_owned()),
            search: on(4).then(|| "app".to_owned()),
        };
        keys.push(PageKey {
            filter,
            limit: 50,
            before: on(5).then(Uuid::now_v7),
        });
    }
    keys
}

/// Checks what the plan's `(table, index)` reads, the page's own first, and
/// whether it sorts say about `key`'s statement: on SQLite, told the index,
/// that index (`primary`: the table's own order) and no sort but a prefix's;
/// on PostgreSQL, whose planner chooses, an index that some filter given
/// narrows (`narrowed_by`).
fn check(key: &PageKey, sql: &str, reads: &[(String, Option<String>)], sorts: bool, primary: &str) {
    for (table, index) in reads {
        assert!(
            index.is_some() || !["jobs", "targets"].contains(&table.as_str()),
            "{key:?}: {table} is scanned whole by\n{sql}\n{reads:?}"
        );
    }
    let first = reads.iter().find(|(table, _)| table == "jobs");
    let first = first.and_then(|(_, index)| index.as_deref()).unwrap_or("");
    let told = page_index(&key.filter).unwrap_or(primary);
    let serves = if primary == "jobs_pkey" {
        narrowed_by(&key.filter, first)
    } else {
        first == told
    };
    assert!(serves, "{key:?}: jobs read by\n{sql}\n{reads:?}");
    assert!(
        key.filter.repo_prefix.is_some() || !sorts,
        "{key:?}: sorted, not read in id order, by\n{sql}"
    );
}

/// Whether reading `index` skips every job some filter of `filter` rejects
/// (its leading column or its partial condition): the table's own order
/// only when there is no filter but a search.
fn narrowed_by(filter: &JobFilter, index: &str) -> bool {
    let failed = filter.has_failed_target;
    let submitter = filter.submitted_by.is_some();
    let status = filter.status.is_some();
    match index {
        "jobs_pkey" => !(failed || submitter || status || filter.repo_prefix.is_some()),
        "jobs_by_status" => status,
        "jobs_by_submitter" | "jobs_by_submitter_status" => submitter,
        "jobs_failed" => failed,
        "jobs_failed_by_status" => failed && status,
        "jobs_failed_by_submitter" | "jobs_failed_by_submitter_status" => failed && submitter,
        "jobs_by_repo" => filter.repo_prefix.is_some(),
        _ => false,
    }
}

#[tokio::test]
async fn page_plans_use_indexes_on_sqlite() {
    let db = Db::sqlite();
    db.open().await;
    let Location::Sqlite(path) = db.location() else {
        unreachable!("a SQLite database")
    };
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", path.display()))
        .await
        .unwrap();
    let plan = |sql: String, values: Vec<String>| {
        let pool = pool.clone();
        async move {
            let explain = format!("EXPLAIN QUERY PLAN {sql}");
            let mut query = sqlx::query(&explain);
            for value in values {
                query = query.bind(value);
            }
            let details: Vec<String> = query
                .fetch_all(&pool)
                .await
                .unwrap()
                .iter()
                .map(|row| row.get("detail"))
                .collect();
            details
        }
    };
    // "SCAN jobs", "SEARCH jobs USING INDEX x (...)", "SCAN s USING
    // COVERING INDEX x": the table (or its alias) and the index.
    let reads = |details: &[String]| -> Vec<(String, Option<String>)> {
        details
            .iter()
            .filter_map(|detail| {
                let rest = detail
                    .strip_prefix("SCAN ")
                    .or_else(|| detail.strip_prefix("SEARCH "))?;
                let table = rest.split(' ').next()?;
                let table = if table == "s" { "targets" } else { table };
                let index = rest
                    .split_once("INDEX ")
                    .map(|(_, index)| index.split(' ').next().unwrap_or("").to_owned())
                    .or_else(|| rest.contains("PRIMARY KEY").then(|| "rowid".to_owned()));
                Some((table.to_owned(), index))
            })
            .collect()
    };
    for key in combinations() {
        let page = PageSql::of::<sqlx::Sqlite>(&key);
        let details = plan(page.jobs.clone(), page.values.clone()).await;
        let sorts = details
            .iter()
            .any(|detail| detail.contains("TEMP B-TREE FOR ORDER BY"));
        check(
            &key,
            &page.jobs,
            &reads(&details),
            sorts,
            "sqlite_autoindex_jobs_1",
        );
        if let Some(window_end) = &page.window_end {
            let details = plan(window_end.clone(), page.values.clone()).await;
            check(
                &key,
                window_end,
                &reads(&details),
                false,
                "sqlite_autoindex_jobs_1",
            );
        }
    }
    for sql in rows_of_jobs_sql::<sqlx::Sqlite>() {
        let details = plan(sql.clone(), vec!["[\"a\"]".to_owned()]).await;
        let reads = reads(&details);
        assert!(
            reads
                .iter()
                .all(|(table, index)| table == "json_each" || index.is_some()),
            "scanned whole by\n{sql}\n{details:?}"
        );
    }
}

#[tokio::test]
async fn page_plans_use_indexes_on_postgres() {
    let Some(db) = Db::postgres().await else {
        return;
    };
    db.open().await;
    let pool = db.raw_postgres().await;
    let mut conn = pool.acquire().await.unwrap();
    // The planner chooses by statistics: jobs of many statuses, submitters
    // and repositories, where each value a combination asks for is rare
    // (as a filter that must not scan is), so that the index made for it
    // is the cheapest way.
    sqlx::query(
        "INSERT INTO jobs (id, status, repo, repo_mode, submitted_by, spec_hash, created_at,
                           failed_targets)
         SELECT '01900000-0000-7000-8000-' || lpad(to_hex(i), 12, '0'),
                CASE WHEN i % 97 = 0 THEN 'succeeded'
                     ELSE (ARRAY['queued', 'running', 'failed', 'cancelled'])[1 + i % 4] END,
                CASE WHEN i % 4999 = 0 THEN 'registry.example.com/acme/app'
                     ELSE 'registry.example.com/team-' || i % 40 || '/app' END,
                'multirepo',
                CASE WHEN i % 89 = 0 THEN 'team-a' ELSE 'team-' || i % 20 END,
                '', '2026-12-01T00:00:00.000000Z',
                CASE WHEN i % 101 = 0 THEN 1 ELSE 0 END
         FROM generate_series(1, 20000) AS i",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    // And jobs of another submitter with a target each (what their
    // triggers make of them does not matter): a search looks targets up.
    sqlx::query(
        "INSERT INTO jobs (id, status, repo, repo_mode, submitted_by, spec_hash, created_at)
         SELECT '01900000-0000-7000-9000-' || lpad(to_hex(i), 12, '0'), 'queued',
                'registry.example.com/team-x/app', 'multirepo', 'team-x', '',
                '2026-12-01T00:00:00.000000Z'
         FROM generate_series(1, 5000) AS i",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO targets (job_id, position, submitted_by, source, strategy, reference, status)
         SELECT id, 0, 'team-x', 'app:1', 'custom', repo || ':v1', 'pending'
         FROM jobs WHERE submitted_by = 'team-x'",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::query("ANALYZE").execute(&mut *conn).await.unwrap();
    // A sort is the planner's to choose here: it sorts the rows an index
    // found when its statistics say they are few.
    for key in combinations() {
        let page = PageSql::of::<sqlx::Postgres>(&key);
        for sql in std::iter::once(&page.jobs).chain(&page.window_end) {
            let explain = format!("EXPLAIN (FORMAT JSON) {sql}");
            let mut query = sqlx::query_scalar(&explain);
            for value in &page.values {
                query = query.bind(value.as_str());
            }
            let plan: serde_json::Value = query.fetch_one(&mut *conn).await.unwrap();
            let mut reads = Vec::new();
            reads_of(&plan[0]["Plan"], &mut reads);
            check(&key, sql, &reads, false, "jobs_pkey");
        }
    }
}

/// The `(table, index)` of every read in a PostgreSQL plan, the outermost
/// first; a bitmap scan's index is its children's (the first of several
/// ANDed).
fn reads_of(node: &serde_json::Value, reads: &mut Vec<(String, Option<String>)>) {
    if let Some(table) = node["Relation Name"].as_str() {
        reads.push((table.to_owned(), first_index(node).map(str::to_owned)));
    }
    for child in node["Plans"].as_array().into_iter().flatten() {
        reads_of(child, reads);
    }
}

fn first_index(node: &serde_json::Value) -> Option<&str> {
    if node["Node Type"] != "Bitmap Heap Scan" {
        return node["Index Name"].as_str();
    }
    let mut bitmaps = vec![&node["Plans"][0]];
    while let Some(bitmap) = bitmaps.pop() {
        if let Some(index) = bitmap["Index Name"].as_str() {
            return Some(index);
        }
        bitmaps.extend(bitmap["Plans"].as_array().into_iter().flatten().rev());
    }
    None
}
