//! The one store test suite, run against every backend.
//!
//! Each case is an `async fn(Arc<dyn Store>)` that knows nothing about the
//! backend; `store_suite!` turns the list into `sqlite::<case>` tests, run
//! always, and `postgres::<case>` tests, run when
//! `SLUICE_TEST_DATABASE_URL` is set. When it is set and the server cannot
//! be reached the PostgreSQL tests fail: a CI that thinks it tested
//! PostgreSQL must have. Every case gets a fresh database, dropped when the
//! case ends (also when it panics).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::{Duration as ChronoDuration, Utc};
use serde_json::json;
use sluice_store::testing::{drop_postgres_database, fresh_postgres};
use sluice_store::{
    AuditFilter, BatchOutcome, BatchStatus, NewApiKey, NewAuditEvent, NewBatch, NewBatchError,
    PipelineStatus, Role, Store, StoreError,
};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use uuid::Uuid;

macro_rules! store_suite {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let (store, _dir) = sluice_store::testing::fresh_sqlite().await;
                    assert_eq!(store.backend(), "sqlite");
                    super::$case(store).await;
                }
            )*
        }

        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let Some(base) = sluice_store::testing::test_database_url() else {
                        eprintln!("SLUICE_TEST_DATABASE_URL is not set: PostgreSQL case not run");
                        return;
                    };
                    let (store, url) = super::fresh_postgres(&base).await.expect(
                        "SLUICE_TEST_DATABASE_URL is set, so PostgreSQL must be reachable",
                    );
                    assert_eq!(store.backend(), "postgres");
                    let outcome = tokio::spawn(super::$case(store)).await;
                    if let Err(error) = super::drop_postgres_database(&url).await {
                        eprintln!("could not drop test database: {error}");
                    }
                    if let Err(error) = outcome {
                        std::panic::resume_unwind(error.into_panic());
                    }
                }
            )*
        }
    };
}

store_suite!(
    ping_and_tenants,
    api_keys_are_scoped_and_found_by_hash,
    api_key_rotation,
    api_key_revocation,
    pipelines_versions_and_status,
    pipelines_are_invisible_to_other_tenants,
    pipeline_pagination_walks_every_item_once,
    batches_are_scoped_and_paginated,
    idempotency_key_returns_the_existing_batch,
    claim_takes_the_oldest_batch_of_active_pipelines,
    concurrent_claims_hand_out_each_batch_once,
    expired_lease_is_taken_over_and_old_owner_loses,
    release_requeues_with_not_before,
    finish_requires_a_final_status,
    failed_batch_retry_clears_errors,
    batch_errors_paginate_by_record_index,
    delete_pipeline_refuses_while_batches_are_active,
    stats_and_queue_numbers,
    audit_trail_is_scoped_and_paginated,
    mixed_api_and_worker_load_never_fails,
    audit_chain_links_every_event,
    concurrent_audit_appends_keep_one_chain,
    audit_filters_combine,
    system_chain_outlives_tenants,
    rotation_scans_and_rewrites_stored_values,
    retention_deletes_only_expired_finished_batches,
    erase_tenant_removes_every_row_of_the_tenant,
    pipelines_can_be_created_with_a_chosen_id,
);

// ---- fixtures ----

fn new_key(tenant_id: Uuid, role: Role) -> NewApiKey {
    let id = Uuid::now_v7();
    NewApiKey {
        id,
        tenant_id,
        name: format!("key {id}"),
        role,
        prefix: "slk_1a2b3c4d".into(),
        last4: "wxyz".into(),
        secret_hash: Uuid::new_v4().as_bytes().to_vec(),
        pipeline_ids: None,
        created_by: None,
    }
}

fn config(n: u32) -> serde_json::Value {
    json!({
        "name": format!("p{n}"),
        "source": {"type": "http"},
        "processors": [{"type": "filter", "n": n}],
        "destination": {"type": "file", "path": "out.ndjson"},
    })
}

fn new_batch(tenant_id: Uuid, pipeline_id: Uuid, bytes: i64) -> NewBatch {
    let id = Uuid::now_v7();
    NewBatch {
        id,
        tenant_id,
        pipeline_id,
        config_version: 1,
        record_count: 10,
        payload_key: format!("payloads/{id}.ndjson"),
        payload_bytes: bytes,
        idempotency_key: None,
        body_sha256: None,
    }
}

async fn tenant_with_pipeline(store: &Arc<dyn Store>, status: PipelineStatus) -> (Uuid, Uuid) {
    let tenant = store.create_tenant("acme").await.unwrap();
    let pipeline = store
        .create_pipeline(tenant.id, "events", &config(1), status, None)
        .await
        .unwrap();
    (tenant.id, pipeline.id)
}

async fn pipeline(store: &Arc<dyn Store>, tenant_id: Uuid, status: PipelineStatus) -> Uuid {
    store
        .create_pipeline(tenant_id, "more", &config(2), status, None)
        .await
        .unwrap()
        .id
}

fn error_at(record_index: i64) -> NewBatchError {
    NewBatchError {
        record_index,
        processor_index: 1,
        processor_type: "validate".into(),
        code: "SCHEMA_MISMATCH".into(),
        message: format!("record {record_index} is missing /id"),
        record: json!({"n": record_index, "email": "[REDACTED]"}),
    }
}

const LONG: Duration = Duration::from_secs(60);

// ---- cases ----

