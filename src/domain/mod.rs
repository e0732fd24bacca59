//! The publish procedure's rules as plain types and functions: no I/O, no
//! async. Every 422 the API answers is born here.

pub mod access;
pub mod callback;
pub mod index;
pub mod labels;
pub mod naming;
pub mod platform;
pub mod publish_via;
pub mod retry;
pub mod slug;
pub mod source;
pub mod spec;
pub mod status;
pub mod text;
