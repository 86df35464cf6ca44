//! stagecache-client: the async library that pipeline steps use to talk to a
//! stagecache server, and the `stagecache` CLI built on it.
//!
//! It owns the client side of the protocol: hashing trees in parallel, uploading only what
//! the server lacks, verifying every byte it downloads before renaming a file into place,
//! retrying when the server is briefly unavailable. The rules themselves (digests,
//! manifests, names) come from `stagecache-proto`; nothing here knows how the server
//! stores anything.
//!
//! ```no_run
//! # async fn demo() -> Result<(), stagecache_client::ClientError> {
//! use stagecache_client::{Client, ClientConfig};
//! let client = Client::connect(ClientConfig::new("http://127.0.0.1:50051", "prod")?).await?;
//! let registered = client.register("signed-assets/".as_ref(), "bar/12345", &Default::default()).await?;
//! println!("manifest {}", registered.manifest);
//! let fetched = client.fetch(registered.manifest, "out/".as_ref(), &Default::default()).await?;
//! println!("{} files downloaded, {} already present", fetched.downloaded_files, fetched.skipped_files);
//! # Ok(()) }
//! ```

pub mod cli;
pub mod client;
pub mod command;
pub mod credentials;
pub mod error;
pub mod fetch;
pub mod ledger;
pub mod output;
pub mod progress;
pub mod register;
pub mod retry;
pub mod tree;
pub mod wait;

pub use client::{Client, ClientConfig, Secret, TlsOptions};
pub use error::{ClientError, Result};
pub use fetch::{FetchOptions, FetchReport};
pub use register::{RegisterOptions, RegisterReport};
pub use stagecache_proto::{Digest, Manifest, ManifestEntry};
/// Views computed once and rendered by the CLI and the web page (crate `stagecache-view`).
pub use stagecache_view as view;
/// Stage graph files, shared with the server's web page (crate `stagecache-view`).
pub use stagecache_view::stages;
