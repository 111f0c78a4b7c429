//! Classification in userspace: the rule compiler (config → rule maps). The provider
//! catalog, the DNS/TLS/QUIC/HTTP parsers and the punt consumer join it here.

pub mod catalog;
pub mod compile;
pub mod tls;
pub mod quic;
pub mod dns;
pub mod learn;
pub mod frame;
pub mod http;
