//! One client group's record, in memory.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::version::CvrVersion;

/// A row of the client group's view: its table (as queries name it) and its primary key
/// as a JSON object of the key columns (the `id` of a row `del`).
///
/// A group keeps several copies of every id (its rows, their order by version, what is
/// dirty, the rows' values): the strings are shared, so a copy costs two reference counts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RowId {
    /// The table.
    pub table: Arc<str>,
    /// The key, a JSON object text.
    pub key: Arc<str>,
}

impl RowId {
    /// The id of the row of `table` whose key object is `key`.
    pub fn new(table: impl Into<Arc<str>>, key: impl Into<Arc<str>>) -> RowId {
        RowId {
            table: table.into(),
            key: key.into(),
        }
    }
}

/// A row's reference count per query hash. Rows are held by few queries (mostly one), so
/// this is a short list sorted by hash, whose hash strings the group shares; a single
/// entry is kept inline, without an allocation of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refs(RefList);

/// The entries of [`Refs`]: `One` exactly when there is one (so that equal lists are
/// equal values), else `Many`, sorted by hash.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RefList {
    One([(Arc<str>, u32); 1]),
    Many(Vec<(Arc<str>, u32)>),
}

impl Default for Refs {
    fn default() -> Refs {
        Refs(RefList::Many(Vec::new()))
    }
}

impl Refs {
    /// The count of `hash`.
    pub fn get(&self, hash: &str) -> Option<&u32> {
        let list = self.as_slice();
        self.find(hash)
            .ok()
            .and_then(|i| list.get(i))
            .map(|(_, n)| n)
    }

    pub fn contains_key(&self, hash: &str) -> bool {
        self.find(hash).is_ok()
    }

    pub fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    /// `(hash, count)` in hash order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u32)> {
        self.as_slice().iter().map(|(h, n)| (&**h, *n))
    }

    fn as_slice(&self) -> &[(Arc<str>, u32)] {
        match &self.0 {
            RefList::One(one) => one,
            RefList::Many(many) => many,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [(Arc<str>, u32)] {
        match &mut self.0 {
            RefList::One(one) => one,
            RefList::Many(many) => many,
        }
    }

    /// Sets the count of `hash` (`hash` is called only for a hash not held yet).
    fn set(&mut self, hash: &str, count: u32, shared: impl FnOnce() -> Arc<str>) {
        match self.find(hash) {
            Ok(i) => {
                if let Some(slot) = self.as_mut_slice().get_mut(i) {
                    slot.1 = count;
                }
            }
            Err(i) => {
                let entry = (shared(), count);
                let list = std::mem::take(self);
                self.0 = match list.0 {
                    RefList::Many(many) if many.is_empty() => RefList::One([entry]),
                    RefList::One([first]) => {
                        let mut many = Vec::with_capacity(2);
                        many.push(first);
                        many.insert(i, entry);
                        RefList::Many(many)
                    }
                    RefList::Many(mut many) => {
                        many.insert(i, entry);
                        RefList::Many(many)
                    }
                };
            }
        }
    }

    /// Replaces each hash string with the one in `set` (adding it there when new), so that
    /// rows loaded from the store share one string per hash as `adjust_row`'s do.
    fn share(&mut self, set: &mut BTreeSet<Arc<str>>) {
        for (hash, _) in self.as_mut_slice() {
            match set.get(&**hash) {
                Some(shared) => *hash = Arc::clone(shared),
                None => {
                    set.insert(Arc::clone(hash));
                }
            }
        }
    }

    fn remove(&mut self, hash: &str) {
        let Ok(i) = self.find(hash) else {
            return;
        };
        let list = std::mem::take(self);
        self.0 = match list.0 {
            RefList::One(_) => RefList::Many(Vec::new()),
            RefList::Many(mut many) => {
                many.remove(i);
                Refs::from_sorted(many).0
            }
        };
    }

    fn find(&self, hash: &str) -> Result<usize, usize> {
        self.as_slice().binary_search_by(|(h, _)| (**h).cmp(hash))
    }

    /// A list already sorted by hash, without duplicates.
    fn from_sorted(mut list: Vec<(Arc<str>, u32)>) -> Refs {
        if list.len() == 1
            && let Some(one) = list.pop()
        {
            return Refs(RefList::One([one]));
        }
        list.shrink_to_fit();
        Refs(RefList::Many(list))
    }
}

impl FromIterator<(String, u32)> for Refs {
    fn from_iter<I: IntoIterator<Item = (String, u32)>>(iter: I) -> Refs {
        let mut refs: Vec<(Arc<str>, u32)> = iter.into_iter().map(|(h, n)| (h.into(), n)).collect();
        refs.sort_unstable();
        refs.dedup_by(|a, b| a.0 == b.0);
        Refs::from_sorted(refs)
    }
}

impl serde::Serialize for Refs {
    /// As a JSON object from hash to count (what the store keeps).
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let list = self.as_slice();
        let mut map = s.serialize_map(Some(list.len()))?;
        for (h, n) in list {
            map.serialize_entry(&**h, n)?;
        }
        map.end()
    }
}

