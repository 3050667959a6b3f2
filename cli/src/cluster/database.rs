//! `cluster up --store postgres`: a local cluster whose regions keep their state in PostgreSQL,
//! on a throwaway server started from this machine's installed binaries
//! (`domicile_runtime::postgres`), one database per region. The server lives in the cluster
//! directory (root: in a directory user `postgres` can reach, remembered in `postgres.dir`) and
//! stops with the cluster; its data stays for the next start.

use std::path::{Path, PathBuf};

use anyhow::Context;
use domicile_node::config::StoreConfig;
use domicile_node::store::pg_store::PgConfig;
use domicile_runtime::postgres::LocalPostgres;
use domicile_types::RegionId;

/// Where a local cluster keeps its regions' state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ClusterStore {
    /// The embedded store (sled) in each node's data directory: nothing to install.
    #[default]
    Sled,
    /// A PostgreSQL server the cluster starts itself from the installed `initdb` and `pg_ctl`,
    /// one database per region.
    Postgres,
}

/// Remembers where root's server lives (the cluster directory may be one `postgres` cannot
/// reach, such as under /root).
const SERVER_DIR_FILE: &str = "postgres.dir";

/// Connections each node keeps to its region's database in a local cluster.
const LOCAL_POOL_SIZE: usize = 4;

/// A local cluster's PostgreSQL server with one database per region.
#[derive(Debug)]
pub struct ClusterDatabase {
    server: LocalPostgres,
}

impl ClusterDatabase {
    /// Starts (initialising it the first time) the server of the cluster in `dir` on a free port
    /// and creates each region's database unless it exists. Blocking: `initdb` takes seconds.
    pub fn start(dir: &Path, regions: &[RegionId]) -> anyhow::Result<Self> {
        let server_dir = server_dir(dir)?;
        let port = free_port()?;
        let server = LocalPostgres::start(&server_dir, port)
            .with_context(|| format!("cannot start the cluster's PostgreSQL server in {}", server_dir.display()))?;
        for region in regions {
            server
                .create_database(&database_name(region))
                .with_context(|| format!("cannot create the database of {region}"))?;
        }
        Ok(Self { server })
    }

    /// The `[store]` of `region`'s node: its database, the server's password file, and the
    /// region's key-encryption keys in the node's data directory.
    pub fn store_config(&self, region: &RegionId, node_data_dir: &Path) -> StoreConfig {
        StoreConfig::Postgres(PgConfig {
            url: self.server.url(&database_name(region)),
            password_file: Some(self.server.password_file()),
            password_env: None,
            pool_size: LOCAL_POOL_SIZE,
            kek_file: node_data_dir.join("kek"),
            tls_ca_file: None,
        })
    }

    /// Removes the server's directory once it has stopped (a test's throwaway cluster).
    pub fn discard_on_drop(&mut self) {
        self.server.set_remove_on_drop();
    }

    /// The server, for tests that stop or kill it.
    pub fn server(&self) -> &LocalPostgres {
        &self.server
    }
}

/// `domicile_eu_central` for region `eu-central`.
pub fn database_name(region: &RegionId) -> String {
    format!("domicile_{}", region.as_str().replace('-', "_"))
}

fn server_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    let remembered = dir.join(SERVER_DIR_FILE);
    if let Ok(text) = std::fs::read_to_string(&remembered) {
        let path = PathBuf::from(text.trim());
        if path.join("data").join("PG_VERSION").is_file() {
            return Ok(path);
        }
    }
    let path = LocalPostgres::reachable_dir(dir, "postgres")?;
    if path != dir.join("postgres") {
        std::fs::write(&remembered, path.display().to_string())
            .with_context(|| format!("cannot write {}", remembered.display()))?;
    }
    Ok(path)
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).context("cannot find a free port")?;
    Ok(listener.local_addr()?.port())
}
