//! inferlane: a router daemon that recognises AI traffic on the wire, queues and
//! routes it by class, and reports it. See ../shared/DESIGN.md for the architecture.

pub mod config;
pub mod lab;
pub mod bpf;
pub mod classify;
pub mod control;
pub mod daemon;
pub mod export;
pub mod flow;
pub mod mem;
pub mod qos;
pub mod restart;
pub mod systemd;
pub mod uplink;
