//! A region's audit log wherever its store keeps it: `data/<region>/audit.log` on the embedded
//! store, the `audit` table of the region's database on PostgreSQL. Scenario tests read, tamper
//! with and verify it the same way on both (`DOMICILE_TEST_STORE`).

use std::path::PathBuf;
use std::process::{Command, Output};

use anyhow::Context;
use domicile_cli::cluster::{ClusterDatabase, database_name};
use domicile_types::RegionId;

use crate::Cluster;

/// One region's audit log.
pub enum RegionAudit<'a> {
    /// The embedded store's file.
    File(PathBuf),
    /// The region's database on the cluster's PostgreSQL server.
    Database { database: &'a ClusterDatabase, name: String },
}

impl<'a> RegionAudit<'a> {
    /// The log of `region` in `cluster`.
    pub fn of(cluster: &'a impl Cluster, region: &RegionId) -> Self {
        match cluster.database() {
            Some(database) => Self::Database { database, name: database_name(region) },
            None => Self::File(cluster.dir().join("data").join(region.as_str()).join("audit.log")),
        }
    }

    /// Every entry, in chain order.
    pub fn lines(&self) -> anyhow::Result<Vec<String>> {
        match self {
            Self::File(path) => Ok(std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .lines()
                .map(str::to_owned)
                .collect()),
            Self::Database { database, name } => {
                let out = database.server().psql(name, "SELECT line FROM audit ORDER BY seq")?;
                Ok(String::from_utf8(out.stdout)?.lines().map(str::to_owned).collect())
            }
        }
    }

    /// Replaces entry `index` (0-based, chain order) by `line`, as an attacker with write access
    /// to the storage would.
    pub fn replace(&self, index: usize, line: &str) -> anyhow::Result<()> {
        match self {
            Self::File(path) => {
                let mut lines = self.lines()?;
                *lines.get_mut(index).context("no such entry")? = line.to_owned();
                std::fs::write(path, lines.join("\n") + "\n")?;
            }
            Self::Database { database, name } => {
                anyhow::ensure!(!line.contains("$tampered$"), "the line ends the quoting");
                database.server().psql(
                    name,
                    &format!(
                        "UPDATE audit SET line = $tampered${line}$tampered$ \
                         WHERE seq = (SELECT seq FROM audit ORDER BY seq OFFSET {index} LIMIT 1)"
                    ),
                )?;
            }
        }
        Ok(())
    }

    /// `domicile audit verify` of this log (from the file, or offline from the database URL),
    /// with `--json` when asked.
    pub fn verify(&self, binary: &str, json: bool) -> anyhow::Result<Output> {
        let mut command = Command::new(binary);
        command.args(["audit", "verify"]);
        if json {
            command.arg("--json");
        }
        match self {
            Self::File(path) => command.arg(path),
            Self::Database { database, name } => command
                .arg("--database-url")
                .arg(database.server().url(name))
                .arg("--password-file")
                .arg(database.server().password_file()),
        };
        Ok(command.output()?)
    }
}
