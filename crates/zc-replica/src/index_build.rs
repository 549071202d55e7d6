//! Secondary indexes of a copy, built after its rows.
//!
//! A copy's rows arrive in key order (batch by batch), but their index entries do not: an
//! index on `(issueID, created)` of three million comments receives its entries all over the
//! key space, and once that index outgrows the page cache every insert reads pages back from
//! the file. So a copy only collects index entries here. When a table's copy finishes, each of
//! its indexes is written in one pass, in key order: the entries of one index come out of an
//! external merge sort (sorted runs spilled to files next to the replica, bounded memory), and
//! redb appends them to mostly the same rightmost leaf. The merge runs beside the writer and
//! hands it chunks, which it writes between the row batches of the tables still copying.
//!
//! ```text
//!  copy batch ──entries──▶ pending (flat buffer, per index) ──full──▶ sorted run file
//!  table copied ──▶ Merge(pending, runs…) per index ──chunks in key order──▶ redb index table
//! ```
//!
//! Replaced rows (a batch re-delivering a key, which a copy from one snapshot never does) are
//! handled by counting: an entry is written if it was added more often than removed.
//!
//! Rows the copy cannot append to their table (keys out of order: random ids, or heap pages
//! that do not follow the key) are collected the same way, as a table's row build of
//! [`row_entry`]s, and written, in key order, before the table's indexes.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use redb::{TableDefinition, WriteTransaction};

use crate::error::{Error, Result};

/// Memory for pending entries of all indexes together before the largest is spilled.
const PENDING_BYTES: usize = 16 << 20;
/// Per-entry bookkeeping of a pending entry (its span in the flat buffer).
const SPAN_BYTES: usize = std::mem::size_of::<(u32, u32)>();
/// Read buffer of one run during the merge.
const RUN_READ_BUFFER: usize = 64 << 10;

/// Index entries of one batch, concatenated (one buffer instead of one allocation per entry).
#[derive(Debug, Default)]
pub(crate) struct KeyList {
    bytes: Vec<u8>,
    /// (offset, length) of each entry in `bytes`.
    spans: Vec<(u32, u32)>,
}

impl KeyList {
    pub(crate) fn with_capacity(entries: usize, bytes: usize) -> KeyList {
        KeyList {
            bytes: Vec::with_capacity(bytes),
            spans: Vec::with_capacity(entries),
        }
    }

    /// Appends the entry that `write` appends to the buffer.
    pub(crate) fn push_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) -> Result<()> {
        let at = self.bytes.len();
        write(&mut self.bytes);
        let len = self.bytes.len() - at;
        let too_long = || Error::State("index build");
        self.spans.push((
            u32::try_from(at).map_err(|_| too_long())?,
            u32::try_from(len).map_err(|_| too_long())?,
        ));
        Ok(())
    }

    /// How many entries it holds.
    pub(crate) fn len(&self) -> usize {
        self.spans.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Its bytes (entries without their bookkeeping).
    pub(crate) fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    /// The entries, in their order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.spans.iter().map(|&s| span(&self.bytes, s))
    }

    /// Sorts the entries.
    #[cfg(test)]
    pub(crate) fn sort(&mut self) {
        sort_spans(&self.bytes, &mut self.spans, &mut Vec::new());
    }
}

fn span(bytes: &[u8], (at, len): (u32, u32)) -> &[u8] {
    bytes
        .get(at as usize..at as usize + len as usize)
        .unwrap_or_default()
}

