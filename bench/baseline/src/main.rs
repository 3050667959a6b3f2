//! The baseline of issue 19's comparison: what a team would build instead of Domicile's
//! PostgreSQL regions. A consent table in PostgreSQL, read once per request, and Cedar
//! (`cedar-policy`) evaluating the same rules as the DE pack, behind the gateway's `Decide`
//! method, so that `domicile load decide` drives it exactly as it drives a Domicile cluster
//! (same requests, same TLS, same concurrency; `bench/run-all.sh` runs both).
//!
//! `domicile-baseline --dir D --subjects N` starts its own PostgreSQL server from the installed
//! binaries (as `cluster up --store postgres` does), loads subjects `load-0` .. `load-<N-1>` with
//! marketing granted by email and SMS (what the load tool's setup records), serves, and writes
//! `D/cluster.json` for the load tool. It stops its server on Ctrl-C or SIGTERM.
//!
//! Favouring the baseline: identifiers are stored in the clear (no keyed pseudonyms, no sealed
//! values), every subject is decided with the DE rules (one policy set, 128 policies), nothing is
//! audited, and there is no residency routing or gateway hop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use cedar_policy::{Authorizer, Decision, Entities, PolicySet};
use clap::Parser;
use domicile_policy::{ConsentFact, DecisionInput, Pack, PackSet, PackSource};
use domicile_proto::pb::common::v1 as common;
use domicile_proto::pb::gateway::v1 as pb;
use domicile_runtime::identity::{CallerIdentity, Scope};
use domicile_runtime::pki::ClusterPki;
use domicile_runtime::postgres::LocalPostgres;
use domicile_runtime::tls::{TlsMaterial, install_crypto_provider};
use domicile_types::{Channel, ConsentState, Jurisdiction, Purpose, RegionId};
use tonic::codegen::{BoxFuture, Service, http};

#[path = "../../../policy/benches/shared/cedar.rs"]
mod cedar;

#[derive(Debug, Parser)]
#[command(about = "PostgreSQL consent table + Cedar, serving Decide for `domicile load` (BENCHMARKS.md)")]
struct Args {
    /// Directory for the server's PostgreSQL data, PKI and `cluster.json`.
    #[arg(long)]
    dir: PathBuf,
    /// Subjects `load-0` .. `load-<N-1>` in the consent table.
    #[arg(long, default_value_t = 10_000)]
    subjects: u64,
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Pooled database connections.
    #[arg(long, default_value_t = 16)]
    pool_size: usize,
    /// The policy packs (the DE pack and the baseline it extends are read).
    #[arg(long, default_value = "policy-packs")]
    packs: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    install_crypto_provider();
    let runtime = tokio::runtime::Runtime::new().context("tokio runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir).with_context(|| format!("cannot create {}", args.dir.display()))?;
    let dir = std::fs::canonicalize(&args.dir)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let server_dir = LocalPostgres::reachable_dir(&dir, "baseline-postgres")?;
    let server = LocalPostgres::start(&server_dir, port).context("cannot start PostgreSQL")?.remove_on_drop();
    server.create_database("baseline").context("cannot create the baseline database")?;
    let pool = pool(&server, args.pool_size)?;
    load(&pool, args.subjects).await?;

    let pack = de_pack(&args.packs)?;
    let (policies, count) = cedar::policies(&pack);
    eprintln!("baseline: {} subjects, DE rules as {count} Cedar policies", args.subjects);
    let service =
        Baseline(Arc::new(Inner { pool, policies, authorizer: Authorizer::new(), entities: Entities::empty() }));

    let pki = ClusterPki::open_or_create(&dir.join("pki"))?;
    let server_tls = TlsMaterial::load(&pki.gateway()?)?;
    let region = RegionId::parse("eu-central").map_err(|e| anyhow::anyhow!("{e}"))?;
    let client_tls = pki.caller(&CallerIdentity::new("load", region, &Scope::ALL)?)?;
    let listener = tokio::net::TcpListener::bind(args.listen).await.context("cannot bind")?;
    let addr = listener.local_addr()?;
    let file = serde_json::json!({ "gateway": addr, "tls": client_tls });
    std::fs::write(dir.join("cluster.json"), serde_json::to_vec_pretty(&file)?)?;
    eprintln!("baseline: serving Decide on {addr}; cluster.json in {}", dir.display());
    let serve = tonic::transport::Server::builder()
        .tls_config(server_tls.server())?
        .add_service(service)
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), stop());
    serve.await?;
    drop(server);
    Ok(())
}

async fn stop() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn pool(server: &LocalPostgres, size: usize) -> anyhow::Result<deadpool_postgres::Pool> {
    let mut config: tokio_postgres::Config = server.url("baseline").parse()?;
    let password = std::fs::read_to_string(server.password_file())?;
    config.password(password.lines().next().unwrap_or_default());
    let manager = deadpool_postgres::Manager::from_config(
        config,
        tokio_postgres::NoTls,
        deadpool_postgres::ManagerConfig { recycling_method: deadpool_postgres::RecyclingMethod::Fast },
    );
    Ok(deadpool_postgres::Pool::builder(manager).max_size(size).build()?)
}

