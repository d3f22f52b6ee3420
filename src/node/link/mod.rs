//! The links to other nodes and brokers: an edge's upstream link and its NATS feed, the head
//! the NATS publisher and its signatures, and the native clients' dialer.

pub(crate) mod bootstrap;
pub mod dial;
pub(crate) mod follow;
pub mod publish;
pub(crate) mod token_file;
pub(crate) mod upstream;
pub(crate) mod vouch;
