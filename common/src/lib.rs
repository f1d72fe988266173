//! Roost's shared vocabulary: the resource model, ids, config schemas, API
//! request types and the one validation path that config files and APIs share.
//!
//! What lives here:
//! - [`model`]: every resource as `Resource<Spec, Status>`. *Spec* is what
//!   someone wants; *status* is what is true and is written only by the site
//!   that owns the resource. Reconcilers drive the world from spec to status.
//! - [`validate`]: [`validate::FieldError`] names the field, the value and the
//!   rule that was broken. Every spec has a `validate` function; config files
//!   and API handlers both call it, so the two cannot drift.
//! - [`config`]: the site, region and edge-network config files
//!   (`deny_unknown_fields`), loaded and validated by [`config::load`].
//! - [`api`]: request bodies of the OpenStack-shaped APIs, parsed into specs
//!   through the same validation.
//! - [`policy`]: who may do what (oslo.policy rules, Keystone's admin,
//!   member and reader defaults, the operator's YAML overrides).
//!
//! What does not live here: I/O of any kind (no files beyond reading a config,
//! no sockets, no SQLite). Crates that do I/O depend on this one, never the
//! reverse.

pub mod api;
pub mod config;
pub mod files;
pub mod ids;
pub mod model;
pub mod policy;
pub mod validate;

pub use validate::FieldError;
