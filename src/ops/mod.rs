//! The operations, each written once over both backends.

pub mod focal;