async fn ping_and_tenants(store: Arc<dyn Store>) {
    store.ping().await.unwrap();
    let a = store.create_tenant("a").await.unwrap();
    let b = store.create_tenant("b").await.unwrap();
    assert_ne!(a.id, b.id);
    assert_eq!(store.get_tenant(a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(store.get_tenant(Uuid::now_v7()).await.unwrap(), None);
    let all = store.list_tenants().await.unwrap();
    assert_eq!(all, vec![a.clone(), b]);
    assert!((Utc::now() - a.created_at).num_seconds().abs() < 60);
}

async fn api_keys_are_scoped_and_found_by_hash(store: Arc<dyn Store>) {
    let t1 = store.create_tenant("one").await.unwrap().id;
    let t2 = store.create_tenant("two").await.unwrap().id;
    let admin = store
        .create_api_key(new_key(t1, Role::Admin))
        .await
        .unwrap();
    let mut ingest = new_key(t1, Role::Ingest);
    let allowed = vec![Uuid::now_v7(), Uuid::now_v7()];
    ingest.pipeline_ids = Some(allowed.clone());
    ingest.created_by = Some(admin.id);
    let hash = ingest.secret_hash.clone();
    let ingest = store.create_api_key(ingest).await.unwrap();
    assert_eq!(ingest.pipeline_ids, Some(allowed));
    assert_eq!(ingest.created_by, Some(admin.id));
    assert_eq!(ingest.role, Role::Ingest);
    assert!(ingest.is_valid_at(Utc::now()));
    let other = store
        .create_api_key(new_key(t2, Role::Reader))
        .await
        .unwrap();

    let found = store.find_api_key_by_hash(&hash).await.unwrap();
    assert_eq!(found, Some(ingest.clone()));
    assert_eq!(store.find_api_key_by_hash(b"nope").await.unwrap(), None);

    assert_eq!(
        store.get_api_key(t1, admin.id).await.unwrap(),
        Some(admin.clone())
    );
    assert_eq!(store.get_api_key(t2, admin.id).await.unwrap(), None);
    assert_eq!(store.get_api_key(t1, other.id).await.unwrap(), None);

    let listed: Vec<Uuid> = store
        .list_api_keys(t1)
        .await
        .unwrap()
        .iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(
        listed,
        vec![ingest.id, admin.id],
        "newest first, own tenant only"
    );
    assert_eq!(store.list_api_keys(t2).await.unwrap(), vec![other]);

    // A key for a tenant that does not exist.
    let orphan = store
        .create_api_key(new_key(Uuid::now_v7(), Role::Admin))
        .await;
    assert!(matches!(orphan, Err(StoreError::NotFound)), "{orphan:?}");
    // The secret hash is unique.
    let mut twin = new_key(t1, Role::Admin);
    twin.secret_hash = hash;
    assert!(store.create_api_key(twin).await.is_err());
}

async fn api_key_rotation(store: Arc<dyn Store>) {
    let t1 = store.create_tenant("one").await.unwrap().id;
    let t2 = store.create_tenant("two").await.unwrap().id;
    let old = store
        .create_api_key(new_key(t1, Role::Editor))
        .await
        .unwrap();
    let grace_end = Utc::now() + ChronoDuration::hours(1);

    // Another tenant cannot rotate it.
    let denied = store
        .rotate_api_key(t2, old.id, new_key(t2, Role::Editor), grace_end)
        .await;
    assert!(matches!(denied, Err(StoreError::NotFound)), "{denied:?}");

    let new = store
        .rotate_api_key(t1, old.id, new_key(t1, Role::Editor), grace_end)
        .await
        .unwrap();
    assert_eq!(new.rotated_from, Some(old.id));
    assert_eq!(new.tenant_id, t1);
    let old_now = store.get_api_key(t1, old.id).await.unwrap().unwrap();
    let expires = old_now.expires_at.unwrap();
    assert!((expires - grace_end).num_milliseconds().abs() <= 1);
    assert!(
        old_now.is_valid_at(Utc::now()),
        "old key works during the grace period"
    );
    assert!(!old_now.is_valid_at(grace_end + ChronoDuration::seconds(1)));
    assert!(new.is_valid_at(Utc::now()));

    // Rotating the old key again must not extend its expiry.
    let later = Utc::now() + ChronoDuration::hours(5);
    store
        .rotate_api_key(t1, old.id, new_key(t1, Role::Editor), later)
        .await
        .unwrap();
    let old_again = store.get_api_key(t1, old.id).await.unwrap().unwrap();
    assert_eq!(old_again.expires_at, old_now.expires_at);

    // An expired key cannot be rotated.
    let past = Utc::now() - ChronoDuration::seconds(5);
    let short = store
        .create_api_key(new_key(t1, Role::Reader))
        .await
        .unwrap();
    store
        .rotate_api_key(t1, short.id, new_key(t1, Role::Reader), past)
        .await
        .unwrap();
    let expired = store
        .rotate_api_key(t1, short.id, new_key(t1, Role::Reader), later)
        .await;
    assert!(
        matches!(expired, Err(StoreError::InvalidState(_))),
        "{expired:?}"
    );

    // Nor can a revoked one.
    store.revoke_api_key(t1, new.id).await.unwrap();
    let revoked = store
        .rotate_api_key(t1, new.id, new_key(t1, Role::Editor), later)
        .await;
    assert!(
        matches!(revoked, Err(StoreError::InvalidState(_))),
        "{revoked:?}"
    );

    // A failed rotation created nothing.
    assert_eq!(store.list_api_keys(t1).await.unwrap().len(), 5);
    assert!(store.list_api_keys(t2).await.unwrap().is_empty());
}

async fn api_key_revocation(store: Arc<dyn Store>) {
    let t1 = store.create_tenant("one").await.unwrap().id;
    let t2 = store.create_tenant("two").await.unwrap().id;
    let key = new_key(t1, Role::Admin);
    let hash = key.secret_hash.clone();
    let key = store.create_api_key(key).await.unwrap();

    let denied = store.revoke_api_key(t2, key.id).await;
    assert!(matches!(denied, Err(StoreError::NotFound)), "{denied:?}");
    assert!(
        store
            .get_api_key(t1, key.id)
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_none()
    );

    let revoked = store.revoke_api_key(t1, key.id).await.unwrap();
    assert!(revoked.revoked_at.is_some());
    assert!(!revoked.is_valid_at(Utc::now()));
    // Still found by hash, so the caller can tell "revoked" from "unknown".
    let found = store.find_api_key_by_hash(&hash).await.unwrap().unwrap();
    assert!(!found.is_valid_at(Utc::now()));

    let again = store.revoke_api_key(t1, key.id).await;
    assert!(
        matches!(again, Err(StoreError::InvalidState(_))),
        "{again:?}"
    );
    let missing = store.revoke_api_key(t1, Uuid::now_v7()).await;
    assert!(matches!(missing, Err(StoreError::NotFound)), "{missing:?}");
}

async fn pipelines_versions_and_status(store: Arc<dyn Store>) {
    let tenant = store.create_tenant("acme").await.unwrap().id;
    let actor = store
        .create_api_key(new_key(tenant, Role::Editor))
        .await
        .unwrap()
        .id;
    let created = store
        .create_pipeline(
            tenant,
            "events",
            &config(1),
            PipelineStatus::Active,
            Some(actor),
        )
        .await
        .unwrap();
    assert_eq!(created.version, 1);
    assert_eq!(created.config, config(1));
    assert_eq!(created.status, PipelineStatus::Active);
    assert_eq!(
        store.get_pipeline(tenant, created.id).await.unwrap(),
        Some(created.clone())
    );

    let v2 = store
        .update_pipeline(tenant, created.id, "events-2", &config(2), Some(actor))
        .await
        .unwrap();
    assert_eq!((v2.version, v2.name.as_str()), (2, "events-2"));
    assert_eq!(v2.config, config(2));
    assert!(v2.updated_at >= created.updated_at);
    assert_eq!(v2.created_at, created.created_at);
    let v3 = store
        .update_pipeline(tenant, created.id, "events-3", &config(3), None)
        .await
        .unwrap();
    assert_eq!(v3.version, 3);
    assert_eq!(
        store.get_pipeline(tenant, created.id).await.unwrap(),
        Some(v3.clone())
    );

    // History, newest first, two per page.
    let (page1, cursor) = store
        .list_pipeline_versions(tenant, created.id, None, 2)
        .await
        .unwrap();
    assert_eq!(
        page1.iter().map(|v| v.version).collect::<Vec<_>>(),
        vec![3, 2]
    );
    assert_eq!(cursor, Some(2));
    assert_eq!(page1[0].config, config(3));
    assert_eq!(page1[0].created_by, None);
    assert_eq!(page1[1].created_by, Some(actor));
    let (page2, cursor) = store
        .list_pipeline_versions(tenant, created.id, cursor, 2)
        .await
        .unwrap();
    assert_eq!(page2.iter().map(|v| v.version).collect::<Vec<_>>(), vec![1]);
    assert_eq!(page2[0].config, config(1));
    assert_eq!(cursor, None);

    // Workers read any version, with the pipeline as it is now.
    let (pipeline, version) = store
        .get_pipeline_version(created.id, 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pipeline, v3);
    assert_eq!((version.version, version.config), (1, config(1)));
    assert_eq!(
        store.get_pipeline_version(created.id, 9).await.unwrap(),
        None
    );
    assert_eq!(
        store.get_pipeline_version(Uuid::now_v7(), 1).await.unwrap(),
        None
    );

    let paused = store
        .set_pipeline_status(tenant, created.id, PipelineStatus::Paused)
        .await
        .unwrap();
    assert_eq!(paused.status, PipelineStatus::Paused);
    assert_eq!(paused.version, 3, "status changes make no version");
    let active = store
        .set_pipeline_status(tenant, created.id, PipelineStatus::Active)
        .await
        .unwrap();
    assert_eq!(active.status, PipelineStatus::Active);

    // A pipeline of a tenant that does not exist.
    let orphan = store
        .create_pipeline(
            Uuid::now_v7(),
            "x",
            &config(1),
            PipelineStatus::Active,
            None,
        )
        .await;
    assert!(matches!(orphan, Err(StoreError::NotFound)), "{orphan:?}");
}

async fn pipelines_are_invisible_to_other_tenants(store: Arc<dyn Store>) {
    let (t1, p1) = tenant_with_pipeline(&store, PipelineStatus::Active).await;
    let t2 = store.create_tenant("intruder").await.unwrap().id;
    let batch = store.create_batch(new_batch(t1, p1, 10)).await.unwrap();

    assert_eq!(store.get_pipeline(t2, p1).await.unwrap(), None);
    let list = store.list_pipelines(t2, None, None, 50).await.unwrap();
    assert!(list.items.is_empty() && list.next_cursor.is_none());
    let update = store.update_pipeline(t2, p1, "x", &config(9), None).await;
    assert!(matches!(update, Err(StoreError::NotFound)), "{update:?}");
    let status = store
        .set_pipeline_status(t2, p1, PipelineStatus::Paused)
        .await;
    assert!(matches!(status, Err(StoreError::NotFound)), "{status:?}");
    let versions = store.list_pipeline_versions(t2, p1, None, 10).await;
    assert!(
        matches!(versions, Err(StoreError::NotFound)),
        "{versions:?}"
    );
    let stats = store.pipeline_stats(t2, p1).await;
    assert!(matches!(stats, Err(StoreError::NotFound)), "{stats:?}");
    let delete = store.delete_pipeline(t2, p1).await;
    assert!(matches!(delete, Err(StoreError::NotFound)), "{delete:?}");

    // Batches through the other tenant: nothing, and nothing can be added.
    assert_eq!(store.get_batch(t2, p1, batch.id).await.unwrap(), None);
    assert!(
        store
            .list_batches(t2, p1, None, None, 50)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let submit = store.create_batch(new_batch(t2, p1, 10)).await;
    assert!(matches!(submit, Err(StoreError::NotFound)), "{submit:?}");
    let errors = store.list_batch_errors(t2, p1, batch.id, None, 10).await;
    assert!(matches!(errors, Err(StoreError::NotFound)), "{errors:?}");
    let retry = store.retry_batch(t2, p1, batch.id).await;
    assert!(matches!(retry, Err(StoreError::NotFound)), "{retry:?}");
    assert_eq!(store.queued_bytes(t2, p1).await.unwrap(), (0, 0));

    // The owner still sees everything, unchanged.
    let own = store.get_pipeline(t1, p1).await.unwrap().unwrap();
    assert_eq!((own.version, own.status), (1, PipelineStatus::Active));
    assert_eq!(
        store.get_batch(t1, p1, batch.id).await.unwrap(),
        Some(batch)
    );
}

async fn pipeline_pagination_walks_every_item_once(store: Arc<dyn Store>) {
    let tenant = store.create_tenant("acme").await.unwrap().id;
    let other = store.create_tenant("other").await.unwrap().id;
    let mut made = Vec::new();
    for n in 0..8 {
        let status = if n % 3 == 0 {
            PipelineStatus::Paused
        } else {
            PipelineStatus::Active
        };
        let p = store
            .create_pipeline(tenant, &format!("p{n}"), &config(n), status, None)
            .await
            .unwrap();
        made.push(p);
        store
            .create_pipeline(other, "noise", &config(n), PipelineStatus::Active, None)
            .await
            .unwrap();
    }

    let mut seen = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let page = store.list_pipelines(tenant, None, after, 3).await.unwrap();
        assert!(page.items.len() <= 3);
        seen.extend(page.items.iter().map(|p| p.id));
        pages += 1;
        match page.next_cursor {
            Some(cursor) => {
                assert_eq!(Some(&cursor), page.items.last().map(|p| &p.id));
                after = Some(cursor);
            }
            None => break,
        }
    }
    let expected: Vec<Uuid> = made.iter().rev().map(|p| p.id).collect();
    assert_eq!(seen, expected, "newest first, each exactly once");
    assert_eq!(pages, 3);

    let paused = store
        .list_pipelines(tenant, Some(PipelineStatus::Paused), None, 10)
        .await
        .unwrap();
    let expected: Vec<Uuid> = made
        .iter()
        .rev()
        .filter(|p| p.status == PipelineStatus::Paused)
        .map(|p| p.id)
        .collect();
    assert_eq!(
        paused.items.iter().map(|p| p.id).collect::<Vec<_>>(),
        expected
    );
    assert_eq!(paused.next_cursor, None);
    // The listing carries each pipeline's current config.
    assert_eq!(paused.items[0].config, made[6].config);

    // Exactly a page's worth: the cursor may name a page that is empty.
    let exact = store
        .list_pipelines(tenant, Some(PipelineStatus::Paused), None, 3)
        .await
        .unwrap();
    assert_eq!(exact.items.len(), 3);
    assert_eq!(exact.next_cursor, None);
}

async fn batches_are_scoped_and_paginated(store: Arc<dyn Store>) {
    let (tenant, p1) = tenant_with_pipeline(&store, PipelineStatus::Paused).await;
    let p2 = pipeline(&store, tenant, PipelineStatus::Paused).await;
    let mut made = Vec::new();
    for n in 0..5 {
        let mut batch = new_batch(tenant, p1, 100 + n);
        batch.body_sha256 = Some(format!("{n:064x}"));
        made.push(store.create_batch(batch).await.unwrap());
        store.create_batch(new_batch(tenant, p2, 1)).await.unwrap();
    }
    let first = &made[0];
    assert_eq!(first.status, BatchStatus::Pending);
    assert_eq!(
        (
            first.record_count,
            first.succeeded_count,
            first.failed_count
        ),
        (10, 0, 0)
    );
    assert_eq!(first.attempts, 0);
    assert_eq!(first.payload_bytes, 100);
    assert!(first.started_at.is_none() && first.lease_owner.is_none());
    assert_eq!(
        store
            .get_batch(tenant, p1, first.id)
            .await
            .unwrap()
            .as_ref(),
        Some(first)
    );
    // The right tenant but the wrong pipeline.
    assert_eq!(store.get_batch(tenant, p2, first.id).await.unwrap(), None);

    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_batches(tenant, p1, None, after, 2)
            .await
            .unwrap();
        seen.extend(page.items.iter().map(|b| b.id));
        after = page.next_cursor;
        if after.is_none() {
            break;
        }
    }
    assert_eq!(seen, made.iter().rev().map(|b| b.id).collect::<Vec<_>>());

    // Status filter.
    let pending = store
        .list_batches(tenant, p1, Some(BatchStatus::Pending), None, 10)
        .await
        .unwrap();
    assert_eq!(pending.items.len(), 5);
    let completed = store
        .list_batches(tenant, p1, Some(BatchStatus::Completed), None, 10)
        .await
        .unwrap();
    assert!(completed.items.is_empty());

    // A batch must name an existing version of its pipeline.
    let mut bad = new_batch(tenant, p1, 1);
    bad.config_version = 42;
    assert!(store.create_batch(bad).await.is_err());
    // A batch for a pipeline that does not exist.
    let missing = store
        .create_batch(new_batch(tenant, Uuid::now_v7(), 1))
        .await;
    assert!(matches!(missing, Err(StoreError::NotFound)), "{missing:?}");
}

async fn idempotency_key_returns_the_existing_batch(store: Arc<dyn Store>) {
    let (tenant, p1) = tenant_with_pipeline(&store, PipelineStatus::Paused).await;
    let p2 = pipeline(&store, tenant, PipelineStatus::Paused).await;
    let mut first = new_batch(tenant, p1, 10);
    first.idempotency_key = Some("order-17".into());
    first.body_sha256 = Some("aa".repeat(32));
    let original = store.create_batch(first).await.unwrap();

    let mut replay = new_batch(tenant, p1, 99);
    replay.idempotency_key = Some("order-17".into());
    match store.create_batch(replay.clone()).await {
        Err(StoreError::DuplicateIdempotencyKey(existing)) => assert_eq!(*existing, original),
        other => panic!("expected a duplicate, got {other:?}"),
    }
    // The duplicate stored nothing.
    assert_eq!(store.get_batch(tenant, p1, replay.id).await.unwrap(), None);
    assert_eq!(
        store
            .list_batches(tenant, p1, None, None, 10)
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    let found = store
        .find_batch_by_idempotency_key(tenant, p1, "order-17")
        .await
        .unwrap();
    assert_eq!(found, Some(original.clone()));
    assert_eq!(
        store
            .find_batch_by_idempotency_key(tenant, p1, "other")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .find_batch_by_idempotency_key(tenant, p2, "order-17")
            .await
            .unwrap(),
        None
    );
    let intruder = store.create_tenant("intruder").await.unwrap().id;
    assert_eq!(
        store
            .find_batch_by_idempotency_key(intruder, p1, "order-17")
            .await
            .unwrap(),
        None
    );

    // Keys are per pipeline; batches without a key never collide.
    let mut elsewhere = new_batch(tenant, p2, 10);
    elsewhere.idempotency_key = Some("order-17".into());
    store.create_batch(elsewhere).await.unwrap();
    store.create_batch(new_batch(tenant, p1, 1)).await.unwrap();
    store.create_batch(new_batch(tenant, p1, 1)).await.unwrap();
}

async fn claim_takes_the_oldest_batch_of_active_pipelines(store: Arc<dyn Store>) {
    assert_eq!(
        store.claim_batch("w", LONG).await.unwrap(),
        None,
        "empty queue"
    );
    let (tenant, active) = tenant_with_pipeline(&store, PipelineStatus::Active).await;
    let paused = pipeline(&store, tenant, PipelineStatus::Paused).await;
    let held = store
        .create_batch(new_batch(tenant, paused, 1))
        .await
        .unwrap();
    let b1 = store
        .create_batch(new_batch(tenant, active, 1))
        .await
        .unwrap();
    let b2 = store
        .create_batch(new_batch(tenant, active, 1))
        .await
        .unwrap();

    let before = Utc::now();
    let first = store.claim_batch("w1", LONG).await.unwrap().unwrap();
    assert_eq!(first.id, b1.id, "oldest first");
    assert_eq!(first.status, BatchStatus::Processing);
    assert_eq!(first.lease_owner.as_deref(), Some("w1"));
    assert_eq!(first.attempts, 1);
    assert!(first.started_at.is_some());
    let expiry = first.lease_expires_at.unwrap();
    assert!(
        (expiry - before - ChronoDuration::seconds(60))
            .num_seconds()
            .abs()
            < 10
    );
    let second = store.claim_batch("w2", LONG).await.unwrap().unwrap();
    assert_eq!(second.id, b2.id);
    // The paused pipeline keeps its batch.
    assert_eq!(store.claim_batch("w3", LONG).await.unwrap(), None);
    let still = store
        .get_batch(tenant, paused, held.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(still.status, BatchStatus::Pending);

    // Starting the pipeline releases it; pausing again holds new ones.
    store
        .set_pipeline_status(tenant, paused, PipelineStatus::Active)
        .await
        .unwrap();
    let third = store.claim_batch("w3", LONG).await.unwrap().unwrap();
    assert_eq!(third.id, held.id);
    store
        .set_pipeline_status(tenant, active, PipelineStatus::Paused)
        .await
        .unwrap();
    store
        .create_batch(new_batch(tenant, active, 1))
        .await
        .unwrap();
    assert_eq!(store.claim_batch("w4", LONG).await.unwrap(), None);
}

async fn concurrent_claims_hand_out_each_batch_once(store: Arc<dyn Store>) {
    let (tenant, p1) = tenant_with_pipeline(&store, PipelineStatus::Active).await;
    let p2 = pipeline(&store, tenant, PipelineStatus::Active).await;
    let mut ids = HashSet::new();
    for n in 0..20 {
        let pipeline = if n % 2 == 0 { p1 } else { p2 };
        ids.insert(
            store
                .create_batch(new_batch(tenant, pipeline, 1))
                .await
                .unwrap()
                .id,
        );
    }
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let name = format!("worker-{worker}");
            let mut mine = Vec::new();
            while let Some(batch) = store.claim_batch(&name, LONG).await.unwrap() {
                assert_eq!(batch.lease_owner.as_deref(), Some(name.as_str()));
                assert_eq!(batch.attempts, 1, "never claimed before");
                mine.push(batch.id);
            }
            mine
        }));
    }
    let mut claimed = Vec::new();
    for task in tasks {
        claimed.extend(task.await.unwrap());
    }
    assert_eq!(claimed.len(), 20, "every batch claimed once: {claimed:?}");
    assert_eq!(claimed.iter().copied().collect::<HashSet<_>>(), ids);
    assert_eq!(store.claim_batch("late", LONG).await.unwrap(), None);
}

