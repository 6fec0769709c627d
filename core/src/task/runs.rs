//! The agent's runs (being written).