/// Sorts `spans` by the bytes they span in `bytes` (unstable: equal entries may trade places).
///
/// Index entries share long prefixes (a text column's tag and the first characters of its
/// ids, and a hundred entries of one creator share the creator), so comparing them whole
/// calls `memcmp` on bytes scattered over the buffer for every comparison. Instead the entries
/// are sorted by 8 bytes at a time, read as a number (zero-padded) and kept beside the span:
/// first the 8 after the prefix they all share, then, within each group whose 8 bytes were
/// equal, the next 8, and so on (a most-significant-digit radix sort whose digits are sorted
/// by comparison). `keyed` is scratch space (kept by the caller between sorts: a large
/// buffer freed and allocated again comes back as fresh pages, each faulted in and zeroed).
fn sort_spans(bytes: &[u8], spans: &mut [(u32, u32)], keyed: &mut Vec<(u64, (u32, u32))>) {
    let Some((&first, rest)) = spans.split_first() else {
        return;
    };
    let first = span(bytes, first);
    let mut shared = first.len();
    for &s in rest {
        let entry = span(bytes, s);
        shared = first
            .iter()
            .take(shared)
            .zip(entry)
            .take_while(|(a, b)| a == b)
            .count();
        if shared == 0 {
            break;
        }
    }
    keyed.clear();
    keyed.extend(spans.iter().map(|&s| (0, s)));
    // Groups still to sort: (start, end, offset of their digit). An explicit stack: entries
    // equal over a long stretch (a value delivered twice) would otherwise recurse deeply.
    let mut groups = vec![(0, keyed.len(), shared)];
    while let Some((start, end, depth)) = groups.pop() {
        let Some(group) = keyed.get_mut(start..end) else {
            continue;
        };
        for (digit, s) in group.iter_mut() {
            *digit = digit_at(span(bytes, *s), depth);
        }
        group.sort_unstable_by_key(|&(digit, _)| digit);
        let mut i = 0;
        while i < group.len() {
            let digit = group[i].0;
            let mut j = i + 1;
            while j < group.len() && group[j].0 == digit {
                j += 1;
            }
            if j - i > 1 {
                // Equal digits: an entry that ended within them is a prefix of the others
                // (its padding is zeros) and sorts first, shorter first; the rest go on to
                // their next 8 bytes.
                let next = depth + 8;
                let tie = &mut group[i..j];
                tie.sort_unstable_by_key(|&(_, (_, len))| {
                    if (len as usize) <= next {
                        len
                    } else {
                        u32::MAX
                    }
                });
                let continuing =
                    start + i + tie.partition_point(|&(_, (_, len))| (len as usize) <= next);
                if start + j - continuing > 1 {
                    groups.push((continuing, start + j, next));
                }
            }
            i = j;
        }
    }
    for (out, &(_, s)) in spans.iter_mut().zip(keyed.iter()) {
        *out = s;
    }
}

/// The 8 bytes of `entry` from `depth` on as a big-endian number, zero-padded past its end.
fn digit_at(entry: &[u8], depth: usize) -> u64 {
    let after = entry.get(depth..).unwrap_or_default();
    match after.first_chunk::<8>() {
        Some(d) => u64::from_be_bytes(*d),
        None => {
            let mut d = [0u8; 8];
            d[..after.len()].copy_from_slice(after);
            u64::from_be_bytes(d)
        }
    }
}

/// The index entries of a copy in progress, per index table.
#[derive(Debug)]
pub(crate) struct IndexBuilds {
    dir: PathBuf,
    /// Memory for pending entries before the largest build is spilled.
    budget: usize,
    builds: BTreeMap<String, Build>,
    pending_bytes: usize,
    next_run: u64,
    /// The sequence number of the next batch of rows added (see [`row_entry`]).
    next_row_batch: u64,
    /// Counts the copies: [`clear`](Self::clear) begins a new one.
    epoch: u64,
    /// Emptied buffers of spilled builds, for builds that need room next (at most
    /// the budget of them): freed, a buffer this large goes back to the system, and
    /// the next one comes back as fresh pages, each faulted in and zeroed (at 1M issues every
    /// index entry passed through such pages, and keeping them saved ~7% of the copy's CPU).
    spare: Vec<KeyList>,
    spare_bytes: usize,
    /// The spills' sort scratch, kept for the same reason.
    scratch: Vec<(u64, (u32, u32))>,
}

#[derive(Debug, Default)]
struct Build {
    /// Pending entries, concatenated.
    bytes: Vec<u8>,
    /// (offset, length) of each pending entry in `bytes`.
    spans: Vec<(u32, u32)>,
    /// Sorted runs already spilled.
    runs: Vec<PathBuf>,
    /// Entries of replaced rows: how often each was removed.
    removed: HashMap<Vec<u8>, u64>,
    /// Whether its entries are rows (see [`row_entry`]) rather than index entries.
    rows: bool,
}

