//! Queues: HTB trees per uplink built through rtnetlink, rates that follow the active uplink.
