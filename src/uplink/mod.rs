//! Uplinks: per-uplink routing tables and fwmark rules, health, failover.
pub mod steer;
