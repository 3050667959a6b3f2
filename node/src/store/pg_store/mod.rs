//! PostgreSQL as a region's store, for regions that outlive their machine: several node replicas
//! over one database, which a synchronous standby and failover keep (deploy/README.md).
//!
//! Tables (`node/migrations/`): `region_head` (one row that every write locks first), `subjects`,
//! `subject_keys` (data keys wrapped under the region's KEK, `keys.rs`), `links`, `consent`,
//! `current_consent`, `interactions`, `rights_requests`, `events` (and `retired_subjects`: a gone
//! subject's events go with it, `retire.rs`), `claims`, `held`, `releases`, `idempotency`, `audit`.
//! Sealed values are those of the embedded store (`store::codec`), so a
//! value means the same in either engine.
//!
//! **One truth across replicas.** Every write is one transaction that first locks `region_head`
//! (`SELECT … FOR UPDATE`): writes of all replicas are serialised, so a check such as "no subject
//! holds this link" holds until commit, change-event sequences and the audit chain follow commit
//! order (a watcher resuming after N never misses a smaller sequence committed later), and the
//! change, its events and its audit entries commit together (`unit.rs`). Decisions read through a
//! cache, and the statement that stores their audit entries checks them against the subjects
//! touched by writes committed before it (`fresh.rs`): a decision that read a value a write
//! acknowledged before it arrived has changed is made again, so a withdrawal acknowledged through
//! one replica is what the next decision on any replica answers. A commit is durable
//! (`synchronous_commit = on`), so `flush` has nothing left to do.
//!
//! The write methods live by capability as in the embedded store: `identity.rs` (register,
//! rectify, merge, erase, dropped links), `records.rs` (consent, interactions, rights requests,
//! restriction, and the reads decisions make), `claims.rs` (claims, releases, idempotency);
//! `batch.rs` group-commits consent writes, `fresh.rs` keeps the decision cache exact,
//! `decisions.rs` stores decisions' audit entries (checking them against the cache's mark) and
//! chains them.

mod batch;
mod claims;
mod decisions;
mod follow;
mod fresh;
mod identity;
mod imports;
mod keys;
mod prepared;
mod records;
mod retire;
mod store;
mod tracked;
mod unit;
mod unmerge;

use std::path::PathBuf;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use domicile_types::{RegionId, SubjectId};

pub use keys::Keks;
use prepared::Prepared as _;
use unit::Write;

use super::StoreError;
use super::vault::SubjectKey;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Where a region's PostgreSQL database is and how to reach it (`[store]` of the node file).
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PgConfig {
    /// `postgres://user@host:port/database`, without a password (refused: a URL ends up in
    /// logs and process listings).
    pub url: String,
    /// File holding the role's password (first line); or `password_env`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the role's password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// Connections this node keeps (default 16).
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// The region's key-encryption keys (created on first start). Every replica of the region
    /// reads the same file.
    pub kek_file: PathBuf,
    /// PEM file of the CA that signed the database server's certificate: TLS to the database,
    /// verified (absent: no TLS, for a database on the same host or private network only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
}

fn default_pool_size() -> usize {
    16
}

/// A store error from PostgreSQL, without the server's message: it can quote the values of a
/// statement (a key that violates a constraint, say), and those are not for logs.
pub(super) fn pg(e: tokio_postgres::Error) -> StoreError {
    match e.code() {
        Some(code) => StoreError::Backend(format!("postgres error {}", code.code())),
        None if e.is_closed() => StoreError::Backend("postgres connection closed".into()),
        None => StoreError::Backend("postgres unavailable".into()),
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg(e),
        _ => StoreError::Backend("postgres pool unavailable".into()),
    }
}

fn subject_id(bytes: &[u8]) -> Result<SubjectId, StoreError> {
    SubjectId::from_slice(bytes).map_err(|_| StoreError::Corrupt("subject id".into()))
}

/// `u64` ↔ `bigint`: every sequence, position and generation stays far below 2^63.
fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn uint(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt("negative counter".into()))
}

#[derive(Debug)]
pub struct PgStore {
    pool: Pool,
    region: RegionId,
    keks: std::sync::Arc<Keks>,
    /// The writer task that group-commits consent writes (`batch.rs`).
    consents: batch::ConsentWriter,
    /// Decision entries waiting for the next audit write (`follow.rs`).
    decisions: decisions::DecisionAudits,
    /// Decision inputs and link holders read before, kept exact by `fresh`.
    cache: super::read_cache::ReadCache,
    links: super::read_cache::LinkCache,
    fresh: fresh::Fresh,
    /// This node's writes at the region head, one at a time (`unit.rs`).
    turns: unit::Turns,
}

