//! Fakes of the server's other ports: metrics export, the store, the probe file.

use std::collections::HashMap;
use std::sync::Mutex;

use super::lock;
use crate::model::ProbeConfig;
use crate::ports::{MetricsExporter, PoolSource, PoolSourceError, Record, Store, StoreError};
use crate::snapshot::Snapshot;

// === CapturingExporter ===

/// A [`MetricsExporter`] that keeps every settled snapshot published to it, and answers a
/// scrape with one line per series of the latest one and of the live part
/// (`name{label="value"} number`), which is enough for a test to find a series.
#[derive(Debug, Default)]
pub struct CapturingExporter {
    published: Mutex<Vec<Snapshot>>,
}

impl CapturingExporter {
    /// An exporter that has seen nothing.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Every settled snapshot published, in order.
    #[must_use]
    pub fn snapshots(&self) -> Vec<Snapshot> {
        lock(&self.published).clone()
    }

    /// The latest settled snapshot published.
    #[must_use]
    pub fn last(&self) -> Option<Snapshot> {
        lock(&self.published).last().cloned()
    }
}

impl MetricsExporter for CapturingExporter {
    fn publish(&self, settled: &Snapshot) {
        lock(&self.published).push(settled.clone());
    }

    fn scrape(&self, live: &Snapshot) -> Vec<u8> {
        let settled = self.last();
        let mut text = String::new();
        for family in settled.iter().chain([live]).flat_map(|s| &s.families) {
            for series in &family.series {
                let labels: Vec<String> = family
                    .label_names
                    .iter()
                    .zip(&series.label_values)
                    .map(|(name, value)| format!("{name}={value:?}"))
                    .collect();
                let value = series
                    .number()
                    .map_or_else(|| "histogram".to_owned(), |number| number.to_string());
                text.push_str(&format!(
                    "{}{{{}}} {value}\n",
                    family.name,
                    labels.join(",")
                ));
            }
        }
        text.into_bytes()
    }
}

// === MemoryStore ===

/// A [`Store`] in memory that enforces each record's size limit, and can be told to fail
/// writes (a full disk).
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<StoreState>,
}

#[derive(Debug, Default)]
struct StoreState {
    records: HashMap<Record, Vec<u8>>,
    set_aside: Vec<(Record, Vec<u8>)>,
    failing_writes: bool,
}

impl MemoryStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The records moved aside as damaged, in order.
    #[must_use]
    pub fn set_aside_records(&self) -> Vec<(Record, Vec<u8>)> {
        lock(&self.state).set_aside.clone()
    }

    /// Makes writes fail (`true`) or succeed again.
    pub fn fail_writes(&self, failing: bool) {
        lock(&self.state).failing_writes = failing;
    }

    /// Puts `bytes` in `record` directly (a file left by an older process, or a damaged one).
    pub fn put(&self, record: Record, bytes: Vec<u8>) {
        lock(&self.state).records.insert(record, bytes);
    }
}

impl Store for MemoryStore {
    fn read(&self, record: Record) -> Result<Option<Vec<u8>>, StoreError> {
        let state = lock(&self.state);
        match state.records.get(&record) {
            Some(bytes) if bytes.len() as u64 > record.max_bytes() => Err(StoreError {
                operation: "reading",
                location: format!("memory:{}", record.name()),
                cause: format!("larger than {} bytes", record.max_bytes()),
            }),
            found => Ok(found.cloned()),
        }
    }

    fn write(&self, record: Record, bytes: &[u8]) -> Result<(), StoreError> {
        let mut state = lock(&self.state);
        let failure = |cause: String| StoreError {
            operation: "writing",
            location: format!("memory:{}", record.name()),
            cause,
        };
        if state.failing_writes {
            return Err(failure("no space left on device".into()));
        }
        if bytes.len() as u64 > record.max_bytes() {
            return Err(failure(format!("larger than {} bytes", record.max_bytes())));
        }
        state.records.insert(record, bytes.to_vec());
        Ok(())
    }

    fn remove(&self, record: Record) -> Result<(), StoreError> {
        lock(&self.state).records.remove(&record);
        Ok(())
    }

    fn set_aside(&self, record: Record) -> Result<String, StoreError> {
        let mut state = lock(&self.state);
        if let Some(bytes) = state.records.remove(&record) {
            state.set_aside.push((record, bytes));
        }
        Ok(format!("memory:{}.bad", record.name()))
    }
}

// === FakePoolSource ===

/// A [`PoolSource`] that hands out whatever the test set last (none at first), or an error.
#[derive(Debug, Default)]
pub struct FakePoolSource {
    answer: Mutex<Option<Result<Vec<ProbeConfig>, PoolSourceError>>>,
    loads: Mutex<usize>,
}

impl FakePoolSource {
    /// A source with no blocks.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Answers `answer` from now on.
    pub fn set(&self, answer: Result<Vec<ProbeConfig>, PoolSourceError>) {
        *lock(&self.answer) = Some(answer);
    }

    /// How many times the blocks were loaded.
    #[must_use]
    pub fn loads(&self) -> usize {
        *lock(&self.loads)
    }
}

impl PoolSource for FakePoolSource {
    fn load(&self) -> Result<Vec<ProbeConfig>, PoolSourceError> {
        *lock(&self.loads) += 1;
        lock(&self.answer).clone().unwrap_or(Ok(Vec::new()))
    }

    fn describe(&self) -> String {
        "the test's probe file".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::UnixMillis;

    #[test]
    fn exporter_keeps_every_published_snapshot() {
        let exporter = CapturingExporter::new();
        let first = Snapshot {
            taken_at: UnixMillis(1),
            families: Vec::new(),
        };
        let second = Snapshot {
            taken_at: UnixMillis(2),
            families: Vec::new(),
        };
        exporter.publish(&first);
        exporter.publish(&second);
        assert_eq!(exporter.snapshots(), [first, second.clone()]);
        assert_eq!(exporter.last(), Some(second));
        assert!(exporter.scrape(&Snapshot::default()).is_empty());
    }

    #[test]
    fn the_memory_store_keeps_limits_and_sets_damaged_records_aside() {
        let store = MemoryStore::new();
        assert_eq!(store.read(Record::OpenWindows), Ok(None));
        store.write(Record::OpenWindows, b"windows").unwrap();
        assert_eq!(
            store.read(Record::OpenWindows),
            Ok(Some(b"windows".to_vec()))
        );
        store.fail_writes(true);
        let full = store.write(Record::OpenWindows, b"newer").unwrap_err();
        assert!(full.to_string().contains("no space left"), "{full}");
        assert_eq!(
            store.read(Record::OpenWindows),
            Ok(Some(b"windows".to_vec()))
        );
        let aside = store.set_aside(Record::OpenWindows).unwrap();
        assert!(aside.ends_with(".bad"));
        assert_eq!(store.read(Record::OpenWindows), Ok(None));
        assert_eq!(
            store.set_aside_records(),
            [(Record::OpenWindows, b"windows".to_vec())]
        );
    }

    #[test]
    fn the_pool_source_answers_what_was_set() {
        let source = FakePoolSource::new();
        assert_eq!(source.load(), Ok(Vec::new()));
        source.set(Err(PoolSourceError("line 3: bad".into())));
        assert_eq!(source.load(), Err(PoolSourceError("line 3: bad".into())));
        assert_eq!(source.loads(), 2);
    }
}
