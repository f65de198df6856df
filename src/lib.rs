//! imchat (layout being moved).

pub mod protocol;
pub mod server;

#[cfg(feature = "client")]
pub mod bench;
#[cfg(feature = "client")]
pub mod cli;
#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "client")]
pub mod scenario;
