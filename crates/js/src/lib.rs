//! sluice-js