async fn expired_lease_is_taken_over_and_old_owner_loses(store: Arc<dyn Store>) {
    let (tenant, p) = tenant_with_pipeline(&store, PipelineStatus::Active).await;
    let batch = store.create_batch(new_batch(tenant, p, 1)).await.unwrap();
    let short = Duration::from_millis(150);
    let a = store.claim_batch("a", short).await.unwrap().unwrap();
    assert_eq!(a.id, batch.id);
    assert!(
        store.renew_lease(batch.id, "a", short).await.unwrap(),
        "owner renews"
    );
    assert!(
        !store.renew_lease(batch.id, "b", LONG).await.unwrap(),
        "stranger cannot"
    );
    assert_eq!(
        store.claim_batch("b", LONG).await.unwrap(),
        None,
        "lease still held"
    );

    tokio::time::sleep(Duration::from_millis(400)).await;
    let b = store.claim_batch("b", LONG).await.unwrap().unwrap();
    assert_eq!(b.id, batch.id, "expired lease taken over");
    assert_eq!(b.lease_owner.as_deref(), Some("b"));
    assert_eq!(b.attempts, 2);
    assert_eq!(
        b.started_at, a.started_at,
        "started_at is the first claim's"
    );

    // The old owner has lost it: every lease operation says so.
    assert!(!store.renew_lease(batch.id, "a", LONG).await.unwrap());
    let outcome = BatchOutcome {
        status: BatchStatus::Completed,
        succeeded_count: 10,
        failed_count: 0,
        error: None,
    };
    assert!(!store.finish_batch(batch.id, "a", &outcome).await.unwrap());
    assert!(
        !store
            .release_batch(batch.id, "a", None, Some("x"), false)
            .await
            .unwrap()
    );
    let now = store.get_batch(tenant, p, batch.id).await.unwrap().unwrap();
    assert_eq!(now.status, BatchStatus::Processing);
    assert_eq!(now.lease_owner.as_deref(), Some("b"));

    assert!(store.renew_lease(batch.id, "b", LONG).await.unwrap());
    assert!(store.finish_batch(batch.id, "b", &outcome).await.unwrap());
    let done = store.get_batch(tenant, p, batch.id).await.unwrap().unwrap();
    assert_eq!(done.status, BatchStatus::Completed);
    assert_eq!((done.succeeded_count, done.failed_count), (10, 0));
    assert!(done.completed_at.is_some());
    assert!(done.lease_owner.is_none() && done.lease_expires_at.is_none());
    // Finished batches are not leased any more.
    assert!(!store.renew_lease(batch.id, "b", LONG).await.unwrap());
    assert!(!store.finish_batch(batch.id, "b", &outcome).await.unwrap());
    assert_eq!(store.claim_batch("c", LONG).await.unwrap(), None);
}