/// A row the group holds (or held).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowRecord {
    /// References per query hash; empty once no query holds the row (a tombstone kept so
    /// that clients at older cookies learn of the delete).
    pub refs: Refs,
    /// When it last changed.
    pub patch: CvrVersion,
}

/// A query of the group.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryRecord {
    /// The named query's name (none for an ad-hoc AST).
    pub name: Option<String>,
    /// The named query's arguments.
    pub args: Option<serde_json::Value>,
    /// The AST, for ad-hoc queries.
    pub ast: Option<serde_json::Value>,
    /// The group has all its rows.
    pub got: bool,
    /// No client desires it any more and its rows are gone.
    pub deleted: bool,
    /// When it last changed.
    pub patch: CvrVersion,
}

/// A client's desire for a query.
#[derive(Debug, Clone, PartialEq)]
pub struct DesireRecord {
    /// Time to live after the client stops desiring it, in milliseconds.
    pub ttl: Option<f64>,
    /// The client no longer desires it.
    pub deleted: bool,
    /// When the client stopped desiring it (milliseconds since the epoch); the query is
    /// kept for `ttl` after that.
    pub inactivated_at: Option<i64>,
    /// When it last changed.
    pub patch: CvrVersion,
}

/// What changed after a cookie: what a client at that cookie must be sent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    /// `(client, query hash, desired)`.
    pub desires: Vec<(String, String, bool)>,
    /// `(query hash, got)`.
    pub got: Vec<(String, bool)>,
    /// `(row, present)`: present rows are sent whole, absent ones as deletes. Read from
    /// the recent changes, a row that was not held at the cookie and is not held now (it
    /// came and went after it) is left out: the client never had it.
    pub rows: Vec<(RowId, bool)>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Dirty {
    pub(crate) queries: BTreeSet<String>,
    pub(crate) desires: BTreeSet<(String, String)>,
    /// Each changed row, with whether it was held when it first changed after the last
    /// write (as the store has it).
    pub(crate) rows: BTreeMap<RowId, bool>,
    pub(crate) clients: BTreeSet<String>,
}

/// One client group's record.
#[derive(Debug, Clone)]
pub struct Cvr {
    /// The client group.
    pub group: String,
    /// Its version: the cookie its clients converge to.
    pub version: CvrVersion,
    /// The version last written to the store (`None` before the first write).
    pub(crate) stored_version: Option<CvrVersion>,
    /// The `xmin` of the group's `instances` row as this instance last wrote or read it: a
    /// flush fails if the row is not that one any more (a write was lost).
    pub(crate) stored_xmin: Option<String>,
    /// The user the group is pinned to.
    pub user_id: Option<String>,
    /// Its clients.
    pub clients: BTreeSet<String>,
    /// Its queries, by hash.
    pub queries: BTreeMap<String, QueryRecord>,
    /// Desires, by (client, hash).
    pub desires: BTreeMap<(String, String), DesireRecord>,
    /// Rows. Change them only through the methods (they keep `recent` in step).
    pub rows: BTreeMap<RowId, RowRecord>,
    /// The rows that changed after `recent_from`, each with the version it changed at and
    /// whether it was held before (a row changed twice is listed twice; its record says
    /// which is current), so that the changes after a recent cookie are found without a
    /// scan of every row, and a row that came and went after the cookie is not sent at
    /// all. Older cookies, which only reconnecting clients bring, scan the rows.
    recent: Vec<(CvrVersion, RowId, bool)>,
    /// Every change after this version is in `recent`.
    recent_from: CvrVersion,
    /// Tombstones are dropped from memory once they are stored (the store keeps them for
    /// clients at older cookies): the highest version of a tombstone that may be only in
    /// the store.
    pub(crate) evicted_through: Option<CvrVersion>,
    pub(crate) dirty: Dirty,
    /// The query hashes the rows' references share.
    hashes: BTreeSet<Arc<str>>,
}

