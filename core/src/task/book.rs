//! The server's book of tasks (being written).
