//! The client side every scenario uses, whichever harness runs the cluster: where the processes
//! listen, the cluster's PKI, and clients of its gateways and nodes built from those. Written once
//! here, for [`crate::TestCluster`] (real processes), [`crate::InProcessCluster`] (the same
//! `serve` functions on Tokio runtimes of the test process) and [`crate::ScenarioCluster`]
//! (either), so a scenario's body does not depend on the harness it runs on.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use domicile_cli::cluster::ClusterDatabase;
use domicile_proto::pb::gateway::v1::domicile_client::DomicileClient;
use domicile_proto::pb::node::v1::regional_node_client::RegionalNodeClient;
use domicile_runtime::identity::{CallerIdentity, Scope, issue_caller_cert};
use domicile_runtime::pki::{ClusterPki, GATEWAY_SERVER_NAME};
use domicile_runtime::tls::TlsFiles;
use domicile_types::RegionId;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::{RecordingProxy, channel, check_serving, region};

/// A running cluster as its callers see it. Implementors say where things are; the clients are
/// provided.
#[allow(async_fn_in_trait, reason = "test helpers awaited in place; no caller needs a Send bound")]
pub trait Cluster {
    /// The cluster's directory: `pki/`, `config/`, `logs/`, `data/<region>/`.
    fn dir(&self) -> &Path;

    /// Certificate and key of the CLI (an operator of the first region with every scope).
    fn client_tls(&self) -> &TlsFiles;

    /// The first gateway's address.
    fn gateway_addr(&self) -> SocketAddr;

    /// Every gateway's address, the first one first.
    fn gateway_addrs(&self) -> Vec<SocketAddr>;

    /// Every region with a node.
    fn regions(&self) -> Vec<RegionId>;

    /// The address of `region`'s node.
    fn node_addr(&self, region: &RegionId) -> Option<SocketAddr>;

    /// The regions' PostgreSQL server, when their state is kept there.
    fn database(&self) -> Option<&ClusterDatabase>;

    fn pki(&self) -> anyhow::Result<ClusterPki> {
        Ok(ClusterPki::open_or_create(&self.dir().join("pki"))?)
    }

    /// Waits until every gateway and node answers a health check over mutual TLS.
    async fn wait_healthy(&self) -> anyhow::Result<()> {
        for addr in self.gateway_addrs() {
            check_serving(self.gateway_channel_at(addr).await?, "domicile.gateway.v1.Domicile").await?;
        }
        for region in self.regions() {
            check_serving(self.node_channel(&region).await?, "domicile.node.v1.RegionalNode").await?;
        }
        Ok(())
    }

    /// A channel to the first gateway with the CLI's certificate.
    async fn gateway_channel(&self) -> anyhow::Result<Channel> {
        self.gateway_channel_at(self.gateway_addr()).await
    }

    /// A channel to the gateway at `addr` with the CLI's certificate.
    async fn gateway_channel_at(&self, addr: SocketAddr) -> anyhow::Result<Channel> {
        channel(&addr.to_string(), self.client_tls(), GATEWAY_SERVER_NAME).await
    }

    /// A client of the first gateway with the CLI's certificate.
    async fn gateway(&self) -> anyhow::Result<DomicileClient<Channel>> {
        Ok(DomicileClient::new(self.gateway_channel().await?))
    }

    /// A client of gateway `index` (0: the first; see [`crate::TestOptions::gateways`]).
    async fn gateway_at_index(&self, index: usize) -> anyhow::Result<DomicileClient<Channel>> {
        let addr = self.gateway_addrs().get(index).copied().with_context(|| format!("no gateway {index}"))?;
        self.gateway_at(addr).await
    }

    /// One client per gateway, the first gateway's first.
    async fn gateways(&self) -> anyhow::Result<Vec<DomicileClient<Channel>>> {
        let mut clients = Vec::new();
        for addr in self.gateway_addrs() {
            clients.push(self.gateway_at(addr).await?);
        }
        Ok(clients)
    }

    /// A channel to a region's node as an operator of that region (nodes admit only gateways
    /// and callers of their own region).
    async fn node_channel(&self, region: &RegionId) -> anyhow::Result<Channel> {
        let addr = self.node_addr(region).ok_or_else(|| anyhow::anyhow!("no node for {region}"))?;
        let operator = CallerIdentity::new(&format!("operator-{region}"), region.clone(), &Scope::ALL)?;
        let tls = self.pki()?.caller(&operator)?;
        channel(&addr.to_string(), &tls, &region.node_server_name()).await
    }

