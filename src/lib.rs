//! imchat (layout being moved).

pub mod protocol;
pub mod server;

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "client")]
pub mod scenario;