impl PgStore {
    /// Connects, applies the schema migrations this build knows, and checks the database is this
    /// region's. A database whose schema is newer than this build knows is refused, as is one
    /// that belongs to another region.
    pub async fn open(config: &PgConfig, region: &RegionId) -> Result<Self, StoreError> {
        let mut pg_config: tokio_postgres::Config =
            config.url.parse().map_err(|_| StoreError::Backend("`store.url` is not a PostgreSQL URL".into()))?;
        if pg_config.get_password().is_some() {
            return Err(StoreError::Backend(
                "`store.url` holds a password: give it in `password_file` or `password_env` instead".into(),
            ));
        }
        if let Some(password) = password(config)? {
            pg_config.password(password);
        }
        let manager_config = ManagerConfig { recycling_method: RecyclingMethod::Fast };
        let manager = match &config.tls_ca_file {
            None => Manager::from_config(pg_config, tokio_postgres::NoTls, manager_config),
            Some(ca) => Manager::from_config(pg_config, tls(ca)?, manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(2))
            .build()
            .map_err(|_| StoreError::Backend("postgres pool".into()))?;
        let keks = std::sync::Arc::new(Keks::load_or_create(&config.kek_file)?);
        let turns = unit::Turns::default();
        let mut store = Self {
            pool: pool.clone(),
            region: region.clone(),
            consents: batch::ConsentWriter::start(pool.clone(), keks.clone(), region.clone(), turns.clone()),
            keks,
            decisions: decisions::DecisionAudits::default(),
            cache: super::read_cache::ReadCache::default(),
            links: super::read_cache::LinkCache::default(),
            fresh: fresh::Fresh::default(),
            turns,
        };
        store.migrate().await?;
        let head = store
            .client()
            .await?
            .query_one_cached("SELECT touch_seq FROM region_head WHERE id = 1", &[])
            .await
            .map_err(pg)?;
        store.fresh = fresh::Fresh::at(uint(head.get(0))?);
        tokio::spawn(decisions::chainer(store.pool.clone(), store.region.clone(), store.turns.clone()));
        tokio::spawn(imports::classify(store.pool.clone(), store.keks.clone()));
        tokio::spawn(retire::index_events(store.pool.clone()));
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        // On a task of its own: refinery panics on a history row it cannot read, and that must
        // be a refusal to start, not a crash.
        let pool = self.pool.clone();
        let migrated = tokio::spawn(async move {
            // Taken out of the pool: it carries session settings, and is closed when done.
            let mut client = deadpool_postgres::Object::take(pool.get().await.map_err(pool_error)?);
            let client: &mut tokio_postgres::Client = &mut client;
            // Several replicas may start at once: one migrates, the others wait for its lock. A
            // migration's transaction can lock whole tables: a node stopped in the middle of one
            // must not hold them for longer than a write may (`unit.rs`). (Stopped between two
            // migrations, it still holds the migration lock, which only other nodes starting
            // wait for.)
            client.batch_execute(unit::SESSION_STALL_LIMITS).await.map_err(pg)?;
            client.batch_execute("SELECT pg_advisory_lock(7001)").await.map_err(pg)?;
            let migrated = embedded::migrations::runner()
                .set_abort_missing(true)
                .set_abort_divergent(true)
                .run_async(client)
                .await
                .map(|_| ())
                .map_err(|e| StoreError::Backend(format!("schema migration refused: {}", e.kind())));
            let unlocked = client.batch_execute("SELECT pg_advisory_unlock(7001)").await.map_err(pg);
            migrated.and(unlocked)
        })
        .await;
        match migrated {
            Ok(result) => result?,
            Err(_) => return Err(StoreError::Backend("schema migration refused: unreadable schema history".into())),
        }
        let client = self.client().await?;
        client
            .execute_cached(
                "INSERT INTO region_head (id, region, audit_hash) VALUES (1, $1, $2) ON CONFLICT (id) DO NOTHING",
                &[&self.region.as_str(), &domicile_audit::GENESIS],
            )
            .await
            .map_err(pg)?;
        let row = client.query_one_cached("SELECT region FROM region_head WHERE id = 1", &[]).await.map_err(pg)?;
        let found: String = row.get(0);
        if found != self.region.as_str() {
            return Err(StoreError::Backend(format!(
                "the database belongs to region `{found}`, not `{}`",
                self.region
            )));
        }
        Ok(())
    }

    pub fn region(&self) -> &RegionId {
        &self.region
    }

    /// A pooled connection for reads.
    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Runs `body` as one write (see the module doc): the region head locked first, the change
    /// events and audit entries of what it records written with it, one commit.
    async fn write<T>(
        &self,
        at: i64,
        body: impl AsyncFnOnce(&mut Write<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let turn = self.turns.take().await?;
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.build_transaction().start().await.map_err(pg)?;
        let mut write = Write::begin(turn, tx, &self.region, at).await?;
        let out = body(&mut write).await?;
        write.commit().await?;
        Ok(out)
    }

    /// The subject's data key, if it has one (it has none after erasure).
    async fn key(
        &self,
        client: &impl prepared::Prepared,
        subject: &SubjectId,
    ) -> Result<Option<SubjectKey>, StoreError> {
        let row = client
            .query_opt_cached(
                "SELECT kek, wrapped FROM subject_keys WHERE subject = $1",
                &[&subject.as_bytes().as_slice()],
            )
            .await
            .map_err(pg)?;
        match row {
            None => Ok(None),
            Some(row) => self.keks.unwrap(subject, row.get(0), row.get(1)).map(Some),
        }
    }

    /// The subject's key, created (and stored, in the write's transaction) if it has none.
    async fn key_or_create(&self, write: &Write<'_>, subject: &SubjectId) -> Result<SubjectKey, StoreError> {
        if let Some(key) = self.key(write.tx(), subject).await? {
            return Ok(key);
        }
        let (key, version, wrapped) = self.keks.create(subject)?;
        write
            .tx()
            .execute_cached(
                "INSERT INTO subject_keys (subject, kek, wrapped) VALUES ($1, $2, $3)",
                &[&subject.as_bytes().as_slice(), &version, &wrapped],
            )
            .await
            .map_err(pg)?;
        Ok(key)
    }

    /// How many stored subject keys each KEK version wraps.
    pub async fn keys_per_version(&self) -> Result<std::collections::BTreeMap<i32, u64>, StoreError> {
        let client = self.client().await?;
        let rows = client.query_cached("SELECT kek, count(*) FROM subject_keys GROUP BY kek", &[]).await.map_err(pg)?;
        rows.iter().map(|row| Ok((row.get::<_, i32>(0), uint(row.get(1))?))).collect()
    }

    /// The KEK versions this store was opened with.
    pub fn kek_versions(&self) -> Vec<i32> {
        self.keks.versions()
    }

    /// Re-wraps every subject key under the current KEK version (`domicile node rotate-kek`);
    /// returns how many. Afterwards older versions can be deleted from the KEK file, which makes
    /// every copy wrapped with them unreadable.
    pub async fn rewrap_keys(&self) -> Result<u64, StoreError> {
        let current = self.keks.current();
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.build_transaction().start().await.map_err(pg)?;
        // The rows it locks are every write's to those subjects: not held by a stopped command.
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&current];
        let (_, rows) = tokio::try_join!(
            tx.batch_execute(unit::STALL_LIMITS),
            tx.query_cached("SELECT subject, kek, wrapped FROM subject_keys WHERE kek <> $1 FOR UPDATE", &params)
        )
        .map_err(pg)?;
        for row in &rows {
            let subject = subject_id(row.get(0))?;
            let wrapped = self.keks.rewrap(&subject, row.get(1), row.get(2))?;
            tx.execute_cached(
                "UPDATE subject_keys SET kek = $2, wrapped = $3 WHERE subject = $1",
                &[&subject.as_bytes().as_slice(), &current, &wrapped],
            )
            .await
            .map_err(pg)?;
        }
        tx.commit().await.map_err(pg)?;
        Ok(rows.len() as u64)
    }
}

fn password(config: &PgConfig) -> Result<Option<String>, StoreError> {
    if let Some(file) = &config.password_file {
        let text = std::fs::read_to_string(file)
            .map_err(|e| StoreError::Backend(format!("password file {}: {}", file.display(), e.kind())))?;
        return Ok(text.lines().next().map(str::to_owned));
    }
    if let Some(var) = &config.password_env {
        return std::env::var(var).map(Some).map_err(|_| {
            StoreError::Backend(format!("environment variable `{var}` (the database password) is not set"))
        });
    }
    Ok(None)
}

fn tls(ca_file: &std::path::Path) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    let pem = std::fs::read(ca_file)
        .map_err(|e| StoreError::Backend(format!("database CA file {}: {}", ca_file.display(), e.kind())))?;
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject as _;
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|_| StoreError::Backend("database CA file is not PEM".into()))?;
        roots.add(cert).map_err(|_| StoreError::Backend("database CA certificate unusable".into()))?;
    }
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}
