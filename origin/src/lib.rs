//! The profile origin: the source of truth, an embedded SQLite database
//! seeded with demo profiles.
//!
//! It counts its reads, so tests (and metrics) can tell a cache hit from a
//! trip to the origin, and can add a fixed latency to behave like a remote
//! service.

use prometheus_client::metrics::counter::Counter;
use rusqlite::{Connection, OptionalExtension, params};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;

/// The profiles a fresh origin starts with (the README lists them).
pub const DEMO_PROFILES: &[(&str, &str)] = &[
    (
        "alice",
        r#"{"id":"alice","name":"Alice Liddell","plan":"pro","country":"GB"}"#,
    ),
    ("bob", r#"{"id":"bob","name":"Bob Dobbs","plan":"free","country":"US"}"#),
    (
        "carol",
        r#"{"id":"carol","name":"Carol Danvers","plan":"team","country":"US"}"#,
    ),
];

/// Creates or replaces one profile.
const UPSERT: &str =
    "INSERT INTO profiles (id, profile) VALUES (?1, ?2) ON CONFLICT(id) DO UPDATE SET profile = excluded.profile";

#[derive(Debug, Clone, Default)]
pub struct OriginConfig {
    /// A SQLite file to keep profiles in; `None` keeps them in memory.
    pub database: Option<PathBuf>,
    /// Added to every origin call, to mimic a remote service.
    pub latency: Duration,
}

#[derive(Debug, Error)]
pub enum OriginError {
    #[error("origin database error: {0}")]
    Database(#[from] rusqlite::Error),
    #[error("invalid profile: {0}")]
    InvalidProfile(String),
    #[error("origin task failed: {0}")]
    Task(String),
}

#[derive(Clone)]
pub struct Origin {
    inner: Arc<Inner>,
}

struct Inner {
    db: Mutex<Connection>,
    reads: Counter,
    latency: Duration,
}

impl Origin {
    /// Opens (or creates) the profile store and seeds the demo profiles into
    /// an empty one.
    pub fn open(config: &OriginConfig) -> Result<Self, OriginError> {
        let db = match &config.database {
            Some(path) => Connection::open(path)?,
            None => Connection::open_in_memory()?,
        };
        db.execute_batch("CREATE TABLE IF NOT EXISTS profiles (id TEXT PRIMARY KEY, profile TEXT NOT NULL)")?;
        let count: i64 = db.query_row("SELECT COUNT(*) FROM profiles", [], |row| row.get(0))?;
        if count == 0 {
            for (id, profile) in DEMO_PROFILES {
                db.execute(
                    "INSERT INTO profiles (id, profile) VALUES (?1, ?2)",
                    params![id, profile],
                )?;
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                db: Mutex::new(db),
                reads: Counter::default(),
                latency: config.latency,
            }),
        })
    }

    /// How many times `fetch` has been called.
    pub fn reads(&self) -> u64 {
        self.inner.reads.get()
    }

    /// The read counter, for metrics.
    pub fn read_counter(&self) -> &Counter {
        &self.inner.reads
    }

    pub async fn fetch(&self, id: &str) -> Result<Option<String>, OriginError> {
        self.inner.reads.inc();
        let id = id.to_owned();
        self.blocking(move |db| {
            Ok(db
                .query_row("SELECT profile FROM profiles WHERE id = ?1", [id], |row| row.get(0))
                .optional()?)
        })
        .await
    }

    /// Stores `profile` (a JSON object) under `id`; true when it was new.
    pub async fn update(&self, id: &str, profile: &str) -> Result<bool, OriginError> {
        let value: serde_json::Value =
            serde_json::from_str(profile).map_err(|e| OriginError::InvalidProfile(format!("not valid JSON: {e}")))?;
        if !value.is_object() {
            return Err(OriginError::InvalidProfile("a profile must be a JSON object".into()));
        }
        let (id, profile) = (id.to_owned(), profile.to_owned());
        self.blocking(move |db| {
            let transaction = db.transaction()?;
            let existed = transaction
                .query_row("SELECT 1 FROM profiles WHERE id = ?1", [&id], |_| Ok(()))
                .optional()?;
            transaction.execute(UPSERT, params![id, profile])?;
            transaction.commit()?;
            Ok(existed.is_none())
        })
        .await
    }

    /// Stores many profiles in one transaction, replacing any with the same
    /// id (loading a dataset, e.g. for benchmarks). Returns how many were
    /// stored. Blocks: call it before serving, or from a blocking task.
    pub fn import<I, P>(&self, profiles: I) -> Result<usize, OriginError>
    where
        I: IntoIterator<Item = (String, P)>,
        P: AsRef<str>,
    {
        let mut db = self.inner.db.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let transaction = db.transaction()?;
        let mut stored = 0;
        {
            let mut insert = transaction.prepare(UPSERT)?;
            for (id, profile) in profiles {
                let profile = profile.as_ref();
                match serde_json::from_str::<serde_json::Value>(profile) {
                    Ok(value) if value.is_object() => {}
                    _ => return Err(OriginError::InvalidProfile(format!("{id}: not a JSON object"))),
                }
                insert.execute(params![id, profile])?;
                stored += 1;
            }
        }
        transaction.commit()?;
        Ok(stored)
    }

    /// Runs a database call off the async workers, after the simulated latency.
    async fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce(&mut Connection) -> Result<T, OriginError> + Send + 'static,
    ) -> Result<T, OriginError> {
        if !self.inner.latency.is_zero() {
            tokio::time::sleep(self.inner.latency).await;
        }
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut db = inner.db.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            call(&mut db)
        })
        .await
        .map_err(|e| OriginError::Task(e.to_string()))?
    }
}