impl Build {
    fn memory(&self) -> usize {
        self.bytes.len() + self.spans.len() * SPAN_BYTES
    }

    /// Sorts the pending entries into key order.
    fn sort_pending(&mut self, scratch: &mut Vec<(u64, (u32, u32))>) {
        sort_spans(&self.bytes, &mut self.spans, scratch);
    }

    /// Capacity of its pending buffers.
    fn capacity(&self) -> usize {
        self.bytes.capacity() + self.spans.capacity() * SPAN_BYTES
    }
}

impl IndexBuilds {
    /// Builds whose run files go to `dir` (created on the first spill).
    pub(crate) fn new(dir: PathBuf) -> IndexBuilds {
        IndexBuilds {
            dir,
            budget: PENDING_BYTES,
            builds: BTreeMap::new(),
            pending_bytes: 0,
            next_run: 0,
            next_row_batch: 0,
            epoch: 0,
            spare: Vec::new(),
            spare_bytes: 0,
            scratch: Vec::new(),
        }
    }

    /// Whether nothing is pending.
    pub(crate) fn is_empty(&self) -> bool {
        self.builds.is_empty()
    }

    /// Adds entries of the index table `table`.
    pub(crate) fn add(&mut self, table: String, keys: KeyList) -> Result<()> {
        let build = self.builds.entry(table).or_default();
        if build.capacity() == 0
            && let Some(KeyList { bytes, spans }) = self.spare.pop()
        {
            build.bytes = bytes;
            build.spans = spans;
            self.spare_bytes -= build.capacity();
        }
        let before = build.memory();
        // The offsets of the appended entries must fit u32 (so does `base`, which is smaller).
        u32::try_from(build.bytes.len() + keys.bytes.len())
            .map_err(|_| Error::State("index build"))?;
        let base = build.bytes.len() as u32;
        build.bytes.extend_from_slice(&keys.bytes);
        build
            .spans
            .extend(keys.spans.iter().map(|&(at, len)| (base + at, len)));
        self.pending_bytes += build.memory() - before;
        // The flat buffer's offsets are u32: spill a build before it could overflow them.
        let too_long = build.bytes.len() > (u32::MAX as usize) / 2;
        if self.pending_bytes > self.budget || too_long {
            self.spill_largest()?;
        }
        Ok(())
    }

    /// Adds rows of the rows table `table` that the copy could not append: `entries` appends
    /// their entries (see [`row_entry`]), given the batch's sequence number.
    pub(crate) fn add_rows(
        &mut self,
        table: String,
        entries: impl FnOnce(u64, &mut KeyList) -> Result<()>,
    ) -> Result<()> {
        let seq = self.next_row_batch;
        self.next_row_batch += 1;
        let mut rows = KeyList::default();
        entries(seq, &mut rows)?;
        self.builds.entry(table.clone()).or_default().rows = true;
        self.add(table, rows)
    }

    /// Records that an entry of `table` added earlier belongs to a row that was replaced.
    pub(crate) fn remove(&mut self, table: String, key: Vec<u8>) {
        *self
            .builds
            .entry(table)
            .or_default()
            .removed
            .entry(key)
            .or_default() += 1;
    }