impl Cvr {
    /// An empty record for a new group.
    pub fn new(group: impl Into<String>) -> Cvr {
        Cvr {
            group: group.into(),
            version: CvrVersion::default(),
            stored_version: None,
            stored_xmin: None,
            user_id: None,
            clients: BTreeSet::new(),
            queries: BTreeMap::new(),
            desires: BTreeMap::new(),
            rows: BTreeMap::new(),
            recent: Vec::new(),
            recent_from: CvrVersion::default(),
            evicted_through: None,
            dirty: Dirty::default(),
            hashes: BTreeSet::new(),
        }
    }

    /// True when the changes after `since` may include tombstones that are only in the
    /// store (see [`CvrStore::changes_since`](crate::CvrStore::changes_since)).
    pub fn needs_stored_tombstones(&self, since: Option<CvrVersion>) -> bool {
        matches!((since, self.evicted_through), (Some(s), Some(e)) if s < e)
    }

    /// Drops from memory the tombstones among the rows just written (`written`: each with
    /// whether it was held at the write before). A stored one is then only in the store;
    /// one that was never stored (the row came and went between the two writes, so no
    /// client was sent it) is gone.
    pub(crate) fn evict_tombstones(&mut self, written: &BTreeMap<RowId, bool>) {
        for (id, &held_before) in written {
            if self.dirty.rows.contains_key(id) {
                continue;
            }
            if let Some(r) = self.rows.get(id)
                && r.refs.is_empty()
            {
                let patch = r.patch;
                self.rows.remove(id);
                if held_before {
                    self.evicted_through = self.evicted_through.max(Some(patch));
                }
            }
        }
    }

    /// True when nothing changed since the last write.
    pub fn is_clean(&self) -> bool {
        self.stored_version == Some(self.version)
            && self.dirty.queries.is_empty()
            && self.dirty.desires.is_empty()
            && self.dirty.rows.is_empty()
            && self.dirty.clients.is_empty()
    }

    /// True when queries, desires or rows changed since the last write (what clients are
    /// sent; a new client alone is not).
    pub fn has_patches(&self) -> bool {
        !(self.dirty.queries.is_empty()
            && self.dirty.desires.is_empty()
            && self.dirty.rows.is_empty())
    }

    /// Records a client of the group.
    pub fn add_client(&mut self, client: &str) {
        if self.clients.insert(client.to_owned()) {
            self.dirty.clients.insert(client.to_owned());
        }
    }

    /// A client desires a query (`at`: the version of this change).
    pub fn desire(&mut self, client: &str, hash: &str, ttl: Option<f64>, at: CvrVersion) {
        let key = (client.to_owned(), hash.to_owned());
        if self
            .desires
            .get(&key)
            .is_some_and(|d| !d.deleted && d.ttl == ttl)
        {
            return;
        }
        self.desires.insert(
            key.clone(),
            DesireRecord {
                ttl,
                deleted: false,
                inactivated_at: None,
                patch: at,
            },
        );
        self.dirty.desires.insert(key);
    }

    /// A client no longer desires a query (at `now_ms`).
    pub fn undesire(&mut self, client: &str, hash: &str, at: CvrVersion, now_ms: i64) {
        let key = (client.to_owned(), hash.to_owned());
        if let Some(d) = self.desires.get_mut(&key)
            && !d.deleted
        {
            d.deleted = true;
            d.inactivated_at = Some(now_ms);
            d.patch = at;
            self.dirty.desires.insert(key);
        }
    }

    /// When the query may be dropped: `None` while some client desires it, else the latest
    /// end of its desires' time to live (milliseconds since the epoch).
    pub fn expires_at(&self, hash: &str) -> Option<i64> {
        let mut latest: Option<i64> = None;
        for ((_, h), d) in &self.desires {
            if h != hash {
                continue;
            }
            if !d.deleted {
                return None;
            }
            let end = d.inactivated_at.unwrap_or(0) + d.ttl.map_or(0, |t| t.max(0.0) as i64);
            latest = Some(latest.map_or(end, |l| l.max(end)));
        }
        Some(latest.unwrap_or(0))
    }

