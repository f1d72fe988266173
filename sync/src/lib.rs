//! `roost-sync`: how a site and its region agree, once built.
//!
//! This crate is empty today. It will hold the Automerge site documents, the
//! sans-IO sync session (quinn-proto style: `handle_message`,
//! `poll_message`, `handle_timeout(now)`, `poll_timeout`) and the QUIC
//! transport with mutual TLS; see the sync issue and ARCHITECTURE.md.
//!
//! What the agent already guarantees for it: every write passes through one
//! writer (`roost_edge_agent::store`), in one transaction, so the change
//! record this crate needs can be added to that same transaction.