async fn release_requeues_with_not_before(store: Arc<dyn Store>) {
    let (tenant, p) = tenant_with_pipeline(&store, PipelineStatus::Active).await;
    let batch = store.create_batch(new_batch(tenant, p, 1)).await.unwrap();
    store.claim_batch("w", LONG).await.unwrap().unwrap();

    let later = Utc::now() + ChronoDuration::hours(1);
    assert!(
        store
            .release_batch(
                batch.id,
                "w",
                Some(later),
                Some("destination timed out"),
                false
            )
            .await
            .unwrap()
    );
    let released = store.get_batch(tenant, p, batch.id).await.unwrap().unwrap();
    assert_eq!(released.status, BatchStatus::Pending);
    assert_eq!(released.error.as_deref(), Some("destination timed out"));
    assert_eq!(released.attempts, 1, "a failed attempt counts");
    assert!(released.lease_owner.is_none() && released.lease_expires_at.is_none());
    assert!(
        (released.not_before.unwrap() - later)
            .num_milliseconds()
            .abs()
            <= 1
    );
    assert_eq!(
        store.claim_batch("w", LONG).await.unwrap(),
        None,
        "backing off"
    );
    assert!(
        !store
            .release_batch(batch.id, "w", None, None, false)
            .await
            .unwrap(),
        "not leased"
    );

    let pending_retry = store.retry_batch(tenant, p, batch.id).await;
    assert!(matches!(pending_retry, Err(StoreError::InvalidState(_))));

    // Once not_before is past, a batch is claimable again.
    let other = store.create_batch(new_batch(tenant, p, 1)).await.unwrap();
    let next = store.claim_batch("w", LONG).await.unwrap().unwrap();
    assert_eq!(next.id, other.id, "the backed-off batch is skipped");
    assert!(
        store
            .release_batch(
                other.id,
                "w",
                Some(Utc::now() - ChronoDuration::seconds(1)),
                None,
                true
            )
            .await
            .unwrap()
    );
    let undone = store.get_batch(tenant, p, other.id).await.unwrap().unwrap();
    assert_eq!(undone.attempts, 0, "a graceful release does not count");
    assert_eq!(undone.error, None);
    let again = store.claim_batch("w2", LONG).await.unwrap().unwrap();
    assert_eq!(again.id, other.id);
    assert_eq!(again.attempts, 1);
}

