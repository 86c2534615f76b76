//! sluice-pii
