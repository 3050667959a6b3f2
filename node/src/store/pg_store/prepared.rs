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
//! `format!` vary only by a table name from a constant list).
//!
//! A cached statement the server no longer accepts is dropped from its connection's cache when
//! it fails, so that the next call prepares it again: a statement the session lost (a pooler that
//! moved the node to another session, `DEALLOCATE`), or one whose result type a schema change
//! altered under the running node ("cached plan must not change result type", during a rolling
//! upgrade). The failing call itself fails (closed); the node heals without a restart.

use std::future::Future;

use deadpool_postgres::{GenericClient, StatementCache};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Error, Row};

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// `query`, `query_opt`, `query_one` and `execute` through the connection's statement cache.
pub(super) trait Prepared: GenericClient {
    /// The cache of the connection this client or transaction runs on.
    fn statements(&self) -> &StatementCache;

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
            self.query(&statement, params).await.inspect_err(|e| forget_if_stale(self.statements(), sql, e))
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
            self.query_opt(&statement, params).await.inspect_err(|e| forget_if_stale(self.statements(), sql, e))
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
            self.query_one(&statement, params).await.inspect_err(|e| forget_if_stale(self.statements(), sql, e))
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
            self.execute(&statement, params).await.inspect_err(|e| forget_if_stale(self.statements(), sql, e))
        }
    }
}

/// A query planned at each call: the unnamed statement with its parameters' types given, one
/// round trip (`query_typed`). For a query whose best plan changes as its table grows: a cached
/// statement's generic plan, once chosen, is never costed again, so one made while the table was
/// small (a seq scan) stays after it has grown (`imports.rs`).
pub(super) trait Planned {
    fn query_planned<'a>(
        &'a self,
        sql: &'a str,
        params: &'a [(&'a (dyn ToSql + Sync), Type)],
    ) -> impl Future<Output = Result<Vec<Row>, Error>> + Send + 'a;
}

impl Prepared for deadpool_postgres::Client {
    fn statements(&self) -> &StatementCache {
        &self.statement_cache
    }
}

impl Planned for deadpool_postgres::Client {
    fn query_planned<'a>(
        &'a self,
        sql: &'a str,
        params: &'a [(&'a (dyn ToSql + Sync), Type)],
    ) -> impl Future<Output = Result<Vec<Row>, Error>> + Send + 'a {
        let client: &tokio_postgres::Client = self;
        client.query_typed(sql, params)
    }
}

impl Prepared for deadpool_postgres::Transaction<'_> {
    fn statements(&self) -> &StatementCache {
        &self.statement_cache
    }
}

impl Planned for deadpool_postgres::Transaction<'_> {
    fn query_planned<'a>(
        &'a self,
        sql: &'a str,
        params: &'a [(&'a (dyn ToSql + Sync), Type)],
    ) -> impl Future<Output = Result<Vec<Row>, Error>> + Send + 'a {
        let tx: &tokio_postgres::Transaction<'_> = self;
        tx.query_typed(sql, params)
    }
}

/// Drops `sql`'s statement from `cache` when `error` says the server no longer knows it (26000)
/// or no longer accepts its cached plan (0A000, "cached plan must not change result type").
pub(super) fn forget_if_stale(cache: &StatementCache, sql: &str, error: &Error) {
    let stale = error
        .code()
        .is_some_and(|code| *code == SqlState::INVALID_SQL_STATEMENT_NAME || *code == SqlState::FEATURE_NOT_SUPPORTED);
    if stale {
        cache.remove(sql, &[]);
    }
}