async fn finish_requires_a_final_status(store: Arc<dyn Store>) {
    let (tenant, p) = tenant_with_pipeline(&store, PipelineStatus::Active).await;
    let batch = store.create_batch(new_batch(tenant, p, 1)).await.unwrap();
    store.claim_batch("w", LONG).await.unwrap().unwrap();
    let bogus = BatchOutcome {
        status: BatchStatus::Pending,
        succeeded_count: 0,
        failed_count: 0,
        error: None,
    };
    let result = store.finish_batch(batch.id, "w", &bogus).await;
    assert!(
        matches!(result, Err(StoreError::InvalidState(_))),
        "{result:?}"
    );
    let still = store.get_batch(tenant, p, batch.id).await.unwrap().unwrap();
    assert_eq!(still.status, BatchStatus::Processing);
}

async fn failed_batch_retry_clears_errors(store: Arc<dyn Store>) {
    let (tenant, p) = tenant_with_pipeline(&store, PipelineStatus::Active).await;
    let batch = store.create_batch(new_batch(tenant, p, 1)).await.unwrap();

    let not_failed = store.retry_batch(tenant, p, batch.id).await;
    assert!(
        matches!(not_failed, Err(StoreError::InvalidState(_))),
        "{not_failed:?}"
    );
    let missing = store.retry_batch(tenant, p, Uuid::now_v7()).await;
    assert!(matches!(missing, Err(StoreError::NotFound)), "{missing:?}");

    store.claim_batch("w", LONG).await.unwrap().unwrap();
    store
        .insert_batch_errors(batch.id, &[error_at(0), error_at(3)])
        .await
        .unwrap();
    let failed = BatchOutcome {
        status: BatchStatus::Failed,
        succeeded_count: 0,
        failed_count: 2,
        error: Some("on_error is fail_batch".into()),
    };
    assert!(store.finish_batch(batch.id, "w", &failed).await.unwrap());
    let done = store.get_batch(tenant, p, batch.id).await.unwrap().unwrap();
    assert_eq!(done.status, BatchStatus::Failed);
    assert_eq!(done.error.as_deref(), Some("on_error is fail_batch"));
    let (errors, _) = store
        .list_batch_errors(tenant, p, batch.id, None, 10)
        .await
        .unwrap();
    assert_eq!(errors.len(), 2);

    let intruder = store.create_tenant("intruder").await.unwrap().id;
    let denied = store.retry_batch(intruder, p, batch.id).await;
    assert!(matches!(denied, Err(StoreError::NotFound)), "{denied:?}");

    let retried = store.retry_batch(tenant, p, batch.id).await.unwrap();
    assert_eq!(retried.status, BatchStatus::Pending);
    assert_eq!(
        (
            retried.succeeded_count,
            retried.failed_count,
            retried.attempts
        ),
        (0, 0, 0)
    );
    assert_eq!(retried.error, None);
    assert!(retried.completed_at.is_none() && retried.not_before.is_none());
    let (errors, next) = store
        .list_batch_errors(tenant, p, batch.id, None, 10)
        .await
        .unwrap();
    assert!(
        errors.is_empty() && next.is_none(),
        "retry clears the old errors"
    );
    let again = store.claim_batch("w", LONG).await.unwrap().unwrap();
    assert_eq!((again.id, again.attempts), (batch.id, 1));
}

async fn batch_errors_paginate_by_record_index(store: Arc<dyn Store>) {
    let (tenant, p) = tenant_with_pipeline(&store, PipelineStatus::Active).await;
    let batch = store.create_batch(new_batch(tenant, p, 1)).await.unwrap();
    let other = store.create_batch(new_batch(tenant, p, 1)).await.unwrap();
    // Inserted out of order, listed by record index.
    let indexes = [9_i64, 2, 5, 0, 7];
    let errors: Vec<NewBatchError> = indexes.iter().map(|i| error_at(*i)).collect();
    store.insert_batch_errors(batch.id, &errors).await.unwrap();
    store.insert_batch_errors(batch.id, &[]).await.unwrap();
    store
        .insert_batch_errors(other.id, &[error_at(1)])
        .await
        .unwrap();

    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let (page, next) = store
            .list_batch_errors(tenant, p, batch.id, after, 2)
            .await
            .unwrap();
        assert!(page.len() <= 2);
        seen.extend(page);
        match next {
            Some(cursor) => after = Some(cursor),
            None => break,
        }
    }
    assert_eq!(
        seen.iter().map(|e| e.record_index).collect::<Vec<_>>(),
        vec![0, 2, 5, 7, 9]
    );
    let first = &seen[0];
    assert_eq!(first.batch_id, batch.id);
    assert_eq!(
        (first.processor_index, first.processor_type.as_str()),
        (1, "validate")
    );
    assert_eq!(first.code, "SCHEMA_MISMATCH");
    assert_eq!(first.message, "record 0 is missing /id");
    assert_eq!(first.record, json!({"n": 0, "email": "[REDACTED]"}));

    // Clearing is per batch.
    store.clear_batch_errors(batch.id).await.unwrap();
    assert!(
        store
            .list_batch_errors(tenant, p, batch.id, None, 10)
            .await
            .unwrap()
            .0
            .is_empty()
    );
    assert_eq!(
        store
            .list_batch_errors(tenant, p, other.id, None, 10)
            .await
            .unwrap()
            .0
            .len(),
        1
    );

    // Many errors go in chunks, in one call.
    let many: Vec<NewBatchError> = (0..1_234).map(error_at).collect();
    store.insert_batch_errors(batch.id, &many).await.unwrap();
    let mut count = 0;
    let mut after = None;
    loop {
        let (page, next) = store
            .list_batch_errors(tenant, p, batch.id, after, 500)
            .await
            .unwrap();
        count += page.len();
        after = next;
        if after.is_none() {
            break;
        }
    }
    assert_eq!(count, 1_234);
    // Several errors of one record (a split record failing twice) are
    // never cut apart by a page boundary, so none is skipped.
    let repeated = store.create_batch(new_batch(tenant, p, 1)).await.unwrap();
    let indexes = [0_i64, 1, 1, 1, 2, 3, 3];
    let errors: Vec<NewBatchError> = indexes.iter().map(|i| error_at(*i)).collect();
    store
        .insert_batch_errors(repeated.id, &errors)
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let (page, next) = store
            .list_batch_errors(tenant, p, repeated.id, after, 2)
            .await
            .unwrap();
        seen.extend(page.iter().map(|e| e.record_index));
        after = next;
        if after.is_none() {
            break;
        }
    }
    assert_eq!(seen, indexes);

    // Unknown batch.
    let missing = store
        .list_batch_errors(tenant, p, Uuid::now_v7(), None, 10)
        .await;
    assert!(matches!(missing, Err(StoreError::NotFound)), "{missing:?}");
}

async fn delete_pipeline_refuses_while_batches_are_active(store: Arc<dyn Store>) {
    let (tenant, p) = tenant_with_pipeline(&store, PipelineStatus::Active).await;
    let keep = pipeline(&store, tenant, PipelineStatus::Paused).await;
    let kept_batch = store
        .create_batch(new_batch(tenant, keep, 1))
        .await
        .unwrap();
    store
        .update_pipeline(tenant, p, "v2", &config(5), None)
        .await
        .unwrap();
    let batch = store.create_batch(new_batch(tenant, p, 1)).await.unwrap();

    let pending = store.delete_pipeline(tenant, p).await;
    assert!(
        matches!(pending, Err(StoreError::HasActiveBatches)),
        "{pending:?}"
    );
    store.claim_batch("w", LONG).await.unwrap().unwrap();
    let processing = store.delete_pipeline(tenant, p).await;
    assert!(
        matches!(processing, Err(StoreError::HasActiveBatches)),
        "{processing:?}"
    );
    assert!(
        store.get_pipeline(tenant, p).await.unwrap().is_some(),
        "refusal kept it"
    );

    let outcome = BatchOutcome {
        status: BatchStatus::Completed,
        succeeded_count: 9,
        failed_count: 1,
        error: None,
    };
    assert!(store.finish_batch(batch.id, "w", &outcome).await.unwrap());
    store
        .insert_batch_errors(batch.id, &[error_at(4)])
        .await
        .unwrap();

    let keys = store.delete_pipeline(tenant, p).await.unwrap();
    assert_eq!(keys, vec![batch.payload_key.clone()]);
    assert_eq!(store.get_pipeline(tenant, p).await.unwrap(), None);
    assert_eq!(store.get_batch(tenant, p, batch.id).await.unwrap(), None);
    assert_eq!(store.get_pipeline_version(p, 1).await.unwrap(), None);
    let again = store.delete_pipeline(tenant, p).await;
    assert!(matches!(again, Err(StoreError::NotFound)), "{again:?}");
    // The tenant's other pipeline is untouched.
    assert_eq!(
        store.get_batch(tenant, keep, kept_batch.id).await.unwrap(),
        Some(kept_batch)
    );
}