    async fn node(&self, region: &RegionId) -> anyhow::Result<RegionalNodeClient<Channel>> {
        Ok(RegionalNodeClient::new(self.node_channel(region).await?))
    }

    /// Issues a caller certificate from the cluster CA naming `name`, `region` and `scopes`.
    fn issue_caller(&self, name: &str, region_id: &str, scopes: &[Scope]) -> anyhow::Result<TlsFiles> {
        let caller = CallerIdentity::new(name, region(region_id), scopes)?;
        Ok(issue_caller_cert(&self.dir().join("pki"), &format!("client-{name}"), &caller)?)
    }

    /// A subject's consent history read through the first gateway as a caller of its home
    /// region: the ledger is personal data, which a caller of another region reads only under a
    /// transfer of the subject's pack, minimised. The home region comes from the subject's ref,
    /// or from resolving its identifier.
    async fn history_at_home(
        &self,
        subject: Option<domicile_proto::pb::gateway::v1::SubjectSelector>,
    ) -> anyhow::Result<domicile_proto::pb::gateway::v1::ConsentHistoryResponse> {
        use domicile_proto::pb::gateway::v1 as gw;
        let home = match subject.as_ref().and_then(|s| s.selector.as_ref()) {
            Some(gw::subject_selector::Selector::SubjectRef(r)) => {
                domicile_types::SubjectRef::parse(r).context("subject ref")?.region.to_string()
            }
            Some(gw::subject_selector::Selector::Identifier(identifier)) => {
                let request = gw::ResolveRequest { identifier: Some(identifier.clone()) };
                self.gateway().await?.resolve(request).await?.into_inner().home_region
            }
            _ => anyhow::bail!("history_at_home needs a subject ref or an identifier"),
        };
        let request = gw::ConsentHistoryRequest { subject, purpose: String::new() };
        Ok(self.home_reader(&home).await?.consent_history(request).await?.into_inner())
    }

    /// A client of the first gateway as a caller of `home` with the context scope: what reads a
    /// subject's history there ([`Cluster::history_at_home`]). A test reading many histories
    /// keeps one per region rather than a certificate and a connection per read.
    async fn home_reader(&self, home: &str) -> anyhow::Result<DomicileClient<Channel>> {
        let tls = self.issue_caller(&format!("home-reader-{home}"), home, &[Scope::Context])?;
        self.gateway_as(&tls).await
    }

    /// A client of the first gateway presenting `tls` (which need not be from this cluster's CA).
    async fn gateway_as(&self, tls: &TlsFiles) -> anyhow::Result<DomicileClient<Channel>> {
        self.gateway_at_as(self.gateway_addr(), tls).await
    }

    /// A client of the gateway at `addr` presenting `tls`.
    async fn gateway_at_as(&self, addr: SocketAddr, tls: &TlsFiles) -> anyhow::Result<DomicileClient<Channel>> {
        Ok(DomicileClient::new(channel(&addr.to_string(), tls, GATEWAY_SERVER_NAME).await?))
    }

    /// A client of the gateway at `addr` with the CLI's certificate.
    async fn gateway_at(&self, addr: SocketAddr) -> anyhow::Result<DomicileClient<Channel>> {
        self.gateway_at_as(addr, self.client_tls()).await
    }

    /// A client of the first gateway that trusts the cluster CA but presents no certificate.
    async fn gateway_without_certificate(&self) -> anyhow::Result<DomicileClient<Channel>> {
        Ok(DomicileClient::new(self.channel_without_certificate().await?))
    }

    /// A TLS channel to the first gateway that presents no client certificate (for token callers).
    async fn channel_without_certificate(&self) -> anyhow::Result<Channel> {
        let ca = std::fs::read(&self.client_tls().ca)?;
        let tls = ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca))
            .domain_name(GATEWAY_SERVER_NAME);
        Ok(Endpoint::from_shared(format!("https://{}", self.gateway_addr()))?.tls_config(tls)?.connect().await?)
    }

    /// Starts a TLS-terminating recording proxy in front of `region`'s node (see
    /// [`RecordingProxy`]).
    async fn recording_proxy(&self, region_id: &RegionId) -> anyhow::Result<RecordingProxy> {
        let upstream = self.node_addr(region_id).context("no node for region")?;
        let pki = self.pki()?;
        RecordingProxy::start(region_id, upstream, &pki.node(region_id)?, &pki.gateway()?).await
    }
}
