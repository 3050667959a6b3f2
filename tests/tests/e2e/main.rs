//! Every end-to-end scenario of the cluster, one module per file, in one test binary. Each file
//! was a binary of its own, and each linked the whole stack (node, gateway, CLI, PostgreSQL and
//! TLS clients): 42 of them took some 105 s of a clean build's CPU. Together they are built and
//! linked once, and `cargo test` runs their tests two at a time across files rather than file
//! after file. One file's tests: `cargo test -p domicile-cluster-tests --test e2e journey::`.
//!
//! Tests here share the process, so none may change process-wide state (the environment, the
//! working directory, a global tracing subscriber or rustls provider): each cluster is its own
//! set of child processes or its own runtimes, directories and ports.

mod audit_unavailable;
mod backup_restore;
mod consent_evidence;
mod consent_import;
mod consent_order;
mod consent_records;
mod consent_repeats;
mod consent_signals;
mod damaged_files;
mod decision_facts;
mod gateway_auth;
mod gateway_directory;
mod gateway_fail_closed;
mod gateway_overload;
mod gateway_residency_rules;
mod gateway_residency_traffic;
mod gateway_watch;
mod identifier_ownership;
mod journey;
mod local_cluster;
mod node_authorization;
mod node_full_disk;
mod node_identity;
mod ops_faults;
mod ownership_repair;
mod packs_reload;
mod partitions;
mod postgres_erasure;
mod postgres_failover;
mod postgres_group_commit;
mod postgres_replicas;
mod postgres_statements;
mod register_batch;
mod revocation;
mod rights_and_watch;
mod rights_cli;
mod rights_verified;
mod subdivisions;
mod tls_accept;
mod unknown_outcome;
mod unmerge;
mod walking_skeleton;
mod wire_errors;