async fn stats_and_queue_numbers(store: Arc<dyn Store>) {
    let (tenant, p) = tenant_with_pipeline(&store, PipelineStatus::Active).await;
    let empty = store.pipeline_stats(tenant, p).await.unwrap();
    assert_eq!(empty, Default::default());

    let outcomes = [
        (BatchStatus::Completed, 8, 2),
        (BatchStatus::Completed, 5, 0),
        (BatchStatus::Failed, 0, 4),
    ];
    for (status, succeeded, failed) in outcomes {
        store
            .create_batch(new_batch(tenant, p, 1_000))
            .await
            .unwrap();
        let batch = store.claim_batch("w", LONG).await.unwrap().unwrap();
        let outcome = BatchOutcome {
            status,
            succeeded_count: succeeded,
            failed_count: failed,
            error: None,
        };
        assert!(store.finish_batch(batch.id, "w", &outcome).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    // One processing (300 bytes) and two pending (100 + 200 bytes).
    store.create_batch(new_batch(tenant, p, 300)).await.unwrap();
    store.claim_batch("w", LONG).await.unwrap().unwrap();
    store.create_batch(new_batch(tenant, p, 100)).await.unwrap();
    store.create_batch(new_batch(tenant, p, 200)).await.unwrap();
    // Another pipeline of the same tenant, and another tenant.
    let paused = pipeline(&store, tenant, PipelineStatus::Paused).await;
    store
        .create_batch(new_batch(tenant, paused, 50))
        .await
        .unwrap();
    let (other_tenant, other_p) = tenant_with_pipeline(&store, PipelineStatus::Paused).await;
    store
        .create_batch(new_batch(other_tenant, other_p, 7))
        .await
        .unwrap();

    let stats = store.pipeline_stats(tenant, p).await.unwrap();
    assert_eq!(
        stats.records_processed, 13,
        "succeeded records of completed batches"
    );
    assert_eq!(stats.records_failed, 6);
    assert_eq!(stats.queue_batches, 3);
    assert_eq!(stats.queue_bytes, 600);
    let last_run = stats.last_run_at.unwrap();
    assert!((Utc::now() - last_run).num_seconds().abs() < 60);
    assert_eq!(stats.recent_latencies_ms.len(), 2, "completed batches only");
    assert!(
        stats
            .recent_latencies_ms
            .iter()
            .all(|ms| (0..60_000).contains(ms))
    );

    assert_eq!(store.queued_bytes(tenant, p).await.unwrap(), (600, 650));
    assert_eq!(store.queued_bytes(tenant, paused).await.unwrap(), (50, 650));
    assert_eq!(
        store.queued_bytes(other_tenant, other_p).await.unwrap(),
        (7, 7)
    );

    let mut depths = store.queue_depths().await.unwrap();
    depths.sort_by_key(|d| d.bytes);
    let summary: Vec<(Uuid, Uuid, i64, i64)> = depths
        .iter()
        .map(|d| (d.tenant_id, d.pipeline_id, d.batches, d.bytes))
        .collect();
    assert_eq!(
        summary,
        vec![
            (other_tenant, other_p, 1, 7),
            (tenant, paused, 1, 50),
            (tenant, p, 3, 600),
        ]
    );
}

async fn audit_trail_is_scoped_and_paginated(store: Arc<dyn Store>) {
    let t1 = store.create_tenant("one").await.unwrap().id;
    let t2 = store.create_tenant("two").await.unwrap().id;
    let actor = store
        .create_api_key(new_key(t1, Role::Admin))
        .await
        .unwrap()
        .id;
    let mut made = Vec::new();
    for n in 0..5 {
        let event = store
            .append_audit(NewAuditEvent {
                tenant_id: t1,
                actor_key_id: Some(actor),
                action: "pipeline.update".into(),
                target: Some(format!("pipeline:{n}")),
                request_id: Some(format!("req-{n}")),
                client_addr: Some("203.0.113.9".into()),
                details: json!({"version": n}),
            })
            .await
            .unwrap();
        made.push(event);
    }
    store
        .append_audit(NewAuditEvent {
            tenant_id: t2,
            actor_key_id: None,
            action: "auth.failure".into(),
            target: None,
            request_id: None,
            client_addr: None,
            details: json!({}),
        })
        .await
        .unwrap();
    assert_eq!(made[0].action, "pipeline.update");
    assert_eq!(made[0].details, json!({"version": 0}));
    assert_eq!(made[0].actor_key_id, Some(actor));

    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_audit(t1, &AuditFilter::default(), after, 2)
            .await
            .unwrap();
        seen.extend(page.items);
        after = page.next_cursor;
        if after.is_none() {
            break;
        }
    }
    let expected: Vec<_> = made.iter().rev().cloned().collect();
    assert_eq!(seen, expected);
    let other = store
        .list_audit(t2, &AuditFilter::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(other.items.len(), 1);
    assert_eq!(other.items[0].action, "auth.failure");

    let orphan = store
        .append_audit(NewAuditEvent {
            tenant_id: Uuid::now_v7(),
            actor_key_id: None,
            action: "x".into(),
            target: None,
            request_id: None,
            client_addr: None,
            details: json!(null),
        })
        .await;
    assert!(matches!(orphan, Err(StoreError::NotFound)), "{orphan:?}");
}

/// API writes and reads racing with workers: nothing fails (no
/// `SQLITE_BUSY`, no deadlock) and every batch completes exactly once.
async fn mixed_api_and_worker_load_never_fails(store: Arc<dyn Store>) {
    const API_TASKS: usize = 6;
    const PER_TASK: usize = 25;
    const TOTAL: usize = API_TASKS * PER_TASK;
    let (tenant, p) = tenant_with_pipeline(&store, PipelineStatus::Active).await;
    let finished = Arc::new(AtomicUsize::new(0));
    let mut api = Vec::new();
    for task in 0..API_TASKS {
        let store = store.clone();
        api.push(tokio::spawn(async move {
            for n in 0..PER_TASK {
                let mut batch = new_batch(tenant, p, 10);
                batch.idempotency_key = Some(format!("{task}-{n}"));
                store.create_batch(batch).await.unwrap();
                if n % 5 == 0 {
                    store
                        .append_audit(NewAuditEvent {
                            tenant_id: tenant,
                            actor_key_id: None,
                            action: "batch.create".into(),
                            target: None,
                            request_id: None,
                            client_addr: None,
                            details: json!({"n": n}),
                        })
                        .await
                        .unwrap();
                    store.pipeline_stats(tenant, p).await.unwrap();
                    store.list_batches(tenant, p, None, None, 20).await.unwrap();
                    store.queued_bytes(tenant, p).await.unwrap();
                }
            }
        }));
    }
    let mut workers = Vec::new();
    for worker in 0..4 {
        let store = store.clone();
        let finished = finished.clone();
        workers.push(tokio::spawn(async move {
            let name = format!("w{worker}");
            let mut mine = 0;
            while finished.load(Ordering::SeqCst) < TOTAL {
                let Some(batch) = store.claim_batch(&name, LONG).await.unwrap() else {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                };
                assert!(store.renew_lease(batch.id, &name, LONG).await.unwrap());
                store.clear_batch_errors(batch.id).await.unwrap();
                store
                    .insert_batch_errors(batch.id, &[error_at(1), error_at(2)])
                    .await
                    .unwrap();
                let outcome = BatchOutcome {
                    status: BatchStatus::Completed,
                    succeeded_count: 8,
                    failed_count: 2,
                    error: None,
                };
                assert!(store.finish_batch(batch.id, &name, &outcome).await.unwrap());
                finished.fetch_add(1, Ordering::SeqCst);
                mine += 1;
            }
            mine
        }));
    }
    let run = async {
        for task in api {
            task.await.unwrap();
        }
        let mut total = 0;
        for task in workers {
            total += task.await.unwrap();
        }
        total
    };
    let total = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the load finishes");
    assert_eq!(total, TOTAL);
    let stats = store.pipeline_stats(tenant, p).await.unwrap();
    assert_eq!(stats.records_processed, 8 * TOTAL as i64);
    assert_eq!(stats.records_failed, 2 * TOTAL as i64);
    assert_eq!(stats.queue_batches, 0);
    assert_eq!(stats.recent_latencies_ms.len(), TOTAL);
}

// ---- migrations, per backend ----

async fn revert_and_reapply(url: &str) {
    let store = sluice_store::connect(url, true).await.unwrap();
    store.create_tenant("before").await.unwrap();
    drop(store);
    sluice_store::revert_to(url, 0).await.unwrap();
    let store = sluice_store::connect(url, false).await.unwrap();
    assert!(store.list_tenants().await.is_err(), "schema is gone");
    drop(store);
    let store = sluice_store::connect(url, true).await.unwrap();
    assert!(
        store.list_tenants().await.unwrap().is_empty(),
        "schema is back, empty"
    );
    // Migrating an up-to-date database is a no-op.
    let again = sluice_store::connect(url, true).await.unwrap();
    again.create_tenant("after").await.unwrap();
    assert_eq!(store.list_tenants().await.unwrap().len(), 1);
}

#[tokio::test]
async fn sqlite_migrations_revert_and_reapply() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("m.db").display());
    revert_and_reapply(&url).await;
}

