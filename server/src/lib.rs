//! stagecache-server: the gRPC services (`Cas`, `Manifests`, `Refs`, health, reflection)
//! over a [`store::Store`] — blob bytes in an `object_store` backend, the index in RocksDB.
//!
//! Layers, and what each must not know: `service` decodes and validates requests and maps
//! errors to statuses, knowing nothing of RocksDB; `store` keeps bytes and records and
//! their invariants, knowing nothing of gRPC or pipelines; the rules both sides share
//! (digests, manifests, names) come from `stagecache-proto`.

pub mod access;
pub mod auth;
pub mod clock;
pub mod error;
pub mod events;
pub mod ledger;
pub mod server;
pub mod service;
pub mod store;
pub mod web;

pub use server::{serve, serve_with_web, ServerConfig, TlsSettings};
