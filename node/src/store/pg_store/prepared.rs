//! Statements prepared once per connection and reused.
//!
//! A statement sent as text is prepared by tokio-postgres at every call: one round trip for the
//! server to parse, analyse and describe it, then another to run it. Per consent write that was
//! about a dozen parses, and a profile of a loaded region put the server's parser and planner among
//! its top costs. These helpers take the statement from the connection's cache (deadpool's
//! `prepare_cached`: per connection, kept across checkouts, dropped with the connection), so a
//! statement is parsed once per connection and each call is one round trip.
//!
//! What this asks of the deployment: named prepared statements live in the server session, so a
//! pooler between node and database must keep sessions (PgBouncer in session mode, or transaction
//! mode from 1.21 with `max_prepared_statements` set) — deploy/README.md says so.
//! The cache stays small: every statement text is one of a fixed set (the few built with
//! `format!` vary only by a table name from a constant list). A cached statement that the server
//! stops accepting (a migration that changed a selected column's type under a running node) keeps
//! failing on its connection until the node restarts: migrations only add (node/migrations/).

use std::future::Future;

use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Error, Row};

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// `query`, `query_opt`, `query_one` and `execute` through the connection's statement cache.
pub(super) trait Prepared: GenericClient {
    fn query_cached<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> impl Future<Output = Result<Vec<Row>, Error>> + Send + 'a
    where
        Self: Sized,
    {
        async move {
            let statement = self.prepare_cached(sql).await?;
            self.query(&statement, params).await
        }
    }

    fn query_opt_cached<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> impl Future<Output = Result<Option<Row>, Error>> + Send + 'a
    where
        Self: Sized,
    {
        async move {
            let statement = self.prepare_cached(sql).await?;
            self.query_opt(&statement, params).await
        }
    }

    fn query_one_cached<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> impl Future<Output = Result<Row, Error>> + Send + 'a
    where
        Self: Sized,
    {
        async move {
            let statement = self.prepare_cached(sql).await?;
            self.query_one(&statement, params).await
        }
    }

    fn execute_cached<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> impl Future<Output = Result<u64, Error>> + Send + 'a
    where
        Self: Sized,
    {
        async move {
            let statement = self.prepare_cached(sql).await?;
            self.execute(&statement, params).await
        }
    }
}

impl<T: GenericClient> Prepared for T {}