#[tokio::test]
async fn postgres_migrations_revert_and_reapply() {
    let Some(base) = sluice_store::testing::test_database_url() else {
        eprintln!("SLUICE_TEST_DATABASE_URL is not set: PostgreSQL case not run");
        return;
    };
    let url = sluice_store::testing::fresh_postgres_url(&base)
        .await
        .expect("SLUICE_TEST_DATABASE_URL is set, so PostgreSQL must be reachable");
    let outcome = tokio::spawn(async move {
        revert_and_reapply(&url).await;
        url
    })
    .await;
    match outcome {
        Ok(url) => drop_postgres_database(&url).await.unwrap(),
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
}

// ---- security at rest (issue 7) ----

fn audit_event(tenant_id: Uuid, action: &str, n: i64) -> NewAuditEvent {
    NewAuditEvent {
        tenant_id,
        actor_key_id: None,
        action: action.into(),
        target: Some(format!("pipeline:{n}")),
        request_id: Some(format!("req-{n}")),
        client_addr: Some("203.0.113.9".into()),
        details: json!({"n": n, "nested": {"z": 1, "a": [1, 2, {"y": true, "b": null}]}}),
    }
}

async fn audit_chain_links_every_event(store: Arc<dyn Store>) {
    let t = store.create_tenant("chained").await.unwrap().id;
    let mut made = Vec::new();
    for n in 0..5 {
        made.push(
            store
                .append_audit(audit_event(t, "pipeline.update", n))
                .await
                .unwrap(),
        );
    }
    assert_eq!(made[0].seq, Some(1));
    assert_eq!(
        made[0].prev_hash.as_deref(),
        Some(sluice_store::GENESIS_HASH)
    );
    for pair in made.windows(2) {
        assert_eq!(pair[1].seq, pair[0].seq.map(|s| s + 1));
        assert_eq!(pair[1].prev_hash, pair[0].hash);
    }
    // What is read back hashes to what was written (key order, times and
    // JSON round trips of both backends included).
    let chain = store.audit_chain(Some(t), 0, 100).await.unwrap();
    assert_eq!(chain, made);
    assert_eq!(
        sluice_store::verify_audit_chain(None, &chain).unwrap(),
        Some((5, made[4].hash.clone().unwrap()))
    );
    // Paging through the chain continues from a seq.
    let tail = store.audit_chain(Some(t), 3, 100).await.unwrap();
    assert_eq!(tail, made[3..].to_vec());
    assert!(
        sluice_store::verify_audit_chain(Some((3, made[2].hash.clone().unwrap())), &tail).is_ok()
    );
    // Any change to a row's contents breaks it at that row.
    let mut forged = chain.clone();
    forged[2].details = json!({"n": 99});
    let broken = sluice_store::verify_audit_chain(None, &forged).unwrap_err();
    assert_eq!(broken.id, made[2].id);
    let mut dropped = chain.clone();
    dropped.remove(1);
    let broken = sluice_store::verify_audit_chain(None, &dropped).unwrap_err();
    assert_eq!(broken.id, made[2].id);
    // Another tenant's chain starts at 1.
    let u = store.create_tenant("other").await.unwrap().id;
    let first = store.append_audit(audit_event(u, "x", 0)).await.unwrap();
    assert_eq!(first.seq, Some(1));
}

async fn concurrent_audit_appends_keep_one_chain(store: Arc<dyn Store>) {
    let t = store.create_tenant("busy").await.unwrap().id;
    let mut tasks = Vec::new();
    for w in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..10 {
                store
                    .append_audit(audit_event(t, "key.create", w * 100 + n))
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let chain = store.audit_chain(Some(t), 0, 1000).await.unwrap();
    assert_eq!(chain.len(), 80);
    assert!(sluice_store::verify_audit_chain(None, &chain).is_ok());
}

async fn audit_filters_combine(store: Arc<dyn Store>) {
    let t = store.create_tenant("filtered").await.unwrap().id;
    let actor = store
        .create_api_key(new_key(t, Role::Admin))
        .await
        .unwrap()
        .id;
    let start = Utc::now() - ChronoDuration::seconds(5);
    for n in 0..3 {
        let mut e = audit_event(
            t,
            if n == 1 {
                "key.revoke"
            } else {
                "pipeline.update"
            },
            n,
        );
        e.actor_key_id = (n > 0).then_some(actor);
        store.append_audit(e).await.unwrap();
    }
    let list = |filter: AuditFilter| {
        let store = store.clone();
        async move {
            store
                .list_audit(t, &filter, None, 50)
                .await
                .unwrap()
                .items
                .into_iter()
                .map(|e| e.action)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list(AuditFilter::default()).await.len(), 3);
    assert_eq!(
        list(AuditFilter {
            action: Some("key.revoke".into()),
            ..AuditFilter::default()
        })
        .await,
        vec!["key.revoke"]
    );
    assert_eq!(
        list(AuditFilter {
            actor_key_id: Some(actor),
            action: Some("pipeline.update".into()),
            ..AuditFilter::default()
        })
        .await
        .len(),
        1
    );
    assert_eq!(
        list(AuditFilter {
            since: Some(start),
            until: Some(Utc::now() + ChronoDuration::seconds(5)),
            ..AuditFilter::default()
        })
        .await
        .len(),
        3
    );
    assert!(
        list(AuditFilter {
            until: Some(start),
            ..AuditFilter::default()
        })
        .await
        .is_empty()
    );
}

async fn system_chain_outlives_tenants(store: Arc<dyn Store>) {
    let t = store.create_tenant("gone").await.unwrap().id;
    store.append_audit(audit_event(t, "x", 1)).await.unwrap();
    let a = store
        .append_system_audit(audit_event(Uuid::nil(), "master_key.rotate", 1))
        .await
        .unwrap();
    store.erase_tenant(t).await.unwrap();
    let b = store
        .append_system_audit(audit_event(t, "tenant.erase", 2))
        .await
        .unwrap();
    assert_eq!((a.seq, b.seq), (Some(1), Some(2)));
    let chain = store.audit_chain(None, 0, 10).await.unwrap();
    assert_eq!(chain, vec![a, b]);
    assert!(sluice_store::verify_audit_chain(None, &chain).is_ok());
    assert!(store.audit_chain(Some(t), 0, 10).await.unwrap().is_empty());
}

async fn rotation_scans_and_rewrites_stored_values(store: Arc<dyn Store>) {
    let (t, p) = tenant_with_pipeline(&store, PipelineStatus::Active).await;
    store
        .update_pipeline(t, p, "v2", &config(2), None)
        .await
        .unwrap();
    let (u, q) = tenant_with_pipeline(&store, PipelineStatus::Active).await;
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.scan_pipeline_versions(after, 2).await.unwrap();
        let Some((_, last)) = page.last() else { break };
        after = Some((last.pipeline_id, last.version));
        seen.extend(
            page.into_iter()
                .map(|(tenant, v)| (tenant, v.pipeline_id, v.version)),
        );
    }
    let mut expected = vec![(t, p, 1), (t, p, 2), (u, q, 1)];
    expected.sort_by_key(|(_, p, v)| (*p, *v));
    assert_eq!(seen, expected);
    store
        .reencrypt_pipeline_version(p, 1, &json!({"rewritten": true}))
        .await
        .unwrap();
    let (versions, _) = store.list_pipeline_versions(t, p, None, 10).await.unwrap();
    assert_eq!(versions[1].config, json!({"rewritten": true}));
    assert_eq!(versions[0].config, config(2));
    assert!(matches!(
        store.reencrypt_pipeline_version(p, 9, &json!({})).await,
        Err(StoreError::NotFound)
    ));

    let batch = store.create_batch(new_batch(t, p, 10)).await.unwrap();
    store
        .insert_batch_errors(batch.id, &[error_at(0), error_at(1)])
        .await
        .unwrap();
    let all = store.scan_batch_errors(None, 1).await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].0, t);
    let rest = store
        .scan_batch_errors(Some(all[0].1.id), 10)
        .await
        .unwrap();
    assert_eq!(rest.len(), 1);
    store
        .reencrypt_batch_error(all[0].1.id, &json!("sealed"))
        .await
        .unwrap();
    let (errors, _) = store
        .list_batch_errors(t, p, batch.id, None, 10)
        .await
        .unwrap();
    assert_eq!(errors[0].record, json!("sealed"));
    assert_eq!(errors[1].record, error_at(1).record);
}