    /// True when some client still desires the query.
    pub fn is_desired(&self, hash: &str) -> bool {
        self.desires
            .iter()
            .any(|((_, h), d)| h == hash && !d.deleted)
    }

    /// Adds or replaces a query.
    pub fn put_query(&mut self, hash: &str, record: QueryRecord) {
        self.queries.insert(hash.to_owned(), record);
        self.dirty.queries.insert(hash.to_owned());
    }

    /// Marks a query as complete (`got`) or not.
    pub fn set_got(&mut self, hash: &str, got: bool, at: CvrVersion) {
        if let Some(q) = self.queries.get_mut(hash)
            && q.got != got
        {
            q.got = got;
            q.patch = at;
            self.dirty.queries.insert(hash.to_owned());
        }
    }

    /// Marks a query deleted (its rows must have been released).
    pub fn delete_query(&mut self, hash: &str, at: CvrVersion) {
        if let Some(q) = self.queries.get_mut(hash)
            && !q.deleted
        {
            q.deleted = true;
            q.got = false;
            q.patch = at;
            self.dirty.queries.insert(hash.to_owned());
        }
    }

    /// Changes a row's reference count for a query by `delta`; returns whether the row is
    /// held by any query afterwards.
    pub fn adjust_row(&mut self, id: &RowId, hash: &str, delta: i64, at: CvrVersion) -> bool {
        let record = self.rows.entry(id.clone()).or_insert_with(|| RowRecord {
            refs: Refs::default(),
            patch: at,
        });
        let held = !record.refs.is_empty();
        if record.patch != at || !self.dirty.rows.contains_key(id) {
            self.recent.push((at, id.clone(), held));
        }
        let count = i64::from(record.refs.get(hash).copied().unwrap_or(0)) + delta;
        if count <= 0 {
            record.refs.remove(hash);
        } else {
            let hashes = &mut self.hashes;
            let shared = || match hashes.get(hash) {
                Some(h) => Arc::clone(h),
                None => {
                    let h: Arc<str> = Arc::from(hash);
                    hashes.insert(Arc::clone(&h));
                    h
                }
            };
            record
                .refs
                .set(hash, u32::try_from(count).unwrap_or(u32::MAX), shared);
        }
        record.patch = at;
        self.dirty.rows.entry(id.clone()).or_insert(held);
        !record.refs.is_empty()
    }

    /// Notes that a held row's contents changed.
    pub fn touch_row(&mut self, id: &RowId, at: CvrVersion) {
        if let Some(r) = self.rows.get_mut(id) {
            let held = !r.refs.is_empty();
            if r.patch != at || !self.dirty.rows.contains_key(id) {
                self.recent.push((at, id.clone(), held));
            }
            r.patch = at;
            self.dirty.rows.entry(id.clone()).or_insert(held);
        }
    }

    /// Adds a row as the store has it (loading).
    pub(crate) fn load_row(&mut self, id: RowId, mut record: RowRecord) {
        record.refs.share(&mut self.hashes);
        // Loaded rows are not in `recent`: cookies before the newest of them scan.
        self.recent_from = self.recent_from.max(record.patch);
        self.rows.insert(id, record);
    }

    /// Forgets which rows changed at or before `through` (no connected client is behind
    /// it): a cookie that old then scans every row. Keeps the memory of a group whose
    /// clients keep up to the changes of the last few versions.
    pub fn forget_changes_through(&mut self, through: CvrVersion) {
        if through <= self.recent_from {
            return;
        }
        self.recent_from = through;
        self.recent.retain(|(v, _, _)| *v > through);
        // A hydration's thousands of entries should not stay reserved.
        if self.recent.capacity() > 64 && self.recent.len() < self.recent.capacity() / 4 {
            self.recent.shrink_to(self.recent.len() * 2);
        }
    }

    /// True when some query holds the row.
    pub fn holds(&self, id: &RowId) -> bool {
        self.rows.get(id).is_some_and(|r| !r.refs.is_empty())
    }

