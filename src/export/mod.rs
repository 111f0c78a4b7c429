//! Flow export: IPFIX (RFC 7011), NetFlow v9 (RFC 3954) and v5 encoders and the UDP sender.