    /// Writes the pending entries of the largest build to a sorted run file.
    fn spill_largest(&mut self) -> Result<()> {
        let Some((_, build)) = self.builds.iter_mut().max_by_key(|(_, b)| b.memory()) else {
            return Ok(());
        };
        if build.spans.is_empty() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| io_error(&self.dir, e))?;
        let path = self.dir.join(format!("run-{}", self.next_run));
        self.next_run += 1;
        let file = File::create(&path).map_err(|e| io_error(&path, e))?;
        let mut out = BufWriter::with_capacity(RUN_READ_BUFFER, file);
        build.sort_pending(&mut self.scratch);
        // Each entry as the length of the prefix it shares with the one before, the length
        // of the rest, and the rest: sorted neighbours share much (an index's column values,
        // the key's leading characters), and the run is written and read back whole.
        let mut prev: &[u8] = &[];
        let mut head = Vec::with_capacity(20);
        for key in build.spans.iter().map(|&s| span(&build.bytes, s)) {
            let shared = prev.iter().zip(key).take_while(|(a, b)| a == b).count();
            head.clear();
            put_varint(&mut head, shared as u64);
            put_varint(&mut head, (key.len() - shared) as u64);
            out.write_all(&head)
                .and_then(|()| out.write_all(key.get(shared..).unwrap_or_default()))
                .map_err(|e| io_error(&path, e))?;
            prev = key;
        }
        out.flush().map_err(|e| io_error(&path, e))?;
        self.pending_bytes -= build.memory();
        build.bytes.clear();
        build.spans.clear();
        build.runs.push(path);
        let room = build.capacity();
        if self.spare_bytes + room <= self.budget {
            self.spare_bytes += room;
            self.spare.push(KeyList {
                bytes: std::mem::take(&mut build.bytes),
                spans: std::mem::take(&mut build.spans),
            });
        } else {
            build.bytes = Vec::new();
            build.spans = Vec::new();
        }
        Ok(())
    }

    /// Writes every collected index, one write transaction each (non-durable: the caller's
    /// durable commit follows), and forgets them.
    pub(crate) fn write_all(&mut self, db: &redb::Database) -> Result<usize> {
        // Rows are written by the copy's end of their table, before its indexes.
        if self.builds.values().any(|b| b.rows) {
            return Err(Error::State("rows of a copied table left unwritten"));
        }
        let tables: Vec<String> = self.builds.keys().cloned().collect();
        let written = self.write_tables(db, &tables)?;
        self.clear();
        Ok(written)
    }

    /// Takes the collected entries of the index tables `tables` (those it has) out, for
    /// [`write_taken`] to write without holding the builds.
    pub(crate) fn take_tables(&mut self, tables: &[String]) -> TakenBuilds {
        let mut taken = Vec::new();
        for table in tables {
            if let Some(build) = self.builds.remove(table) {
                self.pending_bytes -= build.memory();
                taken.push((table.clone(), build));
            }
        }
        TakenBuilds(taken)
    }

    /// Writes the collected entries of the index tables `tables` (those it has), one write
    /// transaction each (non-durable), and forgets them.
    pub(crate) fn write_tables(&mut self, db: &redb::Database, tables: &[String]) -> Result<usize> {
        write_taken(db, self.take_tables(tables))
    }

    /// Which copy the builds collect for: entries encoded for an earlier copy (one that was
    /// interrupted while a batch was being encoded) must not be added.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Forgets everything collected (an interrupted copy) and removes the run files; a new
    /// copy begins.
    pub(crate) fn clear(&mut self) {
        self.epoch += 1;
        self.builds.clear();
        self.pending_bytes = 0;
        self.spare = Vec::new();
        self.spare_bytes = 0;
        self.scratch = Vec::new();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Index builds taken out of an [`IndexBuilds`] to be written.
#[derive(Debug)]
pub(crate) struct TakenBuilds(Vec<(String, Build)>);

impl TakenBuilds {
    /// One merge per taken build (sorting its pending entries).
    pub(crate) fn into_merges(self) -> Result<Vec<Merge>> {
        self.0
            .into_iter()
            .map(|(table, build)| Merge::new(table, build))
            .collect()
    }
}

/// Writes taken builds, one write transaction each (non-durable), and removes their run files.
pub(crate) fn write_taken(db: &redb::Database, taken: TakenBuilds) -> Result<usize> {
    let mut written = 0;
    for mut merge in taken.into_merges()? {
        let w = {
            let mut w = db.begin_write()?;
            w.set_durability(redb::Durability::None)?;
            w
        };
        while let Some(chunk) = merge.next_chunk(MERGE_CHUNK)? {
            written += chunk.len();
            write_chunk(&w, merge.table(), &chunk)?;
        }
        w.commit()?;
    }
    Ok(written)
}

/// Entries a merge yields at a time: the copy writes them between its row batches.
pub(crate) const MERGE_CHUNK: usize = 64 * 1024;
/// Bytes of entries after which a chunk ends before `MERGE_CHUNK` entries: the merges of
/// tables copied at once each have a chunk being written and the next one waiting (64k rows
/// of a row build are several MiB).
const MERGE_CHUNK_BYTES: usize = 1 << 20;

/// Appends a row's build entry: its key, the sequence number of its batch (big endian), its
/// stored value, and the key's length (`u32`, little endian) last. Keys are prefix-free (see
/// [`crate::key`]), so entries sort by key first, and a key delivered twice by arrival.
pub(crate) fn row_entry(out: &mut Vec<u8>, key: &[u8], seq: u64, value: &[u8]) {
    // redb keys are far shorter than 4 GiB; a longer one would fail its split, not pass.
    let len = u32::try_from(key.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(key);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(value);
    out.extend_from_slice(&len.to_le_bytes());
}

/// A row build entry's (key, stored value).
pub(crate) fn split_row_entry(entry: &[u8]) -> Result<(&[u8], &[u8])> {
    let bad = || Error::State("row build entry");
    let at = entry.len().checked_sub(4).ok_or_else(bad)?;
    let (row, len) = entry.split_at_checked(at).ok_or_else(bad)?;
    let len = u32::from_le_bytes(len.try_into().map_err(|_| bad())?) as usize;
    let (key, rest) = row.split_at_checked(len).ok_or_else(bad)?;
    let value = rest.get(8..).ok_or_else(bad)?;
    Ok((key, value))
}

/// Inserts a chunk of a [`Merge`] (sorted, each key once) into the index table `table`.
///
/// The keys go through a cursor at the gap where the chunk's first key belongs: into a table
/// filled by the chunks before it (the usual case: the copy cleared it), that is the end, and
/// the keys are appended to the rightmost leaf, packing full leaves instead of descending the
/// tree and splitting a leaf per key. The first key that does not fit the gap (the table held
/// entries of its own) ends the run; it and the rest take the ordinary path.
pub(crate) fn write_chunk(w: &WriteTransaction, table: &str, chunk: &KeyList) -> Result<()> {
    let mut index = w.open_table(TableDefinition::<&[u8], ()>::new(table))?;
    let mut keys = chunk.iter().peekable();
    let gap = match keys.peek() {
        Some(&first) => std::ops::Bound::Excluded(first),
        None => return Ok(()),
    };
    let mut unordered = None;
    let mut cursor = index.upper_bound_mut(gap)?;
    for key in keys.by_ref() {
        match cursor.insert_before(key, ()) {
            Ok(()) => {}
            Err(redb::CursorError::UnorderedKey) => {
                unordered = Some(key);
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    cursor.close()?;
    for key in unordered.into_iter().chain(keys) {
        index.insert(key, ())?;
    }
    Ok(())
}

/// The merge of one build's sorted runs and pending entries: every key that was added more
/// often than removed, once, in ascending order, a chunk at a time. It owns what it merges, so
/// the copy merges a table's indexes on a thread of its own and hands the writer sorted
/// chunks. Its run files are removed when it is dropped.
pub(crate) struct Merge {
    table: String,
    runs: Vec<Run>,
    /// The head entry of each run, with the run's position.
    heap: BinaryHeap<Reverse<(Vec<u8>, usize)>>,
    /// The pending entries: their bytes, their spans in key order, and the next one's position.
    bytes: Vec<u8>,
    spans: Vec<(u32, u32)>,
    next_pending: usize,
    removed: HashMap<Vec<u8>, u64>,
    /// The last key taken and how often it was added so far (equal keys come together).
    last: Option<(Vec<u8>, u64)>,
}

impl std::fmt::Debug for Merge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Merge")
            .field("table", &self.table)
            .field("runs", &self.runs.len())
            .field("pending", &(self.spans.len() - self.next_pending))
            .finish()
    }
}

impl Merge {
    fn new(table: String, mut build: Build) -> Result<Merge> {
        build.sort_pending(&mut Vec::new());
        let Build {
            bytes,
            spans,
            runs: paths,
            removed,
            rows: _,
        } = build;
        let mut merge = Merge {
            table,
            // Listed before they are opened: the merge's drop removes the files of a failed
            // open too.
            runs: paths
                .into_iter()
                .map(|path| Run {
                    path,
                    reader: None,
                    prev: Vec::new(),
                })
                .collect(),
            heap: BinaryHeap::new(),
            bytes,
            spans,
            next_pending: 0,
            removed,
            last: None,
        };
        for run in &mut merge.runs {
            let file = File::open(&run.path).map_err(|e| io_error(&run.path, e))?;
            run.reader = Some(BufReader::with_capacity(RUN_READ_BUFFER, file));
        }
        for (i, run) in merge.runs.iter_mut().enumerate() {
            if let Some(key) = run.next()? {
                merge.heap.push(Reverse((key, i)));
            }
        }
        Ok(merge)
    }

    /// The index table this merge writes.
    pub(crate) fn table(&self) -> &str {
        &self.table
    }

    /// Puts the next smallest key of the runs and the pending entries (with duplicates) in
    /// `out`; false at the end. A run's key is swapped in, and `out`'s buffer goes back to
    /// that run for its next entry: the merge allocates nothing per key.
    fn take(&mut self, out: &mut Vec<u8>) -> Result<bool> {
        let pending = self
            .spans
            .get(self.next_pending)
            .map(|&s| span(&self.bytes, s));
        let from_pending = match (self.heap.peek(), pending) {
            (None, None) => return Ok(false),
            (Some(Reverse((k, _))), Some(p)) => p < k.as_slice(),
            (None, Some(_)) => true,
            (Some(_), None) => false,
        };
        if from_pending {
            self.next_pending += 1;
            out.clear();
            out.extend_from_slice(pending.unwrap_or_default());
            return Ok(true);
        }
        let Some(Reverse((mut key, i))) = self.heap.pop() else {
            return Ok(false);
        };
        std::mem::swap(out, &mut key);
        if let Some(run) = self.runs.get_mut(i)
            && run.next_into(&mut key)?
        {
            self.heap.push(Reverse((key, i)));
        }
        Ok(true)
    }

    /// Up to `max` more keys (fewer once they hold `MERGE_CHUNK_BYTES`), in order; `None`
    /// once every key was yielded.
    pub(crate) fn next_chunk(&mut self, max: usize) -> Result<Option<KeyList>> {
        let mut chunk = KeyList::with_capacity(max.min(4096), max.min(4096) * 32);
        let mut key = Vec::new();
        while chunk.len() < max && chunk.byte_len() < MERGE_CHUNK_BYTES {
            if !self.take(&mut key)? {
                // The end: the last key is complete.
                if let Some((prev, count)) = self.last.take() {
                    self.put_counted(&mut chunk, &prev, count)?;
                }
                break;
            }
            match &mut self.last {
                Some((prev, count)) if *prev == key => *count += 1,
                Some((prev, count)) => {
                    let added = std::mem::replace(count, 1);
                    std::mem::swap(prev, &mut key);
                    // `key` holds the previous key now.
                    self.put_counted(&mut chunk, &key, added)?;
                }
                None => self.last = Some((std::mem::take(&mut key), 1)),
            }
        }
        Ok((!chunk.is_empty()).then_some(chunk))
    }

    /// Adds `key` to `chunk` if it was added (`added` times) more often than removed.
    fn put_counted(&self, chunk: &mut KeyList, key: &[u8], added: u64) -> Result<()> {
        let removed = if self.removed.is_empty() {
            0
        } else {
            self.removed.get(key).copied().unwrap_or(0)
        };
        if added > removed {
            chunk.push_with(|out| out.extend_from_slice(key))?;
        }
        Ok(())
    }
}

impl Drop for Merge {
    fn drop(&mut self) {
        for run in &self.runs {
            let _ = std::fs::remove_file(&run.path);
        }
    }
}

#[derive(Debug)]
struct Run {
    path: PathBuf,
    reader: Option<BufReader<File>>,
    /// The entry read last (the next one is written as what it shares with it, and the rest).
    prev: Vec<u8>,
}

impl Run {
    /// The run's next entry, or `None` at its end.
    fn next(&mut self) -> Result<Option<Vec<u8>>> {
        let mut key = Vec::new();
        Ok(self.next_into(&mut key)?.then_some(key))
    }

    /// Reads the run's next entry into `key` (replacing what it held); false at its end.
    fn next_into(&mut self, key: &mut Vec<u8>) -> Result<bool> {
        let Some(reader) = self.reader.as_mut() else {
            return Ok(false);
        };
        let Some(shared) = get_varint(reader).map_err(|e| io_error(&self.path, e))? else {
            return Ok(false);
        };
        let rest = get_varint(reader)
            .and_then(|r| r.ok_or_else(|| std::io::ErrorKind::UnexpectedEof.into()))
            .map_err(|e| io_error(&self.path, e))?;
        let (Ok(shared), Ok(rest)) = (usize::try_from(shared), usize::try_from(rest)) else {
            return Err(Error::State("index build run"));
        };
        let Some(prefix) = self.prev.get(..shared) else {
            return Err(Error::State("index build run"));
        };
        key.clear();
        key.extend_from_slice(prefix);
        key.resize(shared + rest, 0);
        reader
            .read_exact(&mut key[shared..])
            .map_err(|e| io_error(&self.path, e))?;
        self.prev.clear();
        self.prev.extend_from_slice(key);
        Ok(true)
    }
}

/// Appends `n` as a LEB128 varint (7 bits a byte, low first).
fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Reads a LEB128 varint; `None` at the end of the input before its first byte.
fn get_varint(reader: &mut impl Read) -> std::io::Result<Option<u64>> {
    let mut n = 0u64;
    for i in 0..10 {
        let mut b = [0u8; 1];
        match reader.read_exact(&mut b) {
            Ok(()) => {}
            Err(e) if i == 0 && e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
        n |= u64::from(b[0] & 0x7f) << (7 * i);
        if b[0] & 0x80 == 0 {
            return Ok(Some(n));
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "varint longer than 10 bytes",
    ))
}

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::IndexBuild {
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    use redb::{ReadableDatabase, ReadableTable};

    const TABLE: &str = "i:t:ix";

    fn stored(db: &redb::Database) -> Vec<Vec<u8>> {
        let r = db.begin_read().expect("read");
        let t = r
            .open_table(TableDefinition::<&[u8], ()>::new(TABLE))
            .expect("table");
        t.iter()
            .expect("iter")
            .map(|e| e.expect("entry").0.value().to_vec())
            .collect()
    }

    fn list(keys: &[Vec<u8>]) -> KeyList {
        let mut list = KeyList::default();
        for key in keys {
            list.push_with(|out| out.extend_from_slice(key))
                .expect("push");
        }
        list.sort();
        list
    }

    /// An index table that already holds entries is written by ordinary inserts: old and new
    /// entries are all there, in order.
    #[test]
    fn a_build_into_a_table_with_entries_keeps_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = redb::Database::create(dir.path().join("db")).expect("db");
        let w = db.begin_write().expect("write");
        {
            let mut t = w
                .open_table(TableDefinition::<&[u8], ()>::new(TABLE))
                .expect("table");
            for k in [b"b".as_slice(), b"d"] {
                t.insert(k, ()).expect("insert");
            }
        }
        w.commit().expect("commit");
        let mut builds = IndexBuilds::new(dir.path().join("runs"));
        let keys: Vec<Vec<u8>> = [b"a", b"c", b"e"].iter().map(|k| k.to_vec()).collect();
        builds.add(TABLE.to_owned(), list(&keys)).expect("add");
        assert_eq!(builds.write_all(&db).expect("write"), 3);
        let all: Vec<Vec<u8>> = [b"a", b"b", b"c", b"d", b"e"]
            .iter()
            .map(|k| k.to_vec())
            .collect();
        assert_eq!(stored(&db), all);
    }

    /// Entries added in random batches, some of them removed again (replaced rows), with a
    /// budget small enough for many spilled runs: the index holds exactly the entries added
    /// more often than removed, and the run files are gone afterwards.
    #[test]
    fn merged_runs_and_pending_entries_make_the_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = redb::Database::create(dir.path().join("db")).expect("db");
        let build_dir = dir.path().join("runs");
        let mut builds = IndexBuilds::new(build_dir.clone());
        builds.budget = 4 << 10;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut keys: Vec<Vec<u8>> = (0..5_000u32)
            .map(|i| {
                let mut k = i.to_be_bytes().to_vec();
                k.extend(std::iter::repeat_n(b'x', rng.random_range(0..20)));
                k
            })
            .collect();
        keys.shuffle(&mut rng);
        let mut expected = std::collections::BTreeSet::new();
        for chunk in keys.chunks(97) {
            builds.add(TABLE.to_owned(), list(chunk)).expect("add");
            expected.extend(chunk.iter().cloned());
        }
        assert!(builds.next_run > 10, "the budget forces spilled runs");
        // A key re-added after its removal stays; a key only removed goes.
        let again = keys[0].clone();
        builds.remove(TABLE.to_owned(), again.clone());
        builds
            .add(TABLE.to_owned(), list(std::slice::from_ref(&again)))
            .expect("add");
        for gone in &keys[1..50] {
            builds.remove(TABLE.to_owned(), gone.clone());
            expected.remove(gone);
        }
        let written = builds.write_all(&db).expect("write");
        assert_eq!(written, expected.len());
        assert_eq!(stored(&db), expected.into_iter().collect::<Vec<_>>());
        assert!(!build_dir.exists(), "run files are removed");
        assert!(builds.is_empty());
    }

    /// Run files write lengths as varints: every boundary of their 7-bit groups reads back,
    /// the end of a file before a varint is the end of the run, and a cut one is an error.
    #[test]
    fn varints_read_back() {
        let values = [
            0,
            1,
            127,
            128,
            255,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ];
        let mut buf = Vec::new();
        for &v in &values {
            put_varint(&mut buf, v);
        }
        let mut reader = buf.as_slice();
        for &v in &values {
            assert_eq!(get_varint(&mut reader).expect("read"), Some(v));
        }
        assert_eq!(get_varint(&mut reader).expect("end"), None);
        let mut cut: &[u8] = &[0x80];
        assert!(get_varint(&mut cut).is_err());
    }

    /// The sort by the numbers after the shared prefix orders entries as comparing them
    /// whole does: entries that are prefixes of others, zero bytes where the padding is, a
    /// long shared prefix, ties that only the last bytes decide.
    #[test]
    fn spans_sort_as_their_bytes_do() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for round in 0..300 {
            let shared_prefix: Vec<u8> = (0..rng.random_range(0..20)).map(|_| b'p').collect();
            let alphabet: &[u8] = if round % 2 == 0 {
                &[0, 1, 255]
            } else {
                &[0, 7]
            };
            let mut entries: Vec<Vec<u8>> = (0..rng.random_range(0..200))
                .map(|_| {
                    let mut e = shared_prefix.clone();
                    for _ in 0..rng.random_range(0..24) {
                        e.push(alphabet[rng.random_range(0..alphabet.len())]);
                    }
                    e
                })
                .collect();
            let mut list = KeyList::default();
            for e in &entries {
                list.push_with(|out| out.extend_from_slice(e))
                    .expect("push");
            }
            list.sort();
            entries.sort();
            let sorted: Vec<Vec<u8>> = list.iter().map(<[u8]>::to_vec).collect();
            assert_eq!(sorted, entries, "round {round}");
        }
    }

    #[test]
    fn cleared_builds_write_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = redb::Database::create(dir.path().join("db")).expect("db");
        let mut builds = IndexBuilds::new(dir.path().join("runs"));
        builds.budget = 64;
        builds
            .add(
                TABLE.to_owned(),
                list(
                    &(0..100u32)
                        .map(|i| i.to_be_bytes().to_vec())
                        .collect::<Vec<_>>(),
                ),
            )
            .expect("add");
        builds.clear();
        assert_eq!(builds.write_all(&db).expect("write"), 0);
        assert!(!dir.path().join("runs").exists());
    }
}