    /// Everything that changed after `since` (everything for a new client: `None`).
    pub fn changes_since(&self, since: Option<CvrVersion>) -> Changes {
        let after = |v: &CvrVersion| since.is_none_or(|s| *v > s);
        let mut out = Changes::default();
        for ((client, hash), d) in &self.desires {
            // A new client only needs live desires.
            if after(&d.patch) && (since.is_some() || !d.deleted) {
                out.desires.push((client.clone(), hash.clone(), !d.deleted));
            }
        }
        for (hash, q) in &self.queries {
            if after(&q.patch) && (since.is_some() || q.got) {
                out.got.push((hash.clone(), q.got));
            }
        }
        match since {
            // A new client: every held row.
            None => {
                for (id, r) in &self.rows {
                    if !r.refs.is_empty() {
                        out.rows.push((id.clone(), true));
                    }
                }
            }
            // A recent cookie: the rows listed after it, in row order, but for those the
            // client cannot have. Whether a row was held at the cookie is what its first
            // change after it found: a group that falls behind its writes (or a client
            // that reconnects a little later) would otherwise be sent a delete for every
            // row that entered a query's window and left it again meanwhile (at 2,400
            // writes/s, pokes of 45k rows, nearly all of them such deletes).
            Some(s) if s >= self.recent_from => {
                let mut held_at_cookie: Vec<(&RowId, bool)> = self
                    .recent
                    .iter()
                    .filter(|(v, _, _)| *v > s)
                    .map(|(_, id, held)| (id, *held))
                    .collect();
                // Stable: the first change of each row after the cookie stays first.
                held_at_cookie.sort_by(|a, b| a.0.cmp(b.0));
                held_at_cookie.dedup_by(|later, first| later.0 == first.0);
                for (id, held_before) in held_at_cookie {
                    if let Some(r) = self.rows.get(id)
                        && r.patch > s
                    {
                        let held = !r.refs.is_empty();
                        if held || held_before {
                            out.rows.push((id.clone(), held));
                        }
                    }
                }
            }
            // An older one: every row.
            Some(s) => {
                for (id, r) in &self.rows {
                    if r.patch > s {
                        out.rows.push((id.clone(), !r.refs.is_empty()));
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use zc_types::Lsn;

    use super::*;

    /// A row's references count per query, drop a query at zero, serialize as the store's
    /// JSON object, and share one string per hash across the group's rows.
    #[test]
    fn refs_count_per_query_and_share_hashes() {
        let mut cvr = Cvr::new("g");
        let at = CvrVersion::default();
        let (a, b) = (RowId::new("t", "{\"id\":1}"), RowId::new("t", "{\"id\":2}"));
        assert!(cvr.adjust_row(&a, "q2", 1, at));
        assert!(cvr.adjust_row(&a, "q1", 2, at));
        assert!(cvr.adjust_row(&b, "q1", 1, at));
        let refs = &cvr.rows[&a].refs;
        assert_eq!(refs.iter().collect::<Vec<_>>(), vec![("q1", 2), ("q2", 1)]);
        assert_eq!(serde_json::to_string(refs).unwrap(), r#"{"q1":2,"q2":1}"#);
        let shared = |id: &RowId| Arc::as_ptr(&cvr.rows[id].refs.as_slice()[0].0);
        assert_eq!(shared(&a), shared(&b), "one string for q1");
        assert!(cvr.adjust_row(&a, "q1", -2, at), "q2 still holds it");
        assert_eq!(cvr.rows[&a].refs.get("q1"), None);
        assert!(!cvr.adjust_row(&a, "q2", -1, at), "a tombstone now");
        assert!(cvr.rows[&a].refs.is_empty());
        let loaded: Refs = [("b".to_owned(), 1), ("a".to_owned(), 3)]
            .into_iter()
            .collect();
        assert_eq!(loaded.iter().collect::<Vec<_>>(), vec![("a", 3), ("b", 1)]);
        // Rows loaded from the store share the group's strings too.
        let record = |n| RowRecord {
            refs: [("q1".to_owned(), n)].into_iter().collect(),
            patch: at,
        };
        let c = RowId::new("t", "{\"id\":3}");
        cvr.load_row(c.clone(), record(4));
        let q1 = |id: &RowId| Arc::as_ptr(&cvr.rows[id].refs.as_slice()[0].0);
        assert_eq!(q1(&b), q1(&c), "a loaded row shares q1");
        assert_eq!(cvr.rows[&c].refs.get("q1"), Some(&4));
    }

    /// Setting and removing counts in any order keeps the list sorted and equal to a map
    /// of the same counts, with a single entry inline.
    #[test]
    fn refs_follow_a_map_of_counts() {
        for seed in 0..50u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut refs = Refs::default();
            let mut model: BTreeMap<String, u32> = BTreeMap::new();
            for _ in 0..40 {
                let hash = format!("q{}", rng.random_range(0..4));
                if rng.random_bool(0.4) {
                    refs.remove(&hash);
                    model.remove(&hash);
                } else {
                    let n = rng.random_range(1..10);
                    refs.set(&hash, n, || Arc::from(hash.as_str()));
                    model.insert(hash.clone(), n);
                }
                let expected: Vec<(&str, u32)> =
                    model.iter().map(|(h, n)| (h.as_str(), *n)).collect();
                assert_eq!(refs.iter().collect::<Vec<_>>(), expected, "seed {seed}");
                let collected: Refs = model.iter().map(|(h, n)| (h.clone(), *n)).collect();
                assert_eq!(refs, collected, "seed {seed}");
                assert_eq!(
                    matches!(refs.0, RefList::One(_)),
                    model.len() == 1,
                    "seed {seed}"
                );
                for h in ["q0", "q1", "q2", "q3"] {
                    assert_eq!(refs.get(h), model.get(h), "seed {seed}");
                }
            }
        }
    }

    /// `changes_since` through the list of recent changes is exactly what a client at the
    /// cookie needs (the rows held at the cookie are modelled per version), and for older
    /// cookies a scan of every row, whatever the group forgot.
    #[test]
    fn changes_since_is_what_a_client_at_the_cookie_needs() {
        for seed in 0..50u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut cvr = Cvr::new("g");
            let mut at = CvrVersion::default();
            let mut seen = vec![at];
            // The rows held at each version (as a client at that cookie has them).
            let held = |cvr: &Cvr| -> BTreeSet<RowId> {
                cvr.rows
                    .iter()
                    .filter(|(_, r)| !r.refs.is_empty())
                    .map(|(id, _)| id.clone())
                    .collect()
            };
            let mut held_at: BTreeMap<CvrVersion, BTreeSet<RowId>> = BTreeMap::new();
            for _ in 0..rng.random_range(1..200) {
                held_at.insert(at, held(&cvr));
                at = if rng.random_bool(0.5) {
                    at.next_config()
                } else {
                    at.advance_to(Lsn(at.state.as_u64() + 1))
                };
                seen.push(at);
                for _ in 0..rng.random_range(1..4) {
                    let id = RowId {
                        table: "t".into(),
                        key: format!("{}", rng.random_range(0..30)).into(),
                    };
                    let hash = ["a", "b"][rng.random_range(0..2)];
                    match rng.random_range(0..3) {
                        0 => {
                            cvr.adjust_row(&id, hash, 1, at);
                        }
                        1 => {
                            if cvr.rows.get(&id).is_some_and(|r| r.refs.contains_key(hash)) {
                                cvr.adjust_row(&id, hash, -1, at);
                            }
                        }
                        _ => cvr.touch_row(&id, at),
                    }
                }
                // Groups forget what their clients are past; a flush clears `dirty`.
                if rng.random_bool(0.1) {
                    cvr.dirty.rows.clear();
                }
                if rng.random_bool(0.05) {
                    let through = seen[rng.random_range(0..seen.len())];
                    cvr.forget_changes_through(through);
                }
            }
            held_at.insert(at, held(&cvr));
            for since in seen {
                let scan: Vec<(RowId, bool)> = cvr
                    .rows
                    .iter()
                    .filter(|(_, r)| r.patch > since)
                    .map(|(id, r)| (id.clone(), !r.refs.is_empty()))
                    .collect();
                // What a client at `since` needs: every row held now that changed, and a
                // delete of every row it has that is not held now. The scan of older
                // cookies also deletes rows it never had; the recent changes do not.
                let had = &held_at[&since];
                let needed: Vec<(RowId, bool)> = scan
                    .iter()
                    .filter(|(id, present)| *present || had.contains(id))
                    .cloned()
                    .collect();
                let got = cvr.changes_since(Some(since)).rows;
                let want = if since >= cvr.recent_from {
                    &needed
                } else {
                    &scan
                };
                assert_eq!(&got, want, "seed {seed}, since {since:?}");
            }
            let all: Vec<(RowId, bool)> = cvr
                .rows
                .iter()
                .filter(|(_, r)| !r.refs.is_empty())
                .map(|(id, _)| (id.clone(), true))
                .collect();
            assert_eq!(cvr.changes_since(None).rows, all);
        }
    }
}