async fn finish(store: &Arc<dyn Store>, status: BatchStatus) -> Option<Uuid> {
    let batch = store.claim_batch("w", LONG).await.unwrap()?;
    assert!(
        store
            .finish_batch(
                batch.id,
                "w",
                &BatchOutcome {
                    status,
                    succeeded_count: 1,
                    failed_count: 0,
                    error: None,
                },
            )
            .await
            .unwrap()
    );
    Some(batch.id)
}

async fn retention_deletes_only_expired_finished_batches(store: Arc<dyn Store>) {
    let (t, p) = tenant_with_pipeline(&store, PipelineStatus::Active).await;
    let done = store.create_batch(new_batch(t, p, 10)).await.unwrap();
    assert_eq!(finish(&store, BatchStatus::Completed).await, Some(done.id));
    let failed = store.create_batch(new_batch(t, p, 10)).await.unwrap();
    assert_eq!(finish(&store, BatchStatus::Failed).await, Some(failed.id));
    store
        .insert_batch_errors(failed.id, &[error_at(0)])
        .await
        .unwrap();
    let waiting = store.create_batch(new_batch(t, p, 10)).await.unwrap();
    let now = Utc::now();
    let later = now + ChronoDuration::days(1);

    // Nothing finished before `now - 1 day`.
    let past = now - ChronoDuration::days(1);
    assert!(
        store
            .purge_payloads_before(past, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.delete_batch_errors_before(past, 10).await.unwrap(), 0);
    assert_eq!(store.delete_batches_before(past, 10).await.unwrap().0, 0);

    // Payloads: finished batches only, once, in bounded rounds.
    let first = store.purge_payloads_before(later, 1).await.unwrap();
    let second = store.purge_payloads_before(later, 10).await.unwrap();
    let mut purged: Vec<String> = first.into_iter().chain(second).collect();
    purged.sort();
    let mut expected = vec![done.payload_key.clone(), failed.payload_key.clone()];
    expected.sort();
    assert_eq!(purged, expected);
    assert!(
        store
            .purge_payloads_before(later, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // A batch whose payload is gone cannot be retried.
    assert!(matches!(
        store.retry_batch(t, p, failed.id).await,
        Err(StoreError::InvalidState(m)) if m.contains("expired")
    ));

    assert_eq!(
        store.delete_batch_errors_before(later, 10).await.unwrap(),
        1
    );
    let (rows, keys) = store.delete_batches_before(later, 10).await.unwrap();
    assert_eq!(rows, 2);
    assert!(keys.is_empty(), "their payloads were already purged");
    assert!(store.get_batch(t, p, done.id).await.unwrap().is_none());
    assert!(store.get_batch(t, p, failed.id).await.unwrap().is_none());
    let kept = store.get_batch(t, p, waiting.id).await.unwrap().unwrap();
    assert_eq!(kept.status, BatchStatus::Pending);

    // A batch deleted before its payload was purged hands the key back.
    let another = store.create_batch(new_batch(t, p, 10)).await.unwrap();
    // The waiting batch is older, so it is claimed first; finish both.
    finish(&store, BatchStatus::Completed).await.unwrap();
    finish(&store, BatchStatus::Completed).await.unwrap();
    let (rows, mut keys) = store.delete_batches_before(later, 10).await.unwrap();
    keys.sort();
    let mut expected = vec![waiting.payload_key.clone(), another.payload_key.clone()];
    expected.sort();
    assert_eq!((rows, keys), (2, expected));
}

async fn erase_tenant_removes_every_row_of_the_tenant(store: Arc<dyn Store>) {
    let (t, p) = tenant_with_pipeline(&store, PipelineStatus::Active).await;
    let new = new_key(t, Role::Admin);
    let hash = new.secret_hash.clone();
    let key = store.create_api_key(new).await.unwrap();
    store
        .update_pipeline(t, p, "v2", &config(3), Some(key.id))
        .await
        .unwrap();
    let batch = store.create_batch(new_batch(t, p, 10)).await.unwrap();
    store
        .insert_batch_errors(batch.id, &[error_at(0)])
        .await
        .unwrap();
    store.append_audit(audit_event(t, "x", 0)).await.unwrap();
    let (u, q) = tenant_with_pipeline(&store, PipelineStatus::Active).await;
    let kept = store.create_batch(new_batch(u, q, 10)).await.unwrap();
    store.append_audit(audit_event(u, "y", 0)).await.unwrap();

    let keys = store.erase_tenant(t).await.unwrap();
    assert_eq!(keys, vec![batch.payload_key.clone()]);
    assert!(store.get_tenant(t).await.unwrap().is_none());
    assert!(store.list_api_keys(t).await.unwrap().is_empty());
    assert!(store.find_api_key_by_hash(&hash).await.unwrap().is_none());
    assert!(store.get_pipeline_version(p, 1).await.unwrap().is_none());
    assert!(store.scan_batch_errors(None, 100).await.unwrap().is_empty());
    assert!(store.audit_chain(Some(t), 0, 10).await.unwrap().is_empty());
    assert!(
        store
            .scan_pipeline_versions(None, 100)
            .await
            .unwrap()
            .iter()
            .all(|(tenant, _)| *tenant == u)
    );
    assert!(matches!(
        store.erase_tenant(t).await,
        Err(StoreError::NotFound)
    ));
    // The other tenant is untouched.
    assert!(store.get_batch(u, q, kept.id).await.unwrap().is_some());
    assert_eq!(store.audit_chain(Some(u), 0, 10).await.unwrap().len(), 1);
}

async fn pipelines_can_be_created_with_a_chosen_id(store: Arc<dyn Store>) {
    let t = store.create_tenant("chosen").await.unwrap().id;
    let id = Uuid::now_v7();
    let p = store
        .create_pipeline_with_id(id, t, "mine", &config(1), PipelineStatus::Paused, None)
        .await
        .unwrap();
    assert_eq!(p.id, id);
    assert_eq!(
        store.get_pipeline(t, id).await.unwrap().unwrap().name,
        "mine"
    );
    let again = store
        .create_pipeline_with_id(id, t, "dup", &config(1), PipelineStatus::Paused, None)
        .await;
    assert!(again.is_err());
}
