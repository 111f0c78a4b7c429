//! Uplinks: per-uplink routing tables and fwmark rules, health, failover.
