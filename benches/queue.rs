//! Job-queue bookkeeping throughput: one claim (PostgreSQL `FOR UPDATE SKIP LOCKED`, SQLite
//! guarded update) plus one finish, per iteration, against a queue of 20,000 jobs, on SQLite (a
//! temporary file) and on PostgreSQL (`TEST_DATABASE_URL`, a fresh schema; skipped with a
//! message when unset). Run: `cargo bench --bench queue`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use callengine::store::{DatabaseUrl, JobResult, Store, StoreOptions};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};

const KIND: &str = "bench";

async fn filled(url: &str) -> Store {
    let store = Store::connect(&DatabaseUrl::parse(url).unwrap(), StoreOptions::default()).unwrap();
    store.migrate().await.unwrap();
    for _ in 0..20_000 {
        store
            .enqueue_job(KIND, None, &serde_json::json!({}), None, 3)
            .await
            .unwrap();
    }
    store
}

fn bench_backend(c: &mut Criterion, name: &str, url: String) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = runtime.block_on(filled(&url));
    let mut group = c.benchmark_group("job_queue");
    group.throughput(Throughput::Elements(1));
    group.bench_function(format!("{name}/claim_and_finish"), |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let job = store
                        .claim_job(KIND, "bench", Duration::from_secs(60))
                        .await
                        .unwrap()
                        .expect("the queue holds enough jobs");
                    store
                        .finish_job(job.id, "bench", &JobResult::Done)
                        .await
                        .unwrap();
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

fn queue(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    bench_backend(
        c,
        "sqlite",
        format!("sqlite://{}", dir.path().join("bench.db").display()),
    );
    match std::env::var("TEST_DATABASE_URL") {
        Ok(admin) => {
            let schema = format!("bench_{}", uuid::Uuid::new_v4().simple());
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let mut conn = AsyncPgConnection::establish(&admin).await.unwrap();
                conn.batch_execute(&format!("CREATE SCHEMA {schema}"))
                    .await
                    .unwrap();
            });
            let sep = if admin.contains('?') { '&' } else { '?' };
            bench_backend(
                c,
                "postgres",
                format!("{admin}{sep}options=-csearch_path%3D{schema}"),
            );
            runtime.block_on(async {
                let mut conn = AsyncPgConnection::establish(&admin).await.unwrap();
                conn.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
                    .await
                    .unwrap();
            });
        }
        Err(_) => eprintln!("TEST_DATABASE_URL is not set: PostgreSQL queue benchmark skipped"),
    }
}

criterion_group!(benches, queue);
criterion_main!(benches);