/// The consent table a team would keep: one row per identifier, purpose and channel.
async fn load(pool: &deadpool_postgres::Pool, subjects: u64) -> anyhow::Result<()> {
    let client = pool.get().await?;
    client
        .batch_execute(
            "CREATE TABLE consent (email text NOT NULL, purpose text NOT NULL, channel text NOT NULL, \
             state text NOT NULL, captured_at bigint NOT NULL, expires_at bigint, double_opt_in boolean NOT NULL, \
             PRIMARY KEY (email, purpose, channel))",
        )
        .await?;
    let captured = now() - 60;
    let mut first = 0;
    while first < subjects {
        let last = (first + 10_000).min(subjects);
        let emails: Vec<String> = (first..last).map(|n| format!("load-{n}@example.test")).collect();
        for channel in ["email", "sms"] {
            client
                .execute(
                    "INSERT INTO consent SELECT e, 'marketing', $2, 'granted', $3, NULL, true FROM unnest($1::text[]) e",
                    &[&emails, &channel, &captured],
                )
                .await?;
        }
        first = last;
    }
    client.batch_execute("ANALYZE consent").await?;
    Ok(())
}

fn de_pack(root: &Path) -> anyhow::Result<Pack> {
    let mut sources = Vec::new();
    for name in ["_baseline", "de"] {
        let path = root.join(name).join("pack.toml");
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        sources.push(PackSource::new(path.display().to_string(), text));
    }
    let (set, _) = PackSet::compile(&sources).map_err(|_| anyhow::anyhow!("the DE pack does not compile"))?;
    let de = Jurisdiction::parse("DE").map_err(|e| anyhow::anyhow!("{e}"))?;
    set.get(&de).cloned().context("no DE pack")
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

struct Inner {
    pool: deadpool_postgres::Pool,
    policies: PolicySet,
    authorizer: Authorizer,
    entities: Entities,
}

impl Inner {
    /// One decision: the consent row read from PostgreSQL, then Cedar.
    async fn decide(&self, request: pb::DecideRequest) -> Result<pb::DecideResponse, tonic::Status> {
        let email = match request.subject.and_then(|s| s.selector) {
            Some(pb::subject_selector::Selector::Identifier(i)) if i.kind == "email" => i.value,
            _ => return Err(tonic::Status::invalid_argument("the baseline decides by email identifier only")),
        };
        let purpose = Purpose::parse(&request.purpose).map_err(|_| tonic::Status::invalid_argument("purpose"))?;
        let channel = Channel::parse(&request.channel).map_err(|_| tonic::Status::invalid_argument("channel"))?;
        let unavailable = |_| tonic::Status::unavailable("database");
        let client = self.pool.get().await.map_err(|_| tonic::Status::unavailable("database pool"))?;
        let statement = client
            .prepare_cached(
                "SELECT state, captured_at, expires_at, double_opt_in FROM consent \
                 WHERE email = $1 AND purpose = $2 AND channel = $3",
            )
            .await
            .map_err(unavailable)?;
        let row =
            client.query_opt(&statement, &[&email, &purpose.as_str(), &channel.as_str()]).await.map_err(unavailable)?;
        let consent = match row {
            None => None,
            Some(row) => Some(ConsentFact {
                state: ConsentState::parse(row.get(0)).map_err(|_| tonic::Status::internal("state"))?,
                captured_at_unix: row.get(1),
                expires_at_unix: row.get(2),
                double_opt_in_confirmed: row.get(3),
                kind: None,
                hours: Vec::new(),
            }),
        };
        let input = DecisionInput::new(purpose, channel, now(), consent);
        let answer = self.authorizer.is_authorized(&cedar::request(&input), &self.policies, &self.entities);
        let effect = if answer.decision() == Decision::Allow { common::Effect::Allow } else { common::Effect::Deny };
        let reasons = answer.diagnostics().reason().map(ToString::to_string).collect();
        Ok(pb::DecideResponse {
            decision: Some(common::Decision { effect: effect as i32, reasons, ..Default::default() }),
        })
    }
}

/// The gateway's service name, serving only `Decide` (every other method: UNIMPLEMENTED).
#[derive(Clone)]
struct Baseline(Arc<Inner>);

impl tonic::server::NamedService for Baseline {
    const NAME: &'static str = "domicile.gateway.v1.Domicile";
}

impl Service<http::Request<tonic::body::Body>> for Baseline {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move {
            if request.uri().path() != "/domicile.gateway.v1.Domicile/Decide" {
                return Ok(tonic::Status::unimplemented("the baseline serves Decide only").into_http());
            }
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(DecideUnary(inner), request).await)
        })
    }
}

struct DecideUnary(Arc<Inner>);

impl tonic::server::UnaryService<pb::DecideRequest> for DecideUnary {
    type Response = pb::DecideResponse;
    type Future = BoxFuture<tonic::Response<pb::DecideResponse>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<pb::DecideRequest>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move { inner.decide(request.into_inner()).await.map(tonic::Response::new) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The baseline decides as the pack does for the inputs the load tool sends.
    #[test]
    fn cedar_agrees_with_the_pack_on_the_load_inputs() {
        let pack = de_pack(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policy-packs")).unwrap();
        let (policies, _) = cedar::policies(&pack);
        let at = 1_795_428_000;
        for channel in [Channel::Email, Channel::Sms, Channel::Voice] {
            for state in [None, Some(ConsentState::Granted), Some(ConsentState::Withdrawn)] {
                let consent = state.map(|state| ConsentFact {
                    state,
                    captured_at_unix: at - 60,
                    expires_at_unix: None,
                    double_opt_in_confirmed: true,
                    kind: None,
                    hours: Vec::new(),
                });
                let input = DecisionInput::new(Purpose::Marketing, channel, at, consent);
                let cedar = Authorizer::new().is_authorized(&cedar::request(&input), &policies, &Entities::empty());
                assert_eq!(
                    cedar.decision() == Decision::Allow,
                    pack.evaluate(&input).effect == domicile_policy::Effect::Allow,
                    "{channel} with {state:?}"
                );
            }
        }
    }
}
