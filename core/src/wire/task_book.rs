//! The task book record (being written).

/// Largest task book record, in bytes.
pub const MAX_TASK_BOOK_BYTES: u64 = 256 * 1024 * 1024;
