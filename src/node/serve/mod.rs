//! The serving path: sockets accepted and gated, connections, subscriptions, the fan-out hub,
//! the byte budgets, and writes routed by the node's role to the writer thread.

pub(crate) mod accept;
pub(crate) mod background;
pub(crate) mod budget;
pub(crate) mod conn;
pub(crate) mod gate;
pub(crate) mod hub;
pub(crate) mod image;
pub(crate) mod out;
pub(crate) mod role;
pub(crate) mod sub;
pub(crate) mod writer;
