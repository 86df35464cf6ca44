//! stagecache-server: the gRPC services (`Cas`, `Manifests`, `Refs`, health, reflection)
//! over a [`store::Store`] — blob bytes in a storage backend (the local file system, or a
//! cloud store through `object_store`), the index in RocksDB.
//!
//! Layers, and what each must not know: `service` decodes and validates requests and maps
//! errors to statuses, knowing nothing of RocksDB; `store` keeps bytes and records and
//! their invariants, knowing nothing of gRPC or pipelines; the rules both sides share
//! (digests, manifests, names) come from `stagecache-proto`.

pub mod access;
pub mod auth;
pub mod clock;
pub mod config;
pub mod conn;
pub mod error;
pub mod events;
pub mod ledger;
pub mod metrics;
pub mod server;
pub mod service;
pub mod store;
pub mod web;

pub use server::{serve, serve_listeners, serve_with_web, Listeners, ServerConfig, TlsSettings};
