//! Uplinks: per-uplink routing tables and fwmark rules, health, failover.
//!
//! - [`health`]: the pure health state machine (Up/Down, thresholds, damping, figures).
//! - [`probe`]: ICMP/TCP/DNS probes that leave only through one uplink.
//! - [`monitor`]: the task that runs probe rounds and feeds the state machine.

pub mod health;
pub mod monitor;
pub mod probe;
